"""The network package's pieces on their own, against moto in process (no server, no sshd):
the checks that refuse bad interfaces, `network.up`, `status` and `failover`.

The instances a launch would start are made here with a plain RunInstances carrying the tags a
launch gives them; everything else goes through bakery's own code.
"""

from __future__ import annotations

import pytest
from moto import mock_aws

from bakery.cloud.ec2 import EC2
from bakery.cloud.tags import ENVIRONMENT, ROLE, SLOT, TIER, instance_tags, network_filters, tag_filter, tag_specs, tags_of
from bakery.config.environment import load_environment
from bakery.config.settings import Settings
from bakery.errors import CloudError, ConfigError
from bakery.network import Network, failover, status
from bakery.progress import Reporter

ENV = """\
network:
  vpc: {cidr: 10.40.0.0/16}
  subnets:
    front: {cidr: 10.40.1.0/24, az: us-east-1a, public: true}
    back: {cidr: 10.40.2.0/24, az: us-east-1a}
    spare: {cidr: 10.40.3.0/24, az: us-east-1b}
  security_groups:
    web: {ingress: [{protocol: tcp, ports: 80, cidr: 0.0.0.0/0}]}
    app: {ingress: [{protocol: tcp, ports: 8080, group: web}]}
  network_acls:
    back-acl:
      subnets: [back]
      ingress: [{rule: 100, action: allow, protocol: tcp, ports: 5432, cidr: 10.40.1.0/24}]
      egress: [{rule: 100, action: allow, protocol: all, cidr: 10.40.0.0/16}]
  elastic_ips:
    front-eip: {}
tiers:
  app:
    image: {ami: ami-0123456789abcdef0}
    instance_type: t3.small
    count: 1
    standby: 1
    interfaces:
      - {device_index: 0, subnet: front, security_groups: [web]}
      - device_index: 1
        subnet: front
        security_groups: [app]
        private_ip: 10.40.1.20
        secondary_ips: [10.40.1.21]
        persistent: true
        elastic_ip: {name: front-eip, private_ip: 10.40.1.21}
      - {device_index: 2, subnet: back, security_groups: [app], private_ip: 10.40.2.20, persistent: true}
  db:
    image: {ami: ami-0123456789abcdef0}
    instance_type: t3.small
    interfaces:
      - {device_index: 0, subnet: back, security_groups: [app], private_ip: 10.40.2.250}
"""

CREATED = [("vpc", "vpc"), ("subnet", "front"), ("subnet", "back"), ("subnet", "spare"), ("security-group", "web"),
           ("security-group", "app"), ("network-acl", "back-acl"), ("elastic-ip", "front-eip"),
           ("interface", "app/1"), ("interface", "app/2")]


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    """The EC2 facade on an in-process moto."""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # no image is needed; loading them is slow
    with mock_aws():
        yield EC2(Settings(cloud="aws", region="us-east-1", project_dir=tmp_path))


@pytest.fixture
def write_env(tmp_path):
    """Write envs/prod.yaml (ENV, or ENV edited) and load it."""
    def write(text: str = ENV):
        (tmp_path / "envs").mkdir(exist_ok=True)
        (tmp_path / "envs/prod.yaml").write_text(text)
        return load_environment(tmp_path / "envs", "prod")
    return write


def tagged(cloud, kind: str, name: str) -> dict:
    """What network.up made for KIND/NAME, read back with the raw client."""
    operation, key = {"vpc": ("describe_vpcs", "Vpcs"), "subnet": ("describe_subnets", "Subnets"),
                      "sg": ("describe_security_groups", "SecurityGroups"),
                      "acl": ("describe_network_acls", "NetworkAcls"), "eip": ("describe_addresses", "Addresses"),
                      "eni": ("describe_network_interfaces", "NetworkInterfaces")}[kind]
    found = getattr(cloud.client, operation)(Filters=network_filters("prod", kind, name))[key]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def environment_vpcs(cloud) -> list[dict]:
    return cloud.client.describe_vpcs(Filters=[tag_filter(ENVIRONMENT, "prod")])["Vpcs"]


