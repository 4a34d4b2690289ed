"""`invoke rollout` against a moto server (issue 17 item 7): running tiers moved to their newest
images a slot at a time, and back when a step of the move fails. Health checks need real
machines: the local cloud's tests check them (tests/local/test_rollout_local.py); here a start
that fails is an injected RunInstances error."""

from __future__ import annotations

import io

import pytest

from bakery.bake.run import bake
from bakery.launch.rollout import RolledBack, RolloutFailed, rollout
from bakery.launch.run import launch
from bakery.launch.status import fleet_status
from bakery.network import open_env
from bakery.progress import Reporter
from tests.faults import Fault
from tests.support import recipe_text, write_recipe
from tests.test_launch_e2e import instances, world  # noqa: F401 - the launch tests' world: two baked tiers
from tests.test_network_e2e import net  # noqa: F401 - the network tests' world: ENIs, a standby, a fixed address

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


def live(c, tier: str) -> dict[str, dict]:
    """slot -> the tier's pending or running instance record."""
    found = [i for r in c.describe_instances(Filters=[{"Name": "tag:bakery:tier", "Values": [tier]}])["Reservations"]
             for i in r["Instances"] if i["State"]["Name"] in ("pending", "running")]
    return {{t["Key"]: t["Value"] for t in i["Tags"]}["bakery:slot"]: i for i in found}


def test_a_surge_rollout_moves_each_slot_to_the_new_image_new_one_first(world, builder_host):
    ec2 = world["ec2"]
    launch(world["settings"], "prod", report=Reporter(quiet=True))
    before = slots(ec2, "prod", "web")
    app_before = slots(ec2, "prod", "app")
    new_image = rebake_web(world, builder_host)
    cloud, env = open_env(world["settings"], "prod")
    assert {r["instance"] for r in fleet_status(cloud.ec2, env)["instances"] if r["outdated"]} == \
        {iid for iid, _ in before.values()}

    dry = rollout(world["settings"], "prod", dry_run=True, report=Reporter(quiet=True))
    assert [(t.tier, t.status, t.how) for t in dry.tiers] == [("web", "planned", "surge"), ("app", "current", "surge")]
    assert dry.tiers[0].stale == [f"{s} {before[s][0]} ({before[s][1]})" for s in ("0", "1")]
    assert slots(ec2, "prod", "web") == before  # nothing moved
    from bakery.cli.launch import rollout_summary
    assert f"web: would move to {new_image} (surge): 0 {before['0'][0]}" in rollout_summary(dry)

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


def test_persistent_interfaces_roll_through_the_standby_and_a_fixed_address_rolls_in_place(net, builder_host):
    settings, c = net["settings"], net["c"]
    launch(settings, "prod", report=Reporter(quiet=True))

    def tier(name: str) -> dict[str, dict]:
        return live(c, name)

    old_app, old_fw = tier("app"), tier("fw")
    write_recipe(settings.recipes, "app", recipe_text(builder_host.port, "  - {name: hi, shell: echo app-2}\n"))
    new_image = bake(settings, "app", {}, report=Reporter(quiet=True)).ami_id
    out = io.StringIO()
    report = rollout(settings, "prod", report=Reporter(stream=out))
    by_tier = {t.tier: t for t in report.tiers}
    app, fw = by_tier["app"], by_tier["fw"]
    assert (app.how, app.status, [m.slot for m in app.moves]) == ("standby", "rolled", ["standby-0", "0", "standby-0"])
    assert (fw.how, fw.status, [m.slot for m in fw.moves]) == ("in place", "rolled", ["0"])
    now_app, now_fw = tier("app"), tier("fw")
    assert {s: i["ImageId"] for s, i in now_app.items()} == {"0": new_image, "standby-0": new_image}
    assert not {i["InstanceId"] for i in now_app.values()} & {i["InstanceId"] for i in old_app.values()}
    # the persistent interfaces (their addresses and Elastic IP) are on the new active instance
    enis = c.describe_network_interfaces(Filters=[{"Name": "addresses.private-ip-address",
                                                   "Values": ["10.30.1.20", "10.30.2.20"]}])["NetworkInterfaces"]
    holders = {e["PrivateIpAddress"]: e["Attachment"]["InstanceId"] for e in enis}
    assert holders == {"10.30.1.20": now_app["0"]["InstanceId"], "10.30.2.20": now_app["0"]["InstanceId"]}
    [eip] = c.describe_addresses()["Addresses"]  # (moto names neither the address asked for nor the instance)
    front = next(e["NetworkInterfaceId"] for e in enis if e["PrivateIpAddress"] == "10.30.1.20")
    assert eip["NetworkInterfaceId"] == front  # on the ENI the new active instance holds
    # the fixed address moved in place: the old instance went before the new one was started
    assert now_fw["0"]["ImageId"] == new_image and now_fw["0"]["InstanceId"] != old_fw["0"]["InstanceId"]
    assert "10.30.2.30" in {a["PrivateIpAddress"] for n in now_fw["0"]["NetworkInterfaces"]
                            for a in n["PrivateIpAddresses"]}
    log = out.getvalue().splitlines()
    gone = next(n for n, line in enumerate(log) if f"terminate {old_fw['0']['InstanceId']}" in line)
    started = next(n for n, line in enumerate(log) if "launch fw slot 0" in line)
    assert gone < started


