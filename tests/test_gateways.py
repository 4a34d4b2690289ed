"""The local cloud's view of a VPC's way out, without machines: an environment's internet gateway,
NAT gateways and route tables (made by `network.up` against moto in process) read back from moto
(moto_network.egress), and written as the VPC namespace's nftables ruleset (gateways.render,
checked by `nft -c` in a throwaway namespace: nothing is loaded)."""

from __future__ import annotations

import ipaddress

from bakery.cloud.tags import network_filters
from bakery.config.environment import load_environment
from bakery.local import gateways
from bakery.local import moto_network as N
from bakery.local.moto_network import Egress, NatGateway, Route
from bakery.network import Network
from tests.test_firewall import nft_check
from tests.test_network_gateways import ENV
from tests.test_network_unit import cloud, write_env  # noqa: F401 - fixtures


# ---- moto's state as the local cloud reads it ----------------------------------------------------

def test_the_way_out_is_read_from_moto(cloud, write_env):
    env = write_env(ENV)
    ids = {(a.kind, a.name): a.id for a in Network(cloud, env).up(dry_run=False)}
    public, private, isolated = (ids[("subnet", n)] for n in ("public", "private", "isolated"))
    web = cloud.client.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, NetworkInterfaces=[
        {"DeviceIndex": 0, "SubnetId": public, "PrivateIpAddress": "10.50.1.10", "AssociatePublicIpAddress": True}])
    own_public = web["Instances"][0]["NetworkInterfaces"][0]["Association"]["PublicIp"]
    vpc = ids[("vpc", "vpc")]
    out = N.egress()[vpc]
    igw, nat = ids[("internet-gateway", "igw")], ids[("nat-gateway", "nat")]
    assert out.internet_gateway == igw
    assert out.routes == {public: (Route("0.0.0.0/0", igw),), private: (Route("0.0.0.0/0", nat),), isolated: ()}
    nat_ip = cloud.client.describe_addresses(AllocationIds=[ids[("elastic-ip", "nat")]])["Addresses"][0]["PublicIp"]
    assert out.nat_gateways == {nat: NatGateway(nat, public, nat_ip, True)}
    assert out.public_ips == {own_public: ("10.50.1.10", public)}  # the NAT gateway's is not an instance's

    eni = web["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
    front = ids[("elastic-ip", "front")]
    cloud.client.associate_address(AllocationId=front, NetworkInterfaceId=eni)
    front_ip = cloud.client.describe_addresses(AllocationIds=[front])["Addresses"][0]["PublicIp"]
    assert N.egress()[vpc].public_ips == {front_ip: ("10.50.1.10", public)}  # the EIP took the primary's place
    # the default VPC has no internet gateway in moto itself (the local endpoint gives it one)
    default = next(v["VpcId"] for v in cloud.client.describe_vpcs()["Vpcs"] if v["IsDefault"])
    assert N.egress()[default].internet_gateway is None


# ---- the VPC namespace's ruleset ------------------------------------------------------------------

def egress(**routes: tuple[Route, ...]) -> Egress:
    nats = {"nat-ok": NatGateway("nat-ok", "subnet-pub", "203.0.113.9", True),
            "nat-dark": NatGateway("nat-dark", "subnet-priv", "203.0.113.10", True)}
    tables = {"subnet-pub": (Route("0.0.0.0/0", "igw-1"),), **routes}
    return Egress("vpc-1", "igw-1", tables, nats, {"198.51.100.7": ("10.0.1.7", "subnet-pub"),
                                                   "198.51.100.8": ("10.0.2.8", "subnet-priv")})


def rules(text: str, chain: str) -> list[str]:
    body = text.split(f"\tchain {chain} {{\n", 1)[1].split("\n\t}", 1)[0]
    return [line.strip().split(" comment ")[0] for line in body.splitlines()[1:]]


def test_routes_are_rules_longest_destination_first_and_what_no_route_covers_drops():
    text, carried = gateways.render(egress(**{"subnet-priv": (Route("0.0.0.0/0", "nat-ok"),
                                                              Route("192.0.2.0/24", "igw-1"),
                                                              Route("198.51.100.0/24", "pcx-1"))}),
                                    {"subnet-pub": "brpub", "subnet-priv": "brpriv", "subnet-none": "brnone"}, "gw0")
    here = 'iifname "brpriv" oifname "gw0"'
    assert rules(text, "forward") == [
        f"{here} ip daddr 192.0.2.0/24 ip saddr != @public-sources drop",
        f"{here} ip daddr 192.0.2.0/24 accept",
        f"{here} ip daddr 198.51.100.0/24 drop",  # a peering: not carried here, and not to the NAT either
        f"{here} accept",  # the NAT gateway
        'iifname "brpub" oifname "gw0" ip saddr != @public-sources drop',
        'iifname "brpub" oifname "gw0" accept',
        'oifname "gw0" drop']  # subnet-none has no route: nothing of it leaves
    assert rules(text, "postrouting") == [
        f"{here} ip daddr 192.0.2.0/24 snat ip to ip saddr map @to-public",
        f"{here} snat ip to 203.0.113.9",
        'iifname "brpub" oifname "gw0" snat ip to ip saddr map @to-public']
    assert rules(text, "prerouting") == ['iifname "gw0" dnat ip to ip daddr map @to-private']
    # 1:1 NAT for public addresses in subnets with a route to the internet gateway, both ways
    assert "elements = { 10.0.1.7 : 198.51.100.7, 10.0.2.8 : 198.51.100.8 }" in text
    # and the NAT gateways' (nat-dark's subnet reaches 192.0.2.0/24 through the internet gateway)
    assert carried == {"198.51.100.7", "198.51.100.8", "203.0.113.9", "203.0.113.10"}
    nft_check(text)


def test_a_nat_gateway_whose_subnet_does_not_reach_the_internet_carries_nothing():
    text, carried = gateways.render(egress(**{"subnet-priv": (Route("0.0.0.0/0", "nat-dark"),),
                                              "subnet-x": (Route("0.0.0.0/0", "nat-ok"),)}),
                                    {"subnet-priv": "brpriv", "subnet-x": "brx"}, "gw0")
    assert rules(text, "forward") == ['iifname "brpriv" oifname "gw0" drop', 'iifname "brx" oifname "gw0" accept',
                                      'oifname "gw0" drop']
    assert carried == {"203.0.113.9"}  # no instance address: neither subnet routes to the internet gateway
    assert "203.0.113.10" not in text and rules(text, "prerouting") == []
    nft_check(text)


def test_a_vpc_without_public_addresses_renders_empty_sets_that_nft_accepts():
    text, carried = gateways.render(Egress("vpc-2", "igw-2", {"subnet-a": ()}), {"subnet-a": "bra"}, "gw1")
    assert carried == set() and rules(text, "forward") == ['oifname "gw1" drop']
    nft_check(text)


def test_rendering_is_deterministic():
    routes = {"subnet-priv": (Route("0.0.0.0/0", "nat-ok"), Route("192.0.2.0/24", "igw-1"))}
    subnets = {"subnet-pub": "brpub", "subnet-priv": "brpriv"}
    assert gateways.render(egress(**routes), subnets, "gw0") == gateways.render(egress(**routes), dict(
        reversed(list(subnets.items()))), "gw0")
    assert all(ipaddress.IPv4Address(ip) for ip in gateways.render(egress(**routes), subnets, "gw0")[1])


def test_the_shipped_prod_declares_a_public_subnet_and_a_nat_gateway_for_the_others(cloud):
    from tests.support import ROOT

    env = load_environment(ROOT / "envs", "prod")
    ids = {(a.kind, a.name): a.id for a in Network(cloud, env).up(dry_run=False)}
    out = N.egress()[ids[("vpc", "vpc")]]
    nat = ids[("nat-gateway", "nat")]
    assert {name: out.routes[ids[("subnet", name)]] for name in ("web", "app", "db")} == {
        "web": (Route("0.0.0.0/0", ids[("internet-gateway", "igw")]),),
        "app": (Route("0.0.0.0/0", nat),), "db": (Route("0.0.0.0/0", nat),)}
    assert cloud.client.describe_nat_gateways(Filter=network_filters("prod", "nat", "nat"))["NatGateways"]
    text, _ = gateways.render(out, {ids[("subnet", n)]: f"br{n}" for n in ("web", "app", "db")}, "gwprod")
    nft_check(text)
