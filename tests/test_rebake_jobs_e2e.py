"""`rebake --jobs N` (issue 17 item 4) against a moto server, each recipe with a real sshd as its
builder: independent recipes bake at once, a layered one after its parent; throttling slows every
bake through one limiter per region and none gives up; Ctrl-C stops them all, each cleaning up."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from bakery.bake.rebake import rebake
from bakery.cloud.connect import open_cloud
from bakery.progress import Reporter
from tests.faults import Fault
from tests.matrix import CliRun, cli_environment
from tests.support import layer_recipe_text, leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

# each step notes when it ran, on its own builder's disk
TIMED = "  - {name: slow, shell: 'date +%s.%N >> /srv/t; sleep {secs}; date +%s.%N >> /srv/t'}\n"
# ... and waits inside it until the test lets it go (at most 60 s): only bakes that run at once are
# all inside their steps together, however slowly a loaded machine brings each to its step
GATED = ("  - {name: slow, shell: 'date +%s.%N >> /srv/t; for i in $(seq 1200); do [ -e /srv/go ] && break; "
         "sleep 0.05; done; date +%s.%N >> /srv/t'}\n")


@pytest.fixture
def world(moto, tmp_path, make_builder_host):
    """Recipes a, b, c and d (layered on a), each served by a builder host of its own."""
    recipes = tmp_path / "recipes"
    hosts = {name: make_builder_host(recipe=name) for name in "abcd"}
    for name in "abc":
        write_recipe(recipes, name, recipe_text(hosts[name].port, TIMED.replace("{secs}", "2")))
    write_recipe(recipes, "d", layer_recipe_text(hosts["d"].port, TIMED.replace("{secs}", "0"), "a"))
    return recipes, hosts


def ran(host) -> tuple[float, float]:
    start, end = (float(x) for x in (host.fs / "srv/t").read_text().split()[:2])
    return start, end


def test_independent_recipes_bake_at_once_and_a_layer_after_its_parent(moto, world, settings_for):
    recipes, hosts = world
    for name in "abc":
        write_recipe(recipes, name, recipe_text(hosts[name].port, GATED))

    def let_go() -> None:  # once a, b and c are all inside their steps
        deadline = time.monotonic() + 120
        while not all((hosts[n].fs / "srv/t").exists() for n in "abc") and time.monotonic() < deadline:
            time.sleep(0.05)
        for n in "abc":
            (hosts[n].fs / "srv/go").touch()

    gate = threading.Thread(target=let_go, daemon=True)
    gate.start()
    rows = rebake(settings_for(recipes), None, report=Reporter(quiet=True), jobs=3)
    gate.join()
    assert [(r.recipe, r.decision) for r in rows] == [(n, "rebaked") for n in "abcd"]
    spans = {name: ran(host) for name, host in hosts.items()}
    assert max(spans[n][0] for n in "abc") < min(spans[n][1] for n in "abc")  # a, b and c's steps overlapped
    assert spans["d"][0] > spans["a"][1]  # d on a's new image: after a
    assert leftovers(moto.client()) == {}


def test_throttling_slows_every_bake_and_none_gives_up(moto, world, settings_for, monkeypatch):
    recipes, _ = world
    settings = settings_for(recipes)
    cloud = open_cloud(settings)
    monkeypatch.setattr("bakery.cloud.connect.open_cloud", lambda s: cloud)
    for operation in ("RunInstances", "DescribeInstances", "CreateImage", "DescribeImages"):
        Fault(cloud.ec2.client, operation, "RequestLimitExceeded", status=503, times=4, message="Request limit exceeded")
    rows = rebake(settings, None, report=Reporter(quiet=True), jobs=3)
    assert [(r.recipe, r.decision) for r in rows] == [(n, "rebaked") for n in "abcd"]
    assert cloud.ec2.throttle.throttled_calls >= 16  # every throttled call went through the region's limiter
    assert leftovers(moto.client()) == {}


def test_ctrl_c_stops_every_bake_and_each_cleans_up(moto, world, tmp_path):
    recipes, hosts = world
    for name in "abc":
        write_recipe(recipes, name, recipe_text(hosts[name].port, TIMED.replace("{secs}", "30")))
    run = CliRun(["rebake", "--jobs", "3"], cli_environment(moto.url, tmp_path))
    deadline = time.monotonic() + 60
    while not all((hosts[n].fs / "srv/t").exists() for n in "abc"):  # all three inside their step
        assert time.monotonic() < deadline and run.proc.poll() is None, "".join(run.lines)
        time.sleep(0.05)
    run.proc.send_signal(signal.SIGINT)
    code, _, err = run.finish(timeout=90)
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGINT"), err
    assert "Traceback" not in err
    assert leftovers(moto.client()) == {}
    assert not (hosts["d"].fs / "srv/t").exists()  # d was never started