def test_a_standby_rollout_that_fails_after_its_failover_fails_back_and_leaves_the_tier_on_its_old_image(
        net, builder_host):
    settings, c = net["settings"], net["c"]
    launch(settings, "prod", tier="app", report=Reporter(quiet=True))

    def app() -> dict[str, dict]:
        return live(c, "app")

    before = app()
    old_image = before["0"]["ImageId"]
    write_recipe(settings.recipes, "app", recipe_text(builder_host.port, "  - {name: hi, shell: echo app-2}\n"))
    bake(settings, "app", {}, report=Reporter(quiet=True))
    from bakery.network import open_env

    cloud, _ = open_env(settings, "prod")
    # the new standby starts and takes the interfaces over; the one that replaces the old active cannot start
    Fault(cloud.ec2.client, "RunInstances", "UnauthorizedOperation", status=403, times=1, after=1)
    with pytest.raises(RolledBack, match="rollout of prod tier app .*rolled back"):
        rollout(settings, "prod", tier="app", report=Reporter(quiet=True), cloud=cloud)
    after = app()
    assert after["0"]["InstanceId"] == before["0"]["InstanceId"]  # the interfaces failed back to it
    assert {s: i["ImageId"] for s, i in after.items()} == {"0": old_image, "standby-0": old_image}
    holders = {e["Attachment"]["InstanceId"] for e in c.describe_network_interfaces(Filters=[{
        "Name": "addresses.private-ip-address", "Values": ["10.30.1.20", "10.30.2.20"]}])["NetworkInterfaces"]}
    assert holders == {before["0"]["InstanceId"]}


def test_a_new_active_instance_that_fails_its_check_after_the_failover_fails_the_interfaces_back(
        net, builder_host, monkeypatch):
    """moto's instances cannot be dialled (tests/test_launch_e2e.py), so the tier's check on the new
    active instance, made once the interfaces moved, is the one thing stood in for: it fails."""
    from bakery.errors import RemoteError
    from bakery.launch import rollout as module

    settings, c = net["settings"], net["c"]
    launch(settings, "prod", tier="app", report=Reporter(quiet=True))

    def app() -> dict[str, dict]:
        return live(c, "app")

    before = app()
    write_recipe(settings.recipes, "app", recipe_text(builder_host.port, "  - {name: hi, shell: echo app-2}\n"))
    new_image = bake(settings, "app", {}, report=Reporter(quiet=True)).ami_id
    checked = []

    def failing_check(self, tier, instance_id, slot):
        checked.append(instance_id)
        raise RemoteError(f"{instance_id}: health check on port 8080: connect: timed out")

    monkeypatch.setattr(module.Rollout, "_check", failing_check)
    with pytest.raises(RolledBack, match="health check on port 8080.*rolled back"):
        rollout(settings, "prod", tier="app", report=Reporter(quiet=True))
    after = app()
    [new_active] = checked
    assert new_active not in {i["InstanceId"] for i in after.values()}  # the one that failed went
    assert after["0"]["InstanceId"] == before["0"]["InstanceId"]  # the interfaces failed back to it
    assert {s: i["ImageId"] for s, i in after.items()} == {"0": before["0"]["ImageId"],
                                                          "standby-0": before["0"]["ImageId"]} != new_image
    holders = {e["Attachment"]["InstanceId"] for e in c.describe_network_interfaces(Filters=[{
        "Name": "addresses.private-ip-address", "Values": ["10.30.1.20", "10.30.2.20"]}])["NetworkInterfaces"]}
    assert holders == {before["0"]["InstanceId"]}


def test_a_roll_back_to_an_image_that_is_gone_says_where_the_tier_was_left(world, builder_host):
    ec2 = world["ec2"]
    launch(world["settings"], "prod", report=Reporter(quiet=True))
    old_image = slots(ec2, "prod", "web")["0"][1]
    rebake_web(world, builder_host)
    cloud, _ = open_env(world["settings"], "prod")
    ec2.deregister_image(ImageId=old_image)  # pruned by hand while its instances still ran
    Fault(cloud.ec2.client, "RunInstances", "UnauthorizedOperation", status=403, times=1, after=1)
    with pytest.raises(RolloutFailed) as raised:
        rollout(world["settings"], "prod", tier="web", report=Reporter(quiet=True), cloud=cloud)
    message = raised.value.message
    assert f"rolling back failed too: image {old_image} is gone (deregistered)" in message
    assert "the tier now runs: 0 i-" in message and "1 i-" in message


def test_a_tier_behind_a_target_group_has_each_new_instance_in_service_before_its_old_one_leaves(
        world, builder_host, moto):
    elb = moto.client("elbv2")
    ec2 = world["ec2"]
    vpc = ec2.describe_subnets(SubnetIds=[world["subnets"]["app-a"]])["Subnets"][0]["VpcId"]
    arn = elb.create_target_group(Name="web-tg", Protocol="HTTP", Port=80, VpcId=vpc,
                                  TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
    path = world["envs"] / "prod.yaml"
    path.write_text(path.read_text().replace("    tags: {role: frontend}\n",
                                             f"    tags: {{role: frontend}}\n    target_group_arn: {arn}\n"))
    launch(world["settings"], "prod", report=Reporter(quiet=True))
    before = slots(ec2, "prod", "web")
    rebake_web(world, builder_host)
    out = io.StringIO()
    rollout(world["settings"], "prod", tier="web", report=Reporter(stream=out))
    after = slots(ec2, "prod", "web")
    targets = {h["Target"]["Id"] for h in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]}
    assert targets == {iid for iid, _ in after.values()}
    log = out.getvalue().splitlines()
    for slot in ("0", "1"):
        joined = next(n for n, line in enumerate(log) if f"register {after[slot][0]} in web's target group" in line)
        left = next(n for n, line in enumerate(log) if f"deregister {before[slot][0]} from web's target group" in line)
        gone = next(n for n, line in enumerate(log) if f"terminate {before[slot][0]}" in line)
        assert joined < left < gone
