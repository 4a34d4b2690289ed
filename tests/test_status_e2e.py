"""`invoke status --env` (issue 17 item 8) against a moto server: an instance still on an older image
after a rebake is marked, and a security group rule added by hand with the AWS CLI is drift."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bakery.bake.run import bake
from bakery.cloud.connect import open_cloud
from bakery.config.environment import load_environment
from bakery.launch.run import launch
from bakery.launch.status import fleet_status
from bakery.network import Network
from bakery.progress import Reporter
from tests.matrix import cli_environment
from tests.support import ROOT, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

ENV = """\
network:
  vpc: {cidr: 10.40.0.0/16}
  internet_gateway: true
  subnets:
    web-a: {cidr: 10.40.1.0/24, az: us-east-1a, public: true}
  security_groups:
    web-sg: {ingress: [{protocol: tcp, ports: 80, cidr: 0.0.0.0/0}]}
tiers:
  web:
    image: {recipe: web}
    count: 1
    interfaces:
      - {device_index: 0, subnet: web-a, security_groups: [web-sg]}
"""


def test_status_marks_an_instance_on_an_older_image_and_a_rule_added_by_hand(moto, tmp_path, builder_host,
                                                                              settings_for):
    recipes, envs = tmp_path / "recipes", tmp_path / "envs"
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - {name: hi, shell: echo one}\n"))
    envs.mkdir()
    (envs / "prod.yaml").write_text(ENV)
    settings = settings_for(recipes, envs_dir=envs)
    first = bake(settings, "web", {}, report=Reporter(quiet=True))
    env = load_environment(envs, "prod")
    ec2 = open_cloud(settings).ec2
    Network(ec2, env).up(dry_run=False)
    launch(settings, "prod", report=Reporter(quiet=True))

    now = fleet_status(ec2, env)
    (row,) = now["instances"]
    assert (row["tier"], row["image"], row["outdated"], now["drift"]) == ("web", first.ami_id, False, [])

    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - {name: hi, shell: echo two}\n"))
    second = bake(settings, "web", {}, report=Reporter(quiet=True))
    (row,) = fleet_status(ec2, env)["instances"]
    assert row["outdated"] and row["newest_image"] == second.ami_id and row["image"] == first.ami_id

    group = next(g["GroupId"] for g in ec2.security_groups() if g["GroupName"] == "prod-web-sg")
    by_hand = subprocess.run(["aws", "ec2", "authorize-security-group-ingress", "--group-id", group,
                              "--protocol", "tcp", "--port", "22", "--cidr", "203.0.113.7/32",
                              "--endpoint-url", moto.url, "--region", "us-east-1"],
                             capture_output=True, text=True, timeout=60)
    assert by_hand.returncode == 0, by_hand.stderr
    drift = fleet_status(ec2, env)["drift"]
    assert [d["problem"] for d in drift] == ["ingress tcp 22 from 203.0.113.7/32: live, not in prod.yaml"]

    shown = subprocess.run([sys.executable, "-m", "invoke", "status", "--env", "prod"], cwd=ROOT,
                           env=cli_environment(moto.url, tmp_path), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"OUTDATED: newer {second.ami_id}" in shown.stdout
    assert f"drift: security-group web-sg {group}: ingress tcp 22 from 203.0.113.7/32: live, not in prod.yaml" \
        in shown.stdout


def test_a_group_with_declared_egress_allows_that_egress_and_nothing_more(moto, tmp_path, settings_for):
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "prod.yaml").write_text(ENV.replace(
        "web-sg: {ingress: [{protocol: tcp, ports: 80, cidr: 0.0.0.0/0}]}",
        "web-sg: {ingress: [{protocol: tcp, ports: 80, cidr: 0.0.0.0/0}], "
        "egress: [{protocol: tcp, ports: 443, cidr: 10.40.0.0/16}]}"))
    settings = settings_for(tmp_path / "recipes", envs_dir=envs)
    env = load_environment(envs, "prod")
    ec2 = open_cloud(settings).ec2
    Network(ec2, env).up(dry_run=False)
    group = next(g for g in ec2.security_groups() if g["GroupName"] == "prod-web-sg")
    assert [(p["IpProtocol"], p.get("FromPort"), [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissionsEgress"]] == [("tcp", 443, ["10.40.0.0/16"])]  # EC2's allow-all is gone
    assert fleet_status(ec2, env)["drift"] == []
    Network(ec2, env).up(dry_run=False)  # again: nothing to revoke, nothing fails


def test_a_network_acl_entry_added_by_hand_is_drift(moto, tmp_path, settings_for):
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "prod.yaml").write_text(ENV.replace("tiers:\n", "  network_acls:\n    web:\n      subnets: [web-a]\n"
                                                "      ingress: [{rule: 100, action: allow, protocol: tcp, ports: 443, "
                                                "cidr: 0.0.0.0/0}]\n      egress: [{rule: 100, action: allow, "
                                                "protocol: all, cidr: 0.0.0.0/0}]\ntiers:\n"))
    settings = settings_for(tmp_path / "recipes", envs_dir=envs)
    env = load_environment(envs, "prod")
    ec2 = open_cloud(settings).ec2
    Network(ec2, env).up(dry_run=False)
    assert fleet_status(ec2, env)["drift"] == []
    acl = next(a["NetworkAclId"] for a in moto.client().describe_network_acls()["NetworkAcls"]
               if any(t["Key"] == "bakery:network-name" and t["Value"] == "acl/web" for t in a.get("Tags", [])))
    moto.client().create_network_acl_entry(NetworkAclId=acl, RuleNumber=90, Protocol="6", RuleAction="allow",
                                           Egress=False, CidrBlock="198.51.100.0/24", PortRange={"From": 22, "To": 22})
    assert [d["problem"] for d in fleet_status(ec2, env)["drift"]] == [
        "ingress rule 90 allow tcp 22 198.51.100.0/24: live, not in prod.yaml"]

    ours = next(a for a in moto.client().describe_network_acls()["NetworkAcls"] if a["NetworkAclId"] == acl)
    (association,) = ours["Associations"]
    default = next(a["NetworkAclId"] for a in moto.client().describe_network_acls()["NetworkAcls"]
                   if a["VpcId"] == ours["VpcId"] and a["IsDefault"])
    moto.client().replace_network_acl_association(AssociationId=association["NetworkAclAssociationId"],
                                                  NetworkAclId=default)  # the subnet moved to another ACL by hand
    assert f"subnet web-a ({association['SubnetId']}) has another ACL" in [
        d["problem"] for d in fleet_status(ec2, env)["drift"]]


def test_a_route_added_by_hand_is_drift(moto, tmp_path, settings_for):
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "prod.yaml").write_text(ENV.replace("tiers:\n", "  route_tables:\n    public:\n      subnets: [web-a]\n"
                                                "      routes: [{cidr: 0.0.0.0/0, internet_gateway: true}]\ntiers:\n"))
    settings = settings_for(tmp_path / "recipes", envs_dir=envs)
    env = load_environment(envs, "prod")
    ec2 = open_cloud(settings).ec2
    Network(ec2, env).up(dry_run=False)
    assert fleet_status(ec2, env)["drift"] == []
    c = moto.client()
    table = next(t for t in c.describe_route_tables()["RouteTables"]
                 if any(x["Key"] == "bakery:network-name" and x["Value"] == "rtb/public" for x in t.get("Tags", [])))
    igw = next(r["GatewayId"] for r in table["Routes"] if r["DestinationCidrBlock"] == "0.0.0.0/0")
    c.create_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="192.0.2.0/24", GatewayId=igw)
    assert [d["problem"] for d in fleet_status(ec2, env)["drift"]] == [
        f"route 192.0.2.0/24 -> {igw}: live, not in prod.yaml"]