def refusal(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    message = caught.value.message
    assert "\n" not in message
    return message


# ---- the checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, line, field, problem", [
    (("private_ip: 10.40.2.20", "private_ip: 10.40.9.20"), 32,
     "tiers.app.interfaces[2]", "10.40.9.20 is outside subnet back (10.40.2.0/24)"),
    (("elastic_ip: {name: front-eip,", "elastic_ip: {name: other-eip,"), 31,
     "tiers.app.interfaces[1].elastic_ip", "'other-eip' is not in network.elastic_ips"),
    (("private_ip: 10.40.1.21}", "private_ip: 10.40.1.99}"), 31,
     "tiers.app.interfaces[1].elastic_ip",
     "bound to 10.40.1.99, which the interface does not have (10.40.1.20, 10.40.1.21)"),
    (("{device_index: 2, subnet: back, security_groups: [app], private_ip: 10.40.2.20",
      "{device_index: 2, subnet: spare, security_groups: [app], private_ip: 10.40.3.20"), 24,
     "tiers.app.interfaces",
     "subnets front in us-east-1a, spare in us-east-1b: every ENI of an instance must be in its availability zone"),
], ids=["ip-outside-its-subnet", "elastic-ip-not-declared", "elastic-ip-on-an-address-the-eni-lacks",
        "interfaces-in-two-azs"])
def test_a_bad_interface_is_refused_in_one_line_at_its_line_when_the_file_is_read(write_env, edit, line, field,
                                                                                 problem):
    """What the file alone shows is refused as it is loaded: before any cloud is opened (so
    `validate`, `render`, `network.up`, `launch` and `failover` all refuse it, offline)."""
    message = refusal(lambda: write_env(ENV.replace(*edit)))
    assert message.endswith(f"prod.yaml:{line}: {field}: {problem}"), message


def test_a_fixed_address_held_by_another_eni_is_refused_when_instances_are_to_be_launched(cloud, write_env):
    env = write_env()
    Network(cloud, env).up(dry_run=False)
    squatter = cloud.client.create_network_interface(SubnetId=tagged(cloud, "subnet", "back")["SubnetId"],
                                                     PrivateIpAddress="10.40.2.250")["NetworkInterface"]
    message = refusal(lambda: Network(cloud, env).resolve_interfaces("db", env.tiers["db"]))
    assert message == (f"{env.path}: tiers.db.interfaces: 10.40.2.250 is already in use by "
                       f"{squatter['NetworkInterfaceId']} (no instance); a fixed address can belong to one interface only")
    # nothing new to launch (the tier's instance is up and holds the address): no refusal
    assert Network(cloud, env).resolve_interfaces("db", env.tiers["db"], new_instances=False)


LIMITS = [
    (("instance_type: t3.small\n    count: 1", "instance_type: t3.micro\n    count: 1"), 24, "tiers.app.interfaces",
     "3 interfaces: a t3.micro takes at most 2 (EC2's MaximumNetworkInterfaces for the type)"),
    (("{device_index: 2, subnet: back", "{device_index: 7, subnet: back"), 32, "tiers.app.interfaces[2].device_index",
     "7: a t3.small takes device indexes 0 to 2 (EC2's MaximumNetworkInterfaces for the type)"),
    (("secondary_ips: [10.40.1.21]", "secondary_ips: [10.40.1.21, 10.40.1.22, 10.40.1.23, 10.40.1.24]"), 25,
     "tiers.app.interfaces[1]", "5 private IPv4 addresses: a t3.small's interface takes at most 4, the primary "
     "included (EC2's Ipv4AddressesPerInterface for the type)"),
]
LIMIT_IDS = ["more-enis-than-the-type-allows", "a-device-index-the-type-lacks", "more-addresses-than-an-eni-allows"]


