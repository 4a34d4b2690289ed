"""An environment's way out of its VPC: its internet gateway, NAT gateways and route tables,
validated at load time and made by `network.up` against moto in process."""

from __future__ import annotations

import pytest

from bakery.errors import ConfigError
from bakery.network import Network, status
from tests.test_network_unit import cloud, write_env  # noqa: F401 - fixtures

ENV = """\
network:
  vpc: {cidr: 10.50.0.0/16}
  subnets:
    public: {cidr: 10.50.1.0/24, az: us-east-1a, public: true}
    private: {cidr: 10.50.2.0/24, az: us-east-1a}
    isolated: {cidr: 10.50.3.0/24, az: us-east-1a}
  elastic_ips: {front: {}, nat: {}}
  internet_gateway: true
  nat_gateways:
    nat: {subnet: public, elastic_ip: nat}
  route_tables:
    public:
      subnets: [public]
      routes: [{cidr: 0.0.0.0/0, internet_gateway: true}]
    private:
      subnets: [private]
      routes: [{cidr: 0.0.0.0/0, nat_gateway: nat}]
tiers:
  web:
    image: {ami: ami-0123456789abcdef0}
    interfaces:
      - {device_index: 0, subnet: public, private_ip: 10.50.1.10, elastic_ip: {name: front}}
"""


# ---- what an environment may declare --------------------------------------------------------------

@pytest.mark.parametrize("edit, problem", [
    (("  internet_gateway: true\n", ""), "route_tables.public.routes[0]: a route to the internet gateway needs "
                                       "network.internet_gateway: true"),
    (("nat_gateway: nat}", "nat_gateway: other}"), "route_tables.private.routes[0]: unknown NAT gateway 'other'"),
    (("subnets: [private]", "subnets: [private, public]"),
     "route_tables.private.subnets: 'public' is already in route table 'public' (a subnet has one route table)"),
    (("subnets: [private]", "subnets: [nowhere]"), "route_tables.private.subnets: unknown subnet 'nowhere'"),
    (("nat: {subnet: public,", "nat: {subnet: isolated,"),
     "nat_gateways.nat.subnet: subnet 'isolated' has no route 0.0.0.0/0 to the internet gateway, so a NAT "
     "gateway there reaches nothing (put it in a public subnet)"),
    (("elastic_ip: nat}", "elastic_ip: spare}"), "nat_gateways.nat.elastic_ip: 'spare' is not in network.elastic_ips"),
    (("routes: [{cidr: 0.0.0.0/0, nat_gateway: nat}]", "routes: [{cidr: 10.50.9.0/24, nat_gateway: nat}]"),
     "route_tables.private.routes[0]: 10.50.9.0/24 is inside the VPC's 10.50.0.0/16, which its local route carries"),
    (("routes: [{cidr: 0.0.0.0/0, nat_gateway: nat}]",
      "routes: [{cidr: 0.0.0.0/0, nat_gateway: nat}, {cidr: 0.0.0.0/0, internet_gateway: true}]"),
     "route_tables.private: routes: more than one route to 0.0.0.0/0"),
    (("{cidr: 0.0.0.0/0, nat_gateway: nat}", "{cidr: 0.0.0.0/0, nat_gateway: nat, internet_gateway: true}"),
     "give exactly one of internet_gateway, nat_gateway (got internet_gateway, nat_gateway)"),
    (("elastic_ip: {name: front}", "elastic_ip: {name: nat}"),
     "tiers.web.interfaces (device 0).elastic_ip: 'nat' is NAT gateway 'nat''s address"),
], ids=["igw-route-without-igw", "unknown-nat", "subnet-in-two-tables", "unknown-subnet", "nat-in-a-private-subnet",
        "nat-eip-undeclared", "route-inside-the-vpc", "duplicate-destination", "two-targets", "nat-eip-on-an-interface"])
def test_a_way_out_that_could_not_work_is_refused_at_load_time(write_env, edit, problem):
    assert edit[0] in ENV
    with pytest.raises(ConfigError) as caught:
        write_env(ENV.replace(*edit, 1))
    assert problem in caught.value.message and "\n" not in caught.value.message


def test_network_up_makes_the_gateways_and_route_tables_once(cloud, write_env):
    env = write_env(ENV)
    made = Network(cloud, env).up(dry_run=False)
    kinds = [(a.kind, a.name, a.status) for a in made]
    assert [k for k in kinds if k[0] in ("internet-gateway", "nat-gateway", "route-table")] == [
        ("internet-gateway", "igw", "created"), ("nat-gateway", "nat", "created"),
        ("route-table", "public", "created"), ("route-table", "private", "created")]
    ids = {(a.kind, a.name): a.id for a in made}
    vpc = ids[("vpc", "vpc")]
    igw = cloud.client.describe_internet_gateways(InternetGatewayIds=[ids[("internet-gateway", "igw")]])[
        "InternetGateways"][0]
    assert igw["Attachments"] == [{"State": "available", "VpcId": vpc}]
    nat = cloud.client.describe_nat_gateways(NatGatewayIds=[ids[("nat-gateway", "nat")]])["NatGateways"][0]
    assert nat["SubnetId"] == ids[("subnet", "public")] and nat["State"] == "available"
    assert nat["NatGatewayAddresses"][0]["AllocationId"] == ids[("elastic-ip", "nat")]
    tables = {t["RouteTableId"]: t for t in cloud.client.describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"]}
    public, private = tables[ids[("route-table", "public")]], tables[ids[("route-table", "private")]]
    assert [(r["DestinationCidrBlock"], r.get("GatewayId")) for r in public["Routes"]] == [
        ("10.50.0.0/16", "local"), ("0.0.0.0/0", igw["InternetGatewayId"])]
    assert [(r["DestinationCidrBlock"], r.get("NatGatewayId")) for r in private["Routes"]][1] == (
        "0.0.0.0/0", nat["NatGatewayId"])
    assert [a["SubnetId"] for a in public["Associations"]] == [ids[("subnet", "public")]]
    assert [a["SubnetId"] for a in private["Associations"]] == [ids[("subnet", "private")]]

    again = Network(cloud, env).up(dry_run=False)
    assert {a.status for a in again} == {"exists"} and [a.id for a in again] == [a.id for a in made]
    # the NAT gateway's Elastic IP is in use: no warning that it idles
    warned = status(cloud, env)["warnings"]
    assert len(warned) == 1 and warned[0].startswith("Elastic IP front (")
    assert [e for e in status(cloud, env)["elastic_ips"] if e["name"] == "nat"][0]["nat_gateway"] == nat["NatGatewayId"]


def test_a_dry_run_plans_the_gateways_and_route_tables_and_makes_nothing(cloud, write_env):
    plan = Network(cloud, write_env(ENV)).up(dry_run=True)
    assert [(a.kind, a.name, a.status) for a in plan if a.kind in ("internet-gateway", "nat-gateway", "route-table")] \
        == [("internet-gateway", "igw", "create"), ("nat-gateway", "nat", "create"), ("route-table", "public", "create"),
            ("route-table", "private", "create")]
    assert cloud.client.describe_nat_gateways()["NatGateways"] == []


def test_an_existing_vpcs_attached_internet_gateway_is_used(cloud, write_env):
    vpc = cloud.client.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    igw = cloud.client.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    cloud.client.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    env = write_env(ENV.replace("vpc: {cidr: 10.50.0.0/16}", f"vpc: {{id: {vpc}}}"))
    made = {(a.kind, a.name): a for a in Network(cloud, env).up(dry_run=False)}
    assert (made[("internet-gateway", "igw")].status, made[("internet-gateway", "igw")].id) == ("exists", igw)
