"""A bake killed with SIGKILL leaves resources only the janitor can find: by the local ledger
(at once, by id) and by their tags (from any machine, once they expire or by CI run id)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from bakery.cloud.ec2 import EC2
from bakery.errors import ConfigError
from bakery.housekeeping.janitor import janitor, parse_duration
from tests.support import ROOT, leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e


def killed_bake(moto, tmp_path, builder_host, run_id: str | None) -> None:
    proc = bake_in_background(moto, tmp_path, builder_host, run_id)
    proc.send_signal(signal.SIGKILL)  # no clean-up code runs
    proc.wait()


def bake_in_background(moto, tmp_path, builder_host, run_id: str | None) -> subprocess.Popen:
    """`invoke bake` whose only step runs for a minute; returns once the step has started."""
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - name: long\n    shell: echo started; sleep 60\n"))
    env = {**os.environ, "INVOKE_BAKERY_ENDPOINT_URL": moto.url, "INVOKE_BAKERY_RECIPES_DIR": str(recipes),
           "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state"), "INVOKE_BAKERY_CLOUD": "aws"}
    if run_id:
        env["BAKERY_RUN_ID"] = run_id
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "bake", "--recipe", "web"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.monotonic() + 60
    while "long | started" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "long | started" in seen
    return proc


def test_sigkill_mid_step_then_janitor_leaves_the_endpoint_clean(moto, tmp_path, builder_host, settings_for):
    killed_bake(moto, tmp_path, builder_host, run_id="4242")
    ec2 = moto.client()
    left = leftovers(ec2)
    assert set(left) == {"instances", "security_groups", "key_pairs"}
    facade = EC2(settings_for(tmp_path / "recipes"))
    assert janitor(facade, older_than=None, run_id=None, dry_run=False).builds == {}  # not expired: live
    assert janitor(facade, older_than=None, run_id="other", dry_run=False).builds == {}
    dry = janitor(facade, older_than=None, run_id="4242", dry_run=True)
    assert len(next(iter(dry.builds.values()))) == 3 and leftovers(ec2) == left
    report = janitor(facade, older_than=None, run_id="4242", dry_run=False)
    assert len(report.builds) == 1 and leftovers(ec2) == {}


def test_janitor_by_age_spares_younger_builds(moto, tmp_path, builder_host, settings_for):
    killed_bake(moto, tmp_path, builder_host, run_id=None)
    facade = EC2(settings_for(tmp_path / "recipes"))
    assert janitor(facade, older_than=timedelta(hours=1), run_id=None, dry_run=False).builds == {}
    report = janitor(facade, older_than=timedelta(seconds=0), run_id=None, dry_run=False)
    assert len(report.builds) == 1 and leftovers(moto.client()) == {}


def test_durations_are_checked():
    assert parse_duration("90m") == timedelta(minutes=90) and parse_duration("2d") == timedelta(days=2)
    with pytest.raises(ConfigError, match="expected a number and a unit"):
        parse_duration("soon")


def test_sigkill_then_plain_janitor_cleans_at_once_by_the_ledger_and_never_touches_a_live_run(
        moto, tmp_path, builder_host):
    env = {**os.environ, "INVOKE_BAKERY_ENDPOINT_URL": moto.url, "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state"),
           "INVOKE_BAKERY_RECIPES_DIR": str(tmp_path / "recipes"), "INVOKE_BAKERY_CLOUD": "aws"}

    def invoke_janitor(*flags):
        return subprocess.run([sys.executable, "-m", "invoke", "janitor", *flags], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    proc = bake_in_background(moto, tmp_path, builder_host, run_id=None)
    try:
        alive = leftovers(moto.client())
        # even told that everything older than 0s is dead, the janitor spares the run that holds its ledger
        out = invoke_janitor("--older-than", "0s")
        assert out.returncode == 0, out.stderr
        assert "0 dead run(s), 1 live run(s) left alone" in out.stdout
        assert leftovers(moto.client()) == alive
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [journal] = (tmp_path / "state" / "ledger").glob("b-*.jsonl")
    assert [p.name for p in (tmp_path / "state" / "keys").iterdir()] == [journal.stem]

    out = invoke_janitor()  # no --older-than: the ledger knows the run is dead, its tags have not expired
    assert out.returncode == 0, out.stderr
    assert f"{journal.stem}: removed instance i-" in out.stdout and "1 dead run(s)" in out.stdout
    assert leftovers(moto.client()) == {}
    assert not journal.exists() and list((tmp_path / "state" / "keys").iterdir()) == []