@pytest.mark.parametrize("edit, line, field, problem", LIMITS, ids=LIMIT_IDS)
def test_what_the_instance_type_cannot_hold_is_refused_when_the_file_is_read(write_env, edit, line, field, problem):
    """EC2's per-type limits, from the instance-type data vendored from moto's copy of
    DescribeInstanceTypes (bakery/config/data/ec2.json): offline, at the field's line."""
    message = refusal(lambda: write_env(ENV.replace(*edit)))
    assert message.endswith(f"prod.yaml:{line}: {field}: {problem}"), message


@pytest.mark.parametrize("edit, line, field, problem", LIMITS, ids=LIMIT_IDS)
def test_a_type_the_vendored_data_lacks_is_held_to_ec2s_own_limits_before_launch(cloud, write_env, monkeypatch, edit,
                                                                                line, field, problem):
    """A type newer than the vendored data loads; DescribeInstanceTypes gives the same rule its
    limits before anything is launched."""
    from bakery.config import ec2data

    data = ec2data._data()
    monkeypatch.setattr(ec2data, "_data", lambda: {**data, "instance_types": {}})
    Network(cloud, write_env()).up(dry_run=False)
    env = write_env(ENV.replace(*edit))
    message = refusal(lambda: Network(cloud, env).resolve_interfaces("app", env.tiers["app"]))
    assert message == f"{env.path}: {field}: {problem}"


def test_a_security_group_of_another_vpc_is_refused(cloud, write_env):
    Network(cloud, write_env()).up(dry_run=False)
    default_sg = cloud.client.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    env = write_env(ENV.replace("security_groups: [app], private_ip: 10.40.2.250",
                                f"security_groups: [{default_sg}], private_ip: 10.40.2.250"))
    message = refusal(lambda: Network(cloud, env).resolve_interfaces("db", env.tiers["db"]))
    assert message.startswith(f"{env.path}: tiers.db.interfaces[0] (device 0).security_groups: '{default_sg}' "
                              "is not a security group of vpc-")
    assert message.endswith("(security groups must be in the same VPC as the subnet)")


def test_resolving_names_what_network_up_made(cloud, write_env):
    env = write_env()
    Network(cloud, env).up(dry_run=False)
    app = Network(cloud, env).resolve_interfaces("app", env.tiers["app"])
    front, eni1, eni2 = tagged(cloud, "subnet", "front"), tagged(cloud, "eni", "app/1"), tagged(cloud, "eni", "app/2")
    assert [(r.spec.device_index, r.subnet.id, r.subnet.az, r.eni_id) for r in app] == [
        (0, front["SubnetId"], "us-east-1a", None), (1, front["SubnetId"], "us-east-1a", eni1["NetworkInterfaceId"]),
        (2, tagged(cloud, "subnet", "back")["SubnetId"], "us-east-1a", eni2["NetworkInterfaceId"])]
    assert app[1].groups == [tagged(cloud, "sg", "app")["GroupId"]]
    assert app[1].eip_allocation == tagged(cloud, "eip", "front-eip")["AllocationId"]
    # a subnet may also be named by id or by its Name tag
    assert Network(cloud, env).subnet(front["SubnetId"], "here").cidr == "10.40.1.0/24"
    assert Network(cloud, env).subnet("prod-front", "here").id == front["SubnetId"]
    assert refusal(lambda: Network(cloud, env).subnet("nowhere", "tiers.x.subnets")) == \
        "tiers.x.subnets: subnet 'nowhere' matches 0 subnets (expected one)"


# ---- network.up --------------------------------------------------------------------------------

