"""`invoke rollout` against a moto server (issue 17 item 7): running tiers moved to their newest
images a slot at a time, and back when a step of the move fails. Health checks need real
machines: the local cloud's tests check them (tests/local/test_rollout_local.py); here a start
that fails is an injected RunInstances error."""

from __future__ import annotations

import io

import pytest

from bakery.bake.run import bake
from bakery.launch.rollout import RolledBack, rollout
from bakery.launch.run import launch
from bakery.launch.status import fleet_status
from bakery.network import open_env
from bakery.progress import Reporter
from tests.faults import Fault
from tests.support import recipe_text, write_recipe
from tests.test_launch_e2e import instances, world  # noqa: F401 - the launch tests' world: two baked tiers

pytestmark = pytest.mark.e2e


def rebake_web(world, builder_host, text: str = "echo web-again") -> str:
    recipes = world["settings"].recipes
    write_recipe(recipes, "web", recipe_text(builder_host.port, f"  - {{name: hi, shell: {text}}}\n"))
    return bake(world["settings"], "web", {}, report=Reporter(quiet=True)).ami_id


def slots(ec2, env: str, tier: str) -> dict[str, tuple[str, str]]:
    """slot -> (instance, image) of the tier's live instances."""
    out = {}
    for inst in instances(ec2, env):
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        if tags["bakery:tier"] == tier:
            out[tags["bakery:slot"]] = (inst["InstanceId"], inst["ImageId"])
    return out


def test_a_surge_rollout_moves_each_slot_to_the_new_image_new_one_first(world, builder_host):
    ec2 = world["ec2"]
    launch(world["settings"], "prod", report=Reporter(quiet=True))
    before = slots(ec2, "prod", "web")
    app_before = slots(ec2, "prod", "app")
    new_image = rebake_web(world, builder_host)
    cloud, env = open_env(world["settings"], "prod")
    assert {r["instance"] for r in fleet_status(cloud.ec2, env)["instances"] if r["outdated"]} == \
        {iid for iid, _ in before.values()}

    out = io.StringIO()
    report = rollout(world["settings"], "prod", report=Reporter(stream=out))
    after = slots(ec2, "prod", "web")
    assert sorted(after) == ["0", "1"] and {image for _, image in after.values()} == {new_image}
    assert not {iid for iid, _ in after.values()} & {iid for iid, _ in before.values()}
    assert slots(ec2, "prod", "app") == app_before  # its image did not change: left alone
    [web, app] = report.tiers
    assert (web.tier, web.how, web.status, app.status) == ("web", "surge", "rolled", "current")
    assert [(m.slot, m.old, m.new) for m in web.moves] == [(s, before[s][0], after[s][0]) for s in ("0", "1")]
    # each slot: the new instance started before the old one went
    log = out.getvalue().splitlines()
    for slot in ("0", "1"):
        started = next(n for n, line in enumerate(log) if f"launch web slot {slot}" in line)
        gone = next(n for n, line in enumerate(log) if f"terminate {before[slot][0]}" in line)
        assert started < gone
    assert not any(r["outdated"] for r in fleet_status(cloud.ec2, env)["instances"])


def test_a_failed_start_rolls_the_tier_back_to_the_image_it_ran(world, builder_host):
    ec2 = world["ec2"]
    launch(world["settings"], "prod", report=Reporter(quiet=True))
    before = slots(ec2, "prod", "web")
    old_image = before["0"][1]
    rebake_web(world, builder_host)
    cloud, _ = open_env(world["settings"], "prod")
    # slot 0 moves; slot 1's new instance cannot start: slot 0 goes back to the old image
    Fault(cloud.ec2.client, "RunInstances", "UnauthorizedOperation", status=403, times=1, after=1)
    with pytest.raises(RolledBack, match=r"rollout of prod tier web to ami-\w+: .*not authorised.*rolled back"):
        rollout(world["settings"], "prod", tier="web", report=Reporter(quiet=True), cloud=cloud)
    after = slots(ec2, "prod", "web")
    assert sorted(after) == ["0", "1"] and {image for _, image in after.values()} == {old_image}
    assert after["1"] == before["1"]  # never touched
    assert after["0"] != before["0"]  # a new instance of the old image holds slot 0 again
    assert len(instances(ec2, "prod")) == 3  # web 2 + app 1: the new image's instance is gone


def test_a_tier_on_its_newest_image_is_left_alone(world):
    launch(world["settings"], "prod", report=Reporter(quiet=True))
    before = slots(world["ec2"], "prod", "web")
    report = rollout(world["settings"], "prod", report=Reporter(quiet=True))
    assert [t.status for t in report.tiers] == ["current", "current"]
    assert slots(world["ec2"], "prod", "web") == before
