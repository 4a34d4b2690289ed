"""The local cloud's firewall on its own: moto's network state read into a policy (moto in
process), the policy written as an nftables ruleset (plain text, no root), and `nft -c` accepting
every ruleset written here (root and nft, in a throwaway network namespace: nothing is loaded)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import replace

import boto3
import pytest
from moto import mock_aws

from bakery.config.environment import load_environment
from bakery.config.settings import Settings
from bakery.cloud.ec2 import EC2
from bakery.local import firewall
from bakery.local import moto_network as N
from bakery.local.errors import LocalCloudError
from bakery.local.moto_network import AclEntry, Interface, NetworkAcl, Permission, SecurityGroup, Traffic, VpcPolicy
from bakery.network import Network
from tests.support import ROOT

ALL = Traffic("all")
ANY = "0.0.0.0/0"


def nft_check(text: str) -> None:
    """`nft -c` (parse and check against the kernel, load nothing) in a namespace of its own."""
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.skip("nft -c needs root and nftables")
    out = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=text, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + "\n" + text


def chain(text: str, name: str, table: str = "inet") -> list[str]:
    """The rules of one chain, stripped, without comment lines and a base chain's hook line."""
    body = text.split(f"\ntable {table} bakery {{\n", 1)[1].split("\n}\n", 1)[0]
    m = re.search(rf"\tchain {re.escape(name)} {{\n(.*?)\n\t}}", body, re.S)
    assert m, f"no chain {name} in:\n{text}"
    return [line.strip() for line in m.group(1).splitlines() if not line.strip().startswith(("#", "type "))]


def three_tier() -> VpcPolicy:
    """web (public 80), app (8080 from web, two groups on its ENI), db (5432 from app, a custom
    egress only), an appliance with the source/dest check off; a stateless ACL on db's subnet."""
    groups = {
        "sg-web": SecurityGroup("sg-web", (Permission(Traffic("tcp", (80, 80)), cidr=ANY),), (Permission(ALL, cidr=ANY),)),
        "sg-app": SecurityGroup("sg-app", (Permission(Traffic("tcp", (8080, 8080)), group="sg-web"),),
                                (Permission(ALL, cidr=ANY),)),
        "sg-mgmt": SecurityGroup("sg-mgmt", (Permission(Traffic("icmp", icmp=(8, -1)), cidr="10.0.0.0/16"),), ()),
        "sg-db": SecurityGroup("sg-db", (Permission(Traffic("tcp", (5432, 5432)), group="sg-app"),),
                               (Permission(Traffic("tcp", (1024, 65535)), cidr="10.0.0.0/16"),)),
        "sg-edge": SecurityGroup("sg-edge", (Permission(ALL, cidr="10.0.0.0/16"),), (Permission(ALL, cidr=ANY),)),
    }
    enis = {
        "eni-web": Interface("eni-web", "subnet-a", ("10.0.1.10",), ("sg-web",), True),
        "eni-app": Interface("eni-app", "subnet-a", ("10.0.1.20", "10.0.1.21"), ("sg-app", "sg-mgmt"), True),
        "eni-db": Interface("eni-db", "subnet-b", ("10.0.2.250",), ("sg-db",), True),
        "eni-edge": Interface("eni-edge", "subnet-a", ("10.0.1.250",), ("sg-edge",), False),
        "eni-idle": Interface("eni-idle", "subnet-b", ("10.0.2.30",), ("sg-app",), True),  # not attached
    }
    acl = NetworkAcl("acl-db",
                     ingress=(AclEntry(100, True, Traffic("tcp", (5432, 5432)), "10.0.0.0/16"),
                              AclEntry(110, True, Traffic("tcp", (1024, 65535)), ANY),
                              AclEntry(200, False, ALL, ANY)),
                     egress=(AclEntry(100, True, Traffic("tcp", (1024, 65535)), "10.0.0.0/16"),))
    default = NetworkAcl("acl-default", ingress=(AclEntry(100, True, ALL, ANY), AclEntry(32767, False, ALL, ANY)),
                         egress=(AclEntry(100, True, ALL, ANY), AclEntry(32767, False, ALL, ANY)))
    return VpcPolicy("vpc-1", groups, enis, {"acl-db": acl, "acl-default": default},
                     {"subnet-a": "acl-default", "subnet-b": "acl-db"})