def test_up_creates_everything_once_and_a_second_up_creates_nothing(cloud, write_env):
    env = write_env()
    created = Network(cloud, env).up(dry_run=False)
    assert [(a.kind, a.name, a.status) for a in created] == [(k, n, "created") for k, n in CREATED]
    assert all(a.id for a in created)

    front, back = tagged(cloud, "subnet", "front"), tagged(cloud, "subnet", "back")
    assert front["MapPublicIpOnLaunch"] and not back["MapPublicIpOnLaunch"]
    assert tagged(cloud, "subnet", "spare")["AvailabilityZone"] == "us-east-1b"
    web, app = tagged(cloud, "sg", "web"), tagged(cloud, "sg", "app")
    assert app["GroupName"] == "prod-app" and app["VpcId"] == tagged(cloud, "vpc", "vpc")["VpcId"]
    rule = app["IpPermissions"][0]
    assert (rule["FromPort"], rule["UserIdGroupPairs"][0]["GroupId"]) == (8080, web["GroupId"])
    acl = tagged(cloud, "acl", "back-acl")
    entries = sorted((e["RuleNumber"], e["Egress"], e["Protocol"]) for e in acl["Entries"] if e["RuleNumber"] < 32767)
    assert entries == [(100, False, "6"), (100, True, "-1")]
    assert [a["SubnetId"] for a in acl["Associations"]] == [back["SubnetId"]]
    eni1, eni2 = tagged(cloud, "eni", "app/1"), tagged(cloud, "eni", "app/2")
    assert sorted(a["PrivateIpAddress"] for a in eni1["PrivateIpAddresses"]) == ["10.40.1.20", "10.40.1.21"]
    assert (eni2["PrivateIpAddress"], eni2["SubnetId"], eni2["Status"]) == ("10.40.2.20", back["SubnetId"], "available")
    assert tags_of(eni1)[TIER] == "app"
    assert not tagged(cloud, "eip", "front-eip").get("NetworkInterfaceId")  # launch puts it on

    again = Network(cloud, env).up(dry_run=False)
    assert [(a.kind, a.name, a.status, a.id) for a in again] == [(a.kind, a.name, "exists", a.id) for a in created]
    assert len(environment_vpcs(cloud)) == 1
    assert len(cloud.client.describe_network_interfaces(Filters=[tag_filter(ENVIRONMENT, "prod")])["NetworkInterfaces"]) == 2
    assert len(tagged(cloud, "sg", "app")["IpPermissions"]) == 1  # rules are not doubled


def test_a_dry_run_says_what_it_would_create_and_creates_nothing(cloud, write_env):
    env = write_env()
    plan = Network(cloud, env).up(dry_run=True)
    assert [(a.kind, a.name, a.status, a.id) for a in plan] == [(k, n, "create", None) for k, n in CREATED]
    assert plan[0].line() == "create   vpc             vpc"
    assert environment_vpcs(cloud) == [] and cloud.client.describe_addresses()["Addresses"] == []
    assert {a.status for a in Network(cloud, env).up(dry_run=False)} == {"created"}


def test_an_environment_without_a_network_has_nothing_to_bring_up(cloud, write_env):
    env = write_env("tiers:\n  web:\n    image: {ami: ami-0123456789abcdef0}\n")
    assert refusal(lambda: Network(cloud, env).up(dry_run=True)) == \
        f"{env.path}: environment 'prod' declares no network"


def test_authorizing_a_rule_that_is_already_there_is_done_not_an_error(cloud, write_env):
    Network(cloud, write_env()).up(dry_run=False)
    web = tagged(cloud, "sg", "web")["GroupId"]
    rule = dict(egress=False, protocol="tcp", ports=(80, 80), cidr="0.0.0.0/0")
    assert cloud.authorize(web, **rule) is False
    assert cloud.authorize(web, **{**rule, "ports": (443, 443)}) is True


def test_an_endpoint_error_in_a_network_call_is_a_one_line_cloud_error(cloud):
    with pytest.raises(CloudError) as caught:
        cloud.network_interface("eni-0123456789abcdef0")
    assert caught.value.message.startswith("describe-network-interfaces: InvalidNetworkInterfaceID.NotFound")


# ---- instances, status and failover ------------------------------------------------------------

def run_app_instance(cloud, slot: str) -> str:
    """An instance of tier app as a launch starts it: its primary ENI in `front`, its slot's tags."""
    inst = cloud.client.run_instances(
        ImageId="ami-0123456789abcdef0", InstanceType="t3.small", MinCount=1, MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": tagged(cloud, "subnet", "front")["SubnetId"],
                            "Groups": [tagged(cloud, "sg", "web")["GroupId"]]}],
        TagSpecifications=tag_specs(instance_tags("prod", "app", slot, "launch-1", "combined"), "instance"),
    )["Instances"][0]
    return inst["InstanceId"]


