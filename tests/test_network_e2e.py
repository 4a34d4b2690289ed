"""Multi-ENI tiers, Elastic IPs and ENI failover against a moto server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bakery.bake.run import bake
from bakery.cloud.ec2 import EC2
from bakery.config.environment import load_environment
from bakery.errors import ConfigError
from bakery.cloud.connect import open_cloud
from bakery.launch.run import launch
from bakery.network import Network, failover, status
from bakery.progress import Reporter
from tests.support import ROOT, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

NETWORK_ENV = """\
network:
  vpc: {cidr: 10.30.0.0/16}
  subnets:
    web-a: {cidr: 10.30.1.0/24, az: us-east-1a, public: true}
    db-a: {cidr: 10.30.2.0/24, az: us-east-1a}
    web-b: {cidr: 10.30.3.0/24, az: us-east-1b}
  security_groups:
    web-sg: {ingress: [{protocol: tcp, ports: 80, cidr: 0.0.0.0/0}]}
    app-web-sg: {ingress: [{protocol: tcp, ports: 8080, group: web-sg}]}
    app-db-sg: {}
    db-sg: {ingress: [{protocol: tcp, ports: 5432, group: app-db-sg}]}
  network_acls:
    db-acl:
      subnets: [db-a]
      ingress:
        - {rule: 100, action: allow, protocol: tcp, ports: 5432, cidr: 10.30.1.0/24}
        - {rule: 200, action: deny, protocol: all, cidr: 0.0.0.0/0}
      egress:
        - {rule: 100, action: allow, protocol: all, cidr: 10.30.0.0/16}
  elastic_ips:
    app-eip: {}
tiers:
  app:
    image: {recipe: app}
    instance_type: t3.small
    count: 1
    standby: 1
    interfaces:
      - {device_index: 0, subnet: web-a, security_groups: [web-sg]}
      - device_index: 1
        subnet: web-a
        security_groups: [app-web-sg]
        private_ip: 10.30.1.20
        secondary_ips: [10.30.1.21]
        persistent: true
        elastic_ip: {name: app-eip, private_ip: 10.30.1.21}
      - {device_index: 2, subnet: db-a, security_groups: [app-db-sg], private_ip: 10.30.2.20, persistent: true}
  fw:
    image: {recipe: app}
    instance_type: t3.small
    interfaces:
      - {device_index: 0, subnet: web-a, security_groups: [web-sg], source_dest_check: false}
      - {device_index: 1, subnet: db-a, security_groups: [db-sg], private_ip: 10.30.2.30, source_dest_check: false}