SUBNETS = {"subnet-a": "bra", "subnet-b": "brb"}
PORTS = {"eni-web": "vweb", "eni-app": "vapp", "eni-db": "vdb", "eni-edge": "vedge"}


# ---- rule generation ---------------------------------------------------------------------------

def test_groups_are_allow_lists_per_eni_in_both_directions_with_the_union_of_its_groups():
    text = firewall.render(three_tier(), SUBNETS, PORTS)
    assert chain(text, "eni-web-ingress") == ["tcp dport 80 return", "drop"]
    assert chain(text, "eni-web-egress") == ["return", "drop"]  # the default egress rule: all to anywhere
    assert chain(text, "eni-app-ingress") == ["ip saddr @members-sg-web tcp dport 8080 return",
                                              "ip saddr 10.0.0.0/16 icmp type 8 return", "drop"]
    assert chain(text, "eni-app-egress") == ["return", "drop"]  # sg-mgmt has no egress: sg-app's allows
    assert chain(text, "eni-db-egress") == ["ip daddr 10.0.0.0/16 tcp dport 1024-65535 return", "drop"]
    assert "eni-idle-ingress" not in text  # only ENIs on the fabric get chains


def test_a_group_reference_is_every_private_ip_of_the_groups_members():
    policy = three_tier()
    text = firewall.render(policy, SUBNETS, PORTS)
    assert "set members-sg-app {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.1.20, 10.0.1.21, 10.0.2.30 }" in text
    assert "set members-sg-web {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.1.10 }" in text
    # a secondary IP, a group change: the members follow, so the ruleset (and its digest) changes
    policy.interfaces["eni-web"] = Interface("eni-web", "subnet-a", ("10.0.1.10", "10.0.1.11"), ("sg-web",), True)
    policy.interfaces["eni-edge"] = Interface("eni-edge", "subnet-a", ("10.0.1.250",), ("sg-edge", "sg-web"), False)
    again = firewall.render(policy, SUBNETS, PORTS)
    assert "elements = { 10.0.1.10, 10.0.1.11, 10.0.1.250 }" in again


def test_an_empty_group_set_is_declared_without_elements():
    policy = three_tier()
    del policy.interfaces["eni-web"]
    text = firewall.render(policy, SUBNETS, {k: v for k, v in PORTS.items() if k != "eni-web"})
    assert "set members-sg-web {\n\t\ttype ipv4_addr\n\t}" in text
    nft_check(text)


def test_acls_run_in_rule_number_order_where_traffic_crosses_a_subnet_boundary_and_end_in_deny():
    policy = three_tier()
    acl = policy.acls["acl-db"]
    policy.acls["acl-db"] = NetworkAcl(acl.id, tuple(reversed(acl.ingress)), acl.egress)  # order given != number
    text = firewall.render(policy, SUBNETS, PORTS)
    assert chain(text, "acl-db-ingress") == [
        'ip saddr 10.0.0.0/16 tcp dport 5432 return comment "100 allow"',
        'tcp dport 1024-65535 return comment "110 allow"', 'drop comment "200 deny"', 'drop comment "*"']
    assert chain(text, "acl-db-egress") == ['ip daddr 10.0.0.0/16 tcp dport 1024-65535 return comment "100 allow"',
                                            'drop comment "*"']
    forward = chain(text, "forward")
    # routed traffic only (bridge in != bridge out): within a subnet there is no ACL
    assert forward[:4] == ['iifname "bra" oifname != "bra" jump acl-default-egress comment "leaving subnet-a"',
                           'oifname "bra" iifname != "bra" jump acl-default-ingress comment "entering subnet-a"',
                           'iifname "brb" oifname != "brb" jump acl-db-egress comment "leaving subnet-b"',
                           'oifname "brb" iifname != "brb" jump acl-db-ingress comment "entering subnet-b"']
    # stateless: the ACLs come before the connection-tracking shortcut, the groups after it
    assert forward[4] == "ct state established,related accept"