def attached(cloud, instance_id: str) -> dict[int, dict]:
    inst = cloud.client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {n["Attachment"]["DeviceIndex"]: n for n in inst["NetworkInterfaces"]}


@pytest.fixture
def fleet(cloud, write_env):
    """network.up done; the app tier's active instance holding its persistent ENIs and the
    Elastic IP, and a running standby."""
    env = write_env()
    Network(cloud, env).up(dry_run=False)
    active, standby = run_app_instance(cloud, "0"), run_app_instance(cloud, "standby-0")
    net = Network(cloud, env)
    resolved = net.resolve_interfaces("app", env.tiers["app"], new_instances=False)
    net.configure_attached(active, resolved, active=True)
    net.configure_attached(standby, resolved, active=False)
    return env, active, standby


def test_status_of_a_new_network_lists_its_persistent_interfaces_and_warns_of_the_idle_elastic_ip(cloud, write_env):
    env = write_env()
    Network(cloud, env).up(dry_run=False)
    info = status(cloud, env)
    eni1 = tagged(cloud, "eni", "app/1")
    assert info["environment"] == "prod"
    rows = sorted(info["interfaces"], key=lambda r: r["name"])
    assert [(r["name"], r["persistent"], r["instance"], r["attachment"], r["private_ips"]) for r in rows] == [
        ("app/1", True, None, "detached", ["10.40.1.20", "10.40.1.21"]),
        ("app/2", True, None, "detached", ["10.40.2.20"])]
    assert rows[0]["eni"] == eni1["NetworkInterfaceId"]
    # (moto says "" for the ENI of an unassociated address)
    assert [(e["name"], e["eni"] or None, e["instance"]) for e in info["elastic_ips"]] == [("front-eip", None, None)]
    assert len(info["warnings"]) == 1
    assert info["warnings"][0].startswith("Elastic IP front-eip (")
    assert info["warnings"][0].endswith("is not attached to a running instance: it is charged while idle")


def test_status_of_a_running_tier_shows_each_instances_interfaces_and_where_the_elastic_ip_is(cloud, fleet):
    env, active, standby = fleet
    info = status(cloud, env)
    rows = {(r["instance"], r["device_index"]): r for r in info["interfaces"]}
    assert sorted(rows) == sorted([(active, 0), (active, 1), (active, 2), (standby, 0)])
    assert [rows[(active, i)]["persistent"] for i in (0, 1, 2)] == [False, True, True]
    assert (rows[(active, 1)]["name"], rows[(active, 1)]["attachment"]) == ("app/1", "attached")
    assert rows[(standby, 0)]["name"] == "" and rows[(standby, 0)]["private_ips"][0].startswith("10.40.1.")
    eip = info["elastic_ips"][0]
    assert (eip["eni"], eip["instance"]) == (rows[(active, 1)]["eni"], active)
    assert info["warnings"] == []