"""


@pytest.fixture
def net(moto, tmp_path, builder_host, settings_for):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "app", recipe_text(builder_host.port, "  - {name: hi, shell: echo app}\n"))
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "prod.yaml").write_text(NETWORK_ENV)
    settings = settings_for(recipes, envs_dir=envs)
    bake(settings, "app", {}, report=Reporter(quiet=True))
    ec2 = EC2(settings)
    return {"settings": settings, "ec2": ec2, "c": moto.client(), "envs": envs,
            "env": lambda: load_environment(envs, "prod")}


def by_tag(items, key="TagSet"):
    return {{t["Key"]: t["Value"] for t in i.get(key, [])}.get("bakery:network-name"): i for i in items}


def test_network_up_creates_everything_once_and_dry_run_nothing(net):
    c = net["c"]
    vpcs_before = len(c.describe_vpcs()["Vpcs"])
    plan = Network(net["ec2"], net["env"]()).up(dry_run=True)
    assert {a.status for a in plan} == {"create"} and len(c.describe_vpcs()["Vpcs"]) == vpcs_before
    assert [a.kind for a in plan].count("interface") == 2

    created = Network(net["ec2"], net["env"]()).up(dry_run=False)
    assert {a.status for a in created} == {"created"} and len(created) == len(plan)
    again = Network(net["ec2"], net["env"]()).up(dry_run=False)
    assert {a.status for a in again} == {"exists"}

    flt = [{"Name": "tag:bakery:environment", "Values": ["prod"]}]
    subnets = by_tag(c.describe_subnets(Filters=flt)["Subnets"], "Tags")
    assert subnets["subnet/web-a"]["MapPublicIpOnLaunch"] and not subnets["subnet/db-a"]["MapPublicIpOnLaunch"]
    assert subnets["subnet/web-b"]["AvailabilityZone"] == "us-east-1b"
    groups = by_tag(c.describe_security_groups(Filters=flt)["SecurityGroups"], "Tags")
    db_rule = groups["sg/db-sg"]["IpPermissions"][0]
    assert db_rule["FromPort"] == 5432 and db_rule["UserIdGroupPairs"][0]["GroupId"] == groups["sg/app-db-sg"]["GroupId"]
    acl = c.describe_network_acls(Filters=flt)["NetworkAcls"][0]
    rules = sorted((e["RuleNumber"], e["RuleAction"], e["Egress"]) for e in acl["Entries"] if e["RuleNumber"] < 32767)
    assert rules == [(100, "allow", False), (100, "allow", True), (200, "deny", False)]
    assert [a["SubnetId"] for a in acl["Associations"]] == [subnets["subnet/db-a"]["SubnetId"]]
    enis = by_tag(c.describe_network_interfaces(Filters=flt)["NetworkInterfaces"])
    eni1 = enis["eni/app/1"]
    assert sorted(a["PrivateIpAddress"] for a in eni1["PrivateIpAddresses"]) == ["10.30.1.20", "10.30.1.21"]
    assert enis["eni/app/2"]["PrivateIpAddress"] == "10.30.2.20" and eni1["Status"] == "available"
    assert len(c.describe_addresses(Filters=flt)["Addresses"]) == 1


def test_launch_attaches_persistent_enis_to_the_active_instance_and_failover_moves_them(net):
    settings, c = net["settings"], net["c"]
    Network(net["ec2"], net["env"]()).up(dry_run=False)
    warned = status(net["ec2"], net["env"]())["warnings"]
    assert len(warned) == 1 and "app-eip" in warned[0] and "charged while idle" in warned[0]

    from bakery.launch.run import Launch

    env = net["env"]()
    launcher = Launch(settings, env, report=Reporter(quiet=True), cloud=open_cloud(settings))
    sent: list[dict] = []  # moto records an EIP on the ENI's primary IP whatever we ask: check what we ask
    launcher.ec2.client.meta.events.register("provide-client-params.ec2.AssociateAddress",
                                             lambda params, **_: sent.append(dict(params)))
    plans = launcher.plan(env.tiers)
    launched = launcher.launch(plans)
    assert [(p["PrivateIpAddress"], p["AllowReassociation"]) for p in sent] == [("10.30.1.21", True)]
    roles = {r.slot: r.instance_id for r in launched if r.tier == "app"}
    active, standby = roles["0"], roles["standby-0"]
    inst = c.describe_instances(InstanceIds=[active])["Reservations"][0]["Instances"][0]
    attached = {n["Attachment"]["DeviceIndex"]: n for n in inst["NetworkInterfaces"]}
    assert sorted(attached) == [0, 1, 2]
    assert attached[1]["PrivateIpAddress"] == "10.30.1.20" and attached[2]["PrivateIpAddress"] == "10.30.2.20"
    spare = c.describe_instances(InstanceIds=[standby])["Reservations"][0]["Instances"][0]
    assert [n["Attachment"]["DeviceIndex"] for n in spare["NetworkInterfaces"]] == [0]
    flt = [{"Name": "tag:bakery:environment", "Values": ["prod"]}]
    eip = c.describe_addresses(Filters=flt)["Addresses"][0]
    assert eip["NetworkInterfaceId"] == attached[1]["NetworkInterfaceId"]
    shown = status(net["ec2"], net["env"]())
    assert shown["warnings"] == [] and shown["elastic_ips"][0]["instance"] == active

    fw = next(r.instance_id for r in launched if r.tier == "fw")
    fw_enis = c.describe_instances(InstanceIds=[fw])["Reservations"][0]["Instances"][0]["NetworkInterfaces"]
    assert len(fw_enis) == 2 and all(
        c.describe_network_interface_attribute(NetworkInterfaceId=n["NetworkInterfaceId"], Attribute="sourceDestCheck")
        ["SourceDestCheck"]["Value"] is False for n in fw_enis)

    macs = {n["NetworkInterfaceId"]: n["MacAddress"] for n in attached.values()}
    moved = failover(net["ec2"], net["env"](), "app", None, Reporter(quiet=True))
    assert (moved.from_instance, moved.to_instance) == (active, standby) and moved.seconds < 60
    spare = c.describe_instances(InstanceIds=[standby])["Reservations"][0]["Instances"][0]
    now = {n["Attachment"]["DeviceIndex"]: n for n in spare["NetworkInterfaces"]}
    assert sorted(now) == [0, 1, 2]
    assert now[1]["NetworkInterfaceId"] == attached[1]["NetworkInterfaceId"]
    assert sorted(a["PrivateIpAddress"] for a in now[1]["PrivateIpAddresses"]) == ["10.30.1.20", "10.30.1.21"]
    assert now[1]["MacAddress"] == macs[now[1]["NetworkInterfaceId"]]  # MAC-bound licences survive the move
    assert now[2]["PrivateIpAddress"] == "10.30.2.20"
    eip = c.describe_addresses(Filters=flt)["Addresses"][0]
    assert eip["NetworkInterfaceId"] == now[1]["NetworkInterfaceId"]
    assert status(net["ec2"], net["env"]())["elastic_ips"][0]["instance"] == standby
    tags = {t["Key"]: t["Value"] for t in spare["Tags"]}
    assert tags["bakery:role"] == "active" and tags["bakery:slot"] == "0"

    # a failed (stopped) active instance: the detach is forced, and the interfaces come back
    c.stop_instances(InstanceIds=[standby])
    back = failover(net["ec2"], net["env"](), "app", active, Reporter(quiet=True))
    assert back.to_instance == active
    inst = c.describe_instances(InstanceIds=[active])["Reservations"][0]["Instances"][0]
    assert sorted(n["Attachment"]["DeviceIndex"] for n in inst["NetworkInterfaces"]) == [0, 1, 2]


def test_launch_brings_the_network_up_first_and_dry_run_only_plans_it(net):
    c = net["c"]
    vpcs = len(c.describe_vpcs()["Vpcs"])
    dry = launch(net["settings"], "prod", dry_run=True, report=Reporter(quiet=True))
    assert dry.plans == [] and any("create   vpc" in line for line in dry.network)
    assert len(c.describe_vpcs()["Vpcs"]) == vpcs
    report = launch(net["settings"], "prod", report=Reporter(quiet=True))
    assert len(report.instances) == 3 and any("created  interface" in line for line in report.network)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("{device_index: 2, subnet: db-a,", "{device_index: 2, subnet: web-b,").replace(
        "private_ip: 10.30.2.20", "private_ip: 10.30.3.20"), "web-a in us-east-1a, web-b in us-east-1b: every ENI of an instance must be in its availability zone"),
    (lambda t: t.replace("{device_index: 2, subnet: db-a", "{device_index: 1, subnet: db-a"), "duplicate device_index"),
    (lambda t: t.replace("instance_type: t3.small\n    count: 1", "instance_type: t3.micro\n    count: 1"),
     "3 interfaces: a t3.micro takes at most 2"),
    (lambda t: t.replace("private_ip: 10.30.2.20", "private_ip: 10.30.9.20"), "10.30.9.20 is outside subnet db-a"),
    (lambda t: t.replace("elastic_ip: {name: app-eip, private_ip: 10.30.1.21}",
                         "elastic_ip: {name: app-eip, private_ip: 10.30.1.99}"), "does not have"),
    (lambda t: t.replace("{device_index: 0, subnet: web-a, security_groups: [web-sg]}",
                         "{device_index: 0, subnet: web-a, security_groups: [web-sg], persistent: true, private_ip: 10.30.1.5}"),
     "cannot be device_index 0"),
    (lambda t: t.replace("secondary_ips: [10.30.1.21]", "secondary_ips: [10.30.1.21, 10.30.1.22, 10.30.1.23, 10.30.1.24]")
     .replace("private_ip: 10.30.1.21}", "private_ip: 10.30.1.21}"), "5 private IPv4 addresses: a t3.small's interface takes at most 4"),
    (lambda t: t.replace("cidr: 10.30.2.0/24, az", "cidr: 10.31.2.0/24, az"), "not inside the VPC"),
    (lambda t: t.replace("ports: 5432, group: app-db-sg", "ports: 5432, group: nope-sg"), "unknown group 'nope-sg'"),
])
def test_what_aws_would_reject_late_is_refused_before_anything_is_created(net, edit, message):
    path = net["envs"] / "prod.yaml"
    path.write_text(edit(NETWORK_ENV))
    vpcs = len(net["c"].describe_vpcs()["Vpcs"])
    with pytest.raises(ConfigError, match=message):
        env = load_environment(net["envs"], "prod")
        Network(net["ec2"], env).up(dry_run=False)
        launch(net["settings"], "prod", report=Reporter(quiet=True))
    c = net["c"]
    flt = [{"Name": "tag:bakery:environment", "Values": ["prod"]}]
    if "t3.micro" not in message and "5 private IPs" not in message:  # offline-detectable: nothing at all was made
        assert len(c.describe_vpcs()["Vpcs"]) == vpcs
    assert c.describe_instances(Filters=flt)["Reservations"] == []


def test_security_groups_from_another_vpc_are_refused(net):
    default_sg = net["c"].describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    Network(net["ec2"], net["env"]()).up(dry_run=False)
    (net["envs"] / "prod.yaml").write_text(NETWORK_ENV.replace("security_groups: [app-db-sg]",
                                                               f"security_groups: [{default_sg}]"))
    with pytest.raises(ConfigError, match="must be in the same VPC as the subnet"):
        launch(net["settings"], "prod", report=Reporter(quiet=True))


def test_a_fixed_address_already_taken_is_refused_before_launch(net):
    Network(net["ec2"], net["env"]()).up(dry_run=False)
    c = net["c"]
    db_a = c.describe_subnets(Filters=[{"Name": "tag:bakery:network-name", "Values": ["subnet/db-a"]}])["Subnets"][0]
    squatter = c.create_network_interface(SubnetId=db_a["SubnetId"], PrivateIpAddress="10.30.2.30")
    with pytest.raises(ConfigError, match=r"10.30.2.30 is already in use by eni-"):
        launch(net["settings"], "prod", report=Reporter(quiet=True))
    assert c.describe_instances(Filters=[{"Name": "tag:bakery:environment", "Values": ["prod"]}])["Reservations"] == []
    assert squatter["NetworkInterface"]["Status"] == "available"


def test_a_tier_without_interfaces_uses_the_networks_subnets_and_groups_by_name(net):
    """`subnets:` and `security_groups:` name what network.up made (tagged), not just Name tags."""
    (net["envs"] / "simple.yaml").write_text(
        NETWORK_ENV.split("tiers:")[0]
        + "tiers:\n  web:\n    image: {recipe: app}\n    subnets: [web-a]\n    security_groups: [web-sg]\n")
    report = launch(net["settings"], "simple", report=Reporter(quiet=True))
    c = net["c"]
    inst = c.describe_instances(InstanceIds=[report.instances[0].instance_id])["Reservations"][0]["Instances"][0]
    flt = [{"Name": "tag:bakery:environment", "Values": ["simple"]}]
    subnet = c.describe_subnets(Filters=flt + [{"Name": "tag:bakery:network-name", "Values": ["subnet/web-a"]}])
    group = c.describe_security_groups(Filters=flt + [{"Name": "tag:bakery:network-name", "Values": ["sg/web-sg"]}])
    assert inst["SubnetId"] == subnet["Subnets"][0]["SubnetId"]
    assert [g["GroupId"] for g in inst["NetworkInterfaces"][0]["Groups"]] == [group["SecurityGroups"][0]["GroupId"]]


def test_the_failover_life_cycle_through_the_command_line(net, moto):
    """Fail over, fail back without --to, relaunch: the old primary is the standby each time, names
    follow roles, and the tier stays at count + standby instances."""
    launch(net["settings"], "prod", report=Reporter(quiet=True))
    c = net["c"]

    def app_slots() -> dict[str, tuple[str, str]]:
        live = [i for r in c.describe_instances(Filters=[{"Name": "tag:bakery:tier", "Values": ["app"]}])["Reservations"]
                for i in r["Instances"] if i["State"]["Name"] != "terminated"]
        return {i["InstanceId"]: (tags["bakery:slot"], tags["Name"])
                for i in live for tags in [{t["Key"]: t["Value"] for t in i["Tags"]}]}

    before = app_slots()
    active = next(i for i, (slot, _) in before.items() if slot == "0")
    standby = next(i for i, (slot, _) in before.items() if slot == "standby-0")
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "aws", "INVOKE_BAKERY_ENDPOINT_URL": moto.url,
           "INVOKE_BAKERY_RECIPES_DIR": str(net["settings"].recipes), "INVOKE_BAKERY_ENVS_DIR": str(net["envs"]),
           "INVOKE_BAKERY_STATE_DIR": str(net["settings"].state)}

    def failover_cli() -> str:
        out = subprocess.run([sys.executable, "-m", "invoke", "failover", "--env", "prod", "--tier", "app"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert f"{active} is the new standby (standby-0)" in failover_cli()
    assert app_slots() == {standby: ("0", "prod-app-0"), active: ("standby-0", "prod-app-standby-0")}
    assert f"{standby} is the new standby (standby-0)" in failover_cli()  # no --to: fails back
    assert app_slots() == before
    again = launch(net["settings"], "prod", report=Reporter(quiet=True))
    assert [r for r in again.instances if r.tier == "app"] == [] and app_slots() == before