def test_the_source_dest_check_is_per_port_and_off_lets_an_appliance_forward():
    text = firewall.render(three_tier(), SUBNETS, PORTS)
    on = chain(text, "from-eni-app", "bridge")
    assert "ip saddr != { 10.0.1.20, 10.0.1.21 } drop" in on
    assert "ip daddr != { 10.0.1.20, 10.0.1.21 } drop" in chain(text, "to-eni-app", "bridge")
    off = chain(text, "from-eni-edge", "bridge")
    assert not any("ip saddr" in r for r in off) and not any("ip daddr" in r for r in chain(text, "to-eni-edge", "bridge"))
    for rules in (on, off):  # ARP claims only the ENI's own IPs; nothing but IPv4 and ARP
        assert "ether type != { ip, arp } drop" in rules
    assert "arp saddr ip != { 0.0.0.0, 10.0.1.250 } drop" in off


def test_arp_may_claim_any_address_of_the_enis_own_instance_and_no_other():
    """A multi-homed Linux instance answering on eth0 what reached it on eth1 asks ARP on eth0 with
    eth1's address; claiming another instance's address stays impossible."""
    policy = three_tier()
    policy.interfaces["eni-edge"] = replace(policy.interfaces["eni-edge"], instance_id="i-edge")
    policy.interfaces["eni-edge2"] = Interface("eni-edge2", "subnet-b", ("10.0.2.251",), ("sg-edge",), False, "i-edge")
    text = firewall.render(policy, SUBNETS, {**PORTS, "eni-edge2": "vedge2"})
    assert "arp saddr ip != { 0.0.0.0, 10.0.1.250, 10.0.2.251 } drop" in chain(text, "from-eni-edge", "bridge")
    assert "arp saddr ip != { 0.0.0.0, 10.0.2.251, 10.0.1.250 } drop" in chain(text, "from-eni-edge2", "bridge")
    assert "arp saddr ip != { 0.0.0.0, 10.0.1.10 } drop" in chain(text, "from-eni-web", "bridge")


def test_ports_are_marked_and_a_port_without_a_policy_drops():
    text = firewall.render(three_tier(), SUBNETS, {**PORTS, "eni-gone": "vgone"})
    pre = chain(text, "prerouting", "bridge")
    assert pre[0].startswith('iifname vmap { "vapp" : goto from-eni-app, "vdb" : goto from-eni-db, ')
    assert "vgone" not in text and pre[1].startswith('iifname "v*" drop')
    marks = {name: chain(text, f"from-{name}", "bridge")[0] for name in PORTS}
    assert sorted(marks.values()) == [f"meta mark set 0x0000000{n}" for n in range(1, 5)]
    forward = chain(text, "forward")
    assert "meta mark & 0x80000000 == 0 ip daddr vmap { 10.0.1.10 : jump eni-web-ingress, " in forward[6]


def test_blocked_traffic_is_dropped_never_rejected():
    text = firewall.render(three_tier(), SUBNETS, PORTS)
    assert "reject" not in text and " drop" in text


def test_rendering_is_deterministic_and_follows_every_policy_change():
    policy = three_tier()
    text = firewall.render(policy, SUBNETS, PORTS)
    shuffled = VpcPolicy(policy.vpc_id, dict(reversed(policy.groups.items())), dict(reversed(policy.interfaces.items())),
                         dict(reversed(policy.acls.items())), dict(reversed(policy.subnet_acls.items())))
    assert firewall.render(shuffled, dict(reversed(SUBNETS.items())), dict(reversed(PORTS.items()))) == text
    policy.interfaces["eni-db"] = Interface("eni-db", "subnet-b", ("10.0.2.250",), ("sg-db",), False)
    assert firewall.render(policy, SUBNETS, PORTS) != text


@pytest.mark.parametrize("traffic, expected", [
    (Traffic("all"), ""), (Traffic("tcp"), "meta l4proto tcp"), (Traffic("udp", (53, 53)), "udp dport 53"),
    (Traffic("tcp", (1024, 65535)), "tcp dport 1024-65535"), (Traffic("icmp"), "meta l4proto icmp"),
    (Traffic("icmp", icmp=(3, 4)), "icmp type 3 icmp code 4"), (Traffic("47"), "meta l4proto 47"),
])
def test_traffic_in_nft_terms(traffic, expected):
    assert firewall._traffic(traffic) == expected


def test_nft_accepts_the_rulesets():
    nft_check(firewall.render(three_tier(), SUBNETS, PORTS))
    nft_check(firewall.render(VpcPolicy("vpc-empty"), {}, {}))  # a VPC with nothing on it yet
    nft_check(firewall.render(VpcPolicy("vpc-unknown"), SUBNETS, PORTS))  # moto does not know it


