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


# ---- a CI run killed while it publishes (issue 18 item 3) --------------------------------------

KILL_MID_PUBLISH = """
import os, sys
from pathlib import Path
from bakery.bake.run import bake
from bakery.config.settings import Settings
from bakery.progress import Reporter
import bakery.cloud.ec2 as ec2
real = ec2.EC2.__init__
def hooked(self, *a, **kw):  # dies once the template version exists: copies, SSM values, builder all out
    real(self, *a, **kw)
    self.client.meta.events.register("after-call.ec2.CreateLaunchTemplateVersion", lambda **_: os._exit(9))
ec2.EC2.__init__ = hooked
d = sys.argv[1:]
bake(Settings(cloud="aws", region="us-east-1", endpoint_url=d[0], recipes_dir=Path(d[1]), state_dir=Path(d[2])),
     "web", {}, report=Reporter(quiet=True))
"""
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")


@pytest.fixture
def endpoint(tmp_path):
    """A moto server answering DeleteLaunchTemplateVersions as EC2 does (moto has none: the local
    cloud's endpoint's answer, bakery/local/moto_extensions.py), with a source image and a builder."""
    from tests.support import FakeBuilderHost, MotoServer, stop_process

    server = MotoServer(api_answers=True)
    ec2 = server.client()
    seed = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.create_image(InstanceId=seed, Name="test-debian-12-amd64-20260101")
    ec2.terminate_instances(InstanceIds=[seed])
    host = FakeBuilderHost(server, tmp_path / "builder")
    try:
        yield server, host
    finally:
        host.close()
        stop_process(server.proc)


def test_a_run_killed_while_publishing_to_two_regions_is_swept_by_its_run_id_from_a_fresh_machine(endpoint, tmp_path):
    """`invoke janitor --run-id` on another machine (no ledger): the copies are found by the run's
    tag in their regions, the SSM values by the run's mark on their versions (the one it
    overwrote put back, those it made deleted), the launch template version it added to someone's
    template by its mark too; the builder by its tag."""
    server, host = endpoint
    recipes = tmp_path / "recipes"
    publish = ("publish:\n  regions: [us-west-2, eu-west-1]\n  ssm_parameter: /bakery/images/web\n"
               "  launch_template: {name: web-lt}\n")
    write_recipe(recipes, "web", recipe_text(host.port, "  - {name: hi, shell: echo hi}\n", publish))
    ec2 = server.client()
    before = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]  # someone's earlier image
    server.client("ssm").put_parameter(Name="/bakery/images/web", Value=before, Type="String",
                                       DataType="aws:ec2:image")
    ec2.create_launch_template(LaunchTemplateName="web-lt", LaunchTemplateData={"ImageId": before},
                               TagSpecifications=[{"ResourceType": "launch-template",
                                                   "Tags": [{"Key": "bakery:recipe", "Value": "web"}]}])
    died = subprocess.run([sys.executable, "-c", KILL_MID_PUBLISH, server.url, str(recipes), str(tmp_path / "state")],
                          cwd=ROOT, env={**os.environ, "BAKERY_RUN_ID": "9001"}, capture_output=True, text=True,
                          timeout=300)
    assert died.returncode == 9, died.stderr[-3000:]

    def left() -> dict[str, list[str]]:
        out = {}
        for region in REGIONS:
            c, ssm = server.client("ec2", region), server.client("ssm", region)
            images = [i["ImageId"] for i in c.describe_images(Owners=["self"], Filters=[
                {"Name": "tag:bakery:run-id", "Values": ["9001"]}])["Images"]]
            running = [i["InstanceId"] for r in c.describe_instances(Filters=[
                {"Name": "tag:bakery:run-id", "Values": ["9001"]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])[
                "Reservations"] for i in r["Instances"]]
            values = [f"{p['Name']}={ssm.get_parameter(Name=p['Name'])['Parameter']['Value']}"
                      for p in ssm.describe_parameters()["Parameters"]]
            versions = [f"{t['LaunchTemplateName']}:{v['VersionNumber']}"
                        for t in c.describe_launch_templates()["LaunchTemplates"]
                        for v in c.describe_launch_template_versions(LaunchTemplateId=t["LaunchTemplateId"])[
                            "LaunchTemplateVersions"]]
            out[region] = sorted(images + running + values + versions)
        return out
    found = left()
    assert "web-lt:2" in found["us-east-1"] and all(len(things) >= 2 for things in found.values()), found

    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "aws", "INVOKE_BAKERY_ENDPOINT_URL": server.url,
           "INVOKE_BAKERY_RECIPES_DIR": str(recipes), "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "elsewhere")}
    swept = subprocess.run([sys.executable, "-m", "invoke", "janitor", "--run-id", "9001"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert swept.returncode == 0, swept.stderr[-3000:]
    out = swept.stdout + swept.stderr
    assert f"ssm-parameter /bakery/images/web in us-east-1 (put back to {before})" in out, out
    assert "launch-template-version web-lt:2 in us-east-1" in out, out
    assert left() == {"us-east-1": [f"/bakery/images/web={before}", "web-lt:1"], "us-west-2": [], "eu-west-1": []}
    again = subprocess.run([sys.executable, "-m", "invoke", "janitor", "--run-id", "9001"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "ssm-parameter" not in again.stdout + again.stderr  # nothing left to find