def test_failover_moves_the_persistent_enis_and_the_elastic_ip_to_the_standby(cloud, fleet):
    env, active, standby = fleet
    before = attached(cloud, active)
    assert sorted(before) == [0, 1, 2] and sorted(attached(cloud, standby)) == [0]

    asked: list[dict] = []  # moto puts an EIP on the ENI's primary address whatever is asked: check the request
    cloud.client.meta.events.register("provide-client-params.ec2.AssociateAddress",
                                      lambda params, **_: asked.append(dict(params)))

    moved = failover(cloud, env, "app", None, Reporter(quiet=True))

    assert (moved.environment, moved.tier, moved.from_instance, moved.to_instance) == ("prod", "app", active, standby)
    now = attached(cloud, standby)
    assert sorted(now) == [0, 1, 2] and sorted(attached(cloud, active)) == [0]
    for index in (1, 2):  # the same ENIs: same addresses, same MACs
        assert now[index]["NetworkInterfaceId"] == before[index]["NetworkInterfaceId"]
        assert now[index]["MacAddress"] == before[index]["MacAddress"]
    assert sorted(a["PrivateIpAddress"] for a in now[1]["PrivateIpAddresses"]) == ["10.40.1.20", "10.40.1.21"]
    assert [(i["device_index"], i["ips"], i["mac"]) for i in moved.interfaces] == [
        (1, ["10.40.1.20", "10.40.1.21"], before[1]["MacAddress"]), (2, ["10.40.2.20"], before[2]["MacAddress"])]
    assert tagged(cloud, "eip", "front-eip")["NetworkInterfaceId"] == now[1]["NetworkInterfaceId"]
    assert [(p["NetworkInterfaceId"], p["PrivateIpAddress"], p["AllowReassociation"]) for p in asked] == [
        (now[1]["NetworkInterfaceId"], "10.40.1.21", True)]
    roles = {i: tags_of(cloud.describe_instance(i)) for i in (active, standby)}
    assert (roles[standby][SLOT], roles[standby][ROLE], roles[standby]["Name"]) == ("0", "active", "prod-app-0")
    # the old primary, still running, is the new hot standby (the slot the other one left)
    assert (roles[active][SLOT], roles[active][ROLE], roles[active]["Name"]) == (
        "standby-0", "standby", "prod-app-standby-0")
    assert (moved.from_slot, moved.from_problem) == ("standby-0", None)
    assert status(cloud, env)["elastic_ips"][0]["instance"] == standby


def test_failing_over_again_without_a_target_fails_back_and_the_slots_stay_two(cloud, fleet):
    env, active, standby = fleet
    failover(cloud, env, "app", None, Reporter(quiet=True))
    back = failover(cloud, env, "app", None, Reporter(quiet=True))  # no --to: the old primary is the standby
    assert (back.from_instance, back.to_instance, back.from_slot) == (standby, active, "standby-0")
    slots = {i: (tags_of(cloud.describe_instance(i))[SLOT], tags_of(cloud.describe_instance(i))["Name"])
             for i in (active, standby)}
    assert slots == {active: ("0", "prod-app-0"), standby: ("standby-0", "prod-app-standby-0")}


def test_an_unhealthy_old_primary_is_marked_failed_and_its_standby_slot_left_for_launch(cloud, fleet):
    env, active, standby = fleet
    moved = failover(cloud, env, "app", None, Reporter(quiet=True),
                     probe=lambda instance: "HTTP 500, expected 200")  # what the tier's health check said
    tags = tags_of(cloud.describe_instance(active))
    assert tags[SLOT].startswith("failed-") and tags[ROLE] == "failed" and tags["Name"] == f"prod-app-{tags[SLOT]}"
    assert (moved.from_slot, moved.from_problem) == (tags[SLOT], "HTTP 500, expected 200")
    assert cloud.describe_instance(active)["State"]["Name"] == "running"  # kept for inspection


def test_failover_to_a_stopped_instance_forces_the_detach_and_moves_the_interfaces_back(cloud, fleet):
    env, active, standby = fleet
    failover(cloud, env, "app", None, Reporter(quiet=True))
    cloud.client.stop_instances(InstanceIds=[standby])
    back = failover(cloud, env, "app", active, Reporter(quiet=True))
    assert (back.from_instance, back.to_instance) == (standby, active)
    assert sorted(attached(cloud, active)) == [0, 1, 2]


def test_failover_needs_a_running_standby_or_a_target(cloud, fleet):
    env, active, standby = fleet
    cloud.client.terminate_instances(InstanceIds=[standby])
    assert refusal(lambda: failover(cloud, env, "app", None, Reporter(quiet=True))) == (
        "failover: tier app of prod has no running standby instance (set standby: 1 and launch, or pass --to INSTANCE)")
    assert refusal(lambda: failover(cloud, env, "app", active, Reporter(quiet=True))) == \
        f"failover: {active} already holds tier app's interfaces"


def test_failover_of_a_tier_without_persistent_interfaces_is_refused(cloud, write_env):
    env = write_env()
    assert refusal(lambda: failover(cloud, env, "db", None, Reporter(quiet=True))) == \
        f"{env.path}: tiers.db has no persistent interfaces to fail over"