# ---- applying: only what changed, failures once --------------------------------------------------

class FakeFabric:
    def __init__(self, fail: str | None = None):
        self.loaded: dict[str, str] = {}
        self.calls = 0
        self.fail = fail

    def layout(self) -> dict:
        return {"vpcs": {"vpc-1": {"netns": "bakery-vpc-1"}, "vpc-2": {"netns": "bakery-vpc-2"}},
                "subnets": {"subnet-a": {"vpc": "vpc-1", "bridge": "bra"}, "subnet-b": {"vpc": "vpc-1", "bridge": "brb"},
                            "subnet-z": {"vpc": "vpc-2", "bridge": "brz"}},
                "attachments": {"eni-web": {"subnet": "subnet-a", "veth": "vweb"},
                                "eni-db": {"subnet": "subnet-b", "veth": "vdb"},
                                "eni-z": {"subnet": "subnet-z", "veth": "vz"}},
                "clients": {}}

    def apply_firewall(self, vpc_id: str, ruleset: str) -> bool:
        self.calls += 1
        if self.fail:
            raise LocalCloudError(self.fail)
        changed = self.loaded.get(vpc_id) != ruleset
        self.loaded[vpc_id] = ruleset
        return changed


def test_apply_loads_each_vpc_of_the_fabric_and_only_what_changed():
    fabric = FakeFabric()
    assert firewall.apply(fabric, {"vpc-1": three_tier()}) == ["vpc-1", "vpc-2"]
    assert "jump eni-web-ingress" in fabric.loaded["vpc-1"] and "eni-app" not in fabric.loaded["vpc-1"].split(
        "table inet")[0]  # only ENIs attached in this VPC have ports
    assert "vz" not in fabric.loaded["vpc-1"] and 'iifname "v*" drop' in fabric.loaded["vpc-2"]  # unknown: drop
    assert firewall.apply(fabric, {"vpc-1": three_tier()}) == []


def test_apply_reports_a_failure_once_not_every_pass():
    fabric = FakeFabric(fail="nft is missing")
    with pytest.raises(LocalCloudError, match="nft is missing; nft is missing"):
        firewall.apply(fabric, {"vpc-1": three_tier()})
    assert firewall.apply(fabric, {"vpc-1": three_tier()}) == []  # the same failure again: quiet
    fabric.fail = None
    assert firewall.apply(fabric, {"vpc-1": three_tier()}) == ["vpc-1", "vpc-2"]


# ---- moto's state as a policy ----------------------------------------------------------------------

@pytest.fixture
def ec2(monkeypatch):
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def test_the_policy_is_read_from_moto(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.7.0.0/16")["Vpc"]["VpcId"]
    front = ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.1.0/24")["Subnet"]["SubnetId"]
    back = ec2.create_subnet(VpcId=vpc, CidrBlock="10.7.2.0/24")["Subnet"]["SubnetId"]
    web = ec2.create_security_group(VpcId=vpc, GroupName="web", Description="w")["GroupId"]
    db = ec2.create_security_group(VpcId=vpc, GroupName="db", Description="d")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "10.7.0.0/16"}]}])
    ec2.authorize_security_group_ingress(GroupId=db, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]},
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])  # no IPv6 on the fabric: ignored
    eni = ec2.create_network_interface(SubnetId=front, Groups=[web], PrivateIpAddress="10.7.1.20")[
        "NetworkInterface"]["NetworkInterfaceId"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.7.1.21"])
    ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, SourceDestCheck={"Value": False})
    other = ec2.create_network_interface(SubnetId=back, Groups=[db], PrivateIpAddress="10.7.2.20")[
        "NetworkInterface"]["NetworkInterfaceId"]
    acl = ec2.create_network_acl(VpcId=vpc)["NetworkAcl"]["NetworkAclId"]
    for number, egress, protocol, action, ports in [(200, False, "-1", "deny", None), (100, False, "6", "allow", (5432, 5432)),
                                                    (100, True, "6", "allow", (1024, 65535))]:
        ec2.create_network_acl_entry(NetworkAclId=acl, RuleNumber=number, Protocol=protocol, RuleAction=action,
                                     Egress=egress, CidrBlock="10.7.0.0/16",
                                     **({"PortRange": {"From": ports[0], "To": ports[1]}} if ports else {}))
    assoc = next(a["NetworkAclAssociationId"] for a in ec2.describe_network_acls(
        Filters=[{"Name": "association.subnet-id", "Values": [back]}])["NetworkAcls"][0]["Associations"]
                 if a["SubnetId"] == back)
    ec2.replace_network_acl_association(AssociationId=assoc, NetworkAclId=acl)

    policy = N.policies()[vpc]
    assert policy.groups[web].ingress == (Permission(Traffic("tcp", (80, 80)), cidr=ANY),
                                          Permission(Traffic("icmp", icmp=(8, -1)), cidr="10.7.0.0/16"))
    assert policy.groups[web].egress == (Permission(ALL, cidr=ANY),)  # EC2's default egress rule
    assert policy.groups[db].ingress == (Permission(Traffic("tcp", (5432, 5432)), group=web),)
    assert policy.interfaces[eni] == Interface(eni, front, ("10.7.1.20", "10.7.1.21"), (web,), False)
    assert policy.interfaces[other].source_dest_check is True
    assert policy.members(web) == ("10.7.1.20", "10.7.1.21")
    assert policy.subnet_acls[back] == acl
    default = policy.acls[policy.subnet_acls[front]]  # not associated: the VPC's default ACL, allow all
    assert [(e.number, e.allow, e.traffic, e.cidr) for e in default.ingress] == [(100, True, ALL, ANY),
                                                                                 (32767, False, ALL, ANY)]
    assert [(e.number, e.allow, e.traffic) for e in policy.acls[acl].ingress] == [
        (100, True, Traffic("tcp", (5432, 5432))), (200, False, ALL)]
    assert [(e.number, e.traffic) for e in policy.acls[acl].egress] == [(100, Traffic("tcp", (1024, 65535)))]

    ec2.modify_network_interface_attribute(NetworkInterfaceId=other, Groups=[web, db])  # groups change
    ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    policy = N.policies()[vpc]
    assert policy.interfaces[other].groups == tuple(sorted((web, db)))
    assert policy.members(web) == ("10.7.1.20", "10.7.1.21", "10.7.2.20")
    assert [p.traffic for p in policy.groups[web].ingress] == [Traffic("icmp", icmp=(8, -1))]
    nft_check(firewall.render(policy, {front: "brf", back: "brb"}, {eni: "va", other: "vb"}))


def test_the_shipped_prod_network_renders_and_nft_accepts_it(ec2, tmp_path):
    """envs/prod.yaml's network, made by bakery's own network.up, then instances as a launch makes them."""
    facade = EC2(Settings(cloud="aws", region="us-east-1", project_dir=tmp_path))
    env = load_environment(ROOT / "envs", "prod")
    Network(facade, env).up(dry_run=False)
    enis = ec2.describe_network_interfaces()["NetworkInterfaces"]
    by_ip = {e["PrivateIpAddress"]: e for e in enis}
    groups = {g["GroupName"]: g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    subnet_db = by_ip["10.20.3.20"]["SubnetId"]
    db = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, NetworkInterfaces=[
        {"DeviceIndex": 0, "SubnetId": subnet_db, "Groups": [groups["prod-db"]], "PrivateIpAddress": "10.20.3.250"}])
    db_eni = db["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
    vpc = by_ip["10.20.3.20"]["VpcId"]
    policy = N.policies()[vpc]
    assert policy.interfaces[db_eni].groups == (groups["prod-db"],)
    assert policy.interfaces[db_eni].instance_id == db["Instances"][0]["InstanceId"]
    back = by_ip["10.20.3.20"]["NetworkInterfaceId"]
    assert policy.interfaces[back].groups == (groups["prod-app-back"],)
    subnets = {s["SubnetId"]: f"br{n}" for n, s in enumerate(ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"])}
    text = firewall.render(policy, subnets, {db_eni: "vdb", back: "vback"})
    assert chain(text, f"{db_eni}-ingress") == [f"ip saddr @members-{groups['prod-app-back']} tcp dport 5432 return", "drop"]
    acl = policy.subnet_acls[subnet_db]
    assert chain(text, f"{acl}-egress")[-2:] == ['drop comment "200 deny"', 'drop comment "*"']
    nft_check(text)
