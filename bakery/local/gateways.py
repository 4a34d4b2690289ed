"""Internet gateways, route tables, NAT gateways and public addresses, on the VPC fabric.

A VPC with an internet gateway attached is connected to the local cloud's internet namespace
(internet.py: a link, the VPC namespace's default route through it). What may use that link is
this module's nftables table in the VPC's namespace, written from moto's state
(moto_network.Egress) and the fabric's layout, and loaded only when its text changed:

- route tables: traffic an instance sends beyond the VPC leaves its subnet's bridge for the link;
  the ``forward`` chain lets it through only as its subnet's route table says (its explicitly
  associated table, else the VPC's main one), longest destination first as EC2 matches routes:
  to the internet gateway only from an address that has a public one, to a NAT gateway that
  works; a route to anything the local cloud does not carry (an ENI, a peering, a VPN) drops, and
  so does what no route covers (EC2's router answers it with nothing);
- 1:1 NAT for public addresses (an instance's public IP, an Elastic IP on one of an ENI's private
  IPs), as an internet gateway does: the private source becomes the public one on the way out
  (``postrouting``), the public destination the private one on the way in (``prerouting``, before
  the forward hook, so the firewall's groups and ACLs see the private address and the ENI it
  belongs to);
- NAT gateways: what a subnet routes to one leaves with the NAT gateway's Elastic IP as its
  source, if the NAT gateway's own subnet routes that destination to the internet gateway (as a
  NAT gateway in a private subnet reaches nothing). Its traffic goes from the instance's subnet
  straight to the link: the instance's subnet's ACL applies, the NAT gateway's subnet's does not.

The internet namespace routes every public address in use here to this VPC's link (and one handed
out but unused to nowhere); replies follow conntrack. Every public address (and so everything in
this ruleset) is an address of the documentation ranges (vpcnet.PUBLIC_RANGES).
"""

from __future__ import annotations

import ipaddress
import logging

from bakery.local.errors import LocalCloudError
from bakery.local.internet import GATEWAYS_TABLE, Internet, is_reserved
from bakery.local.moto_network import Egress, Route
from bakery.local.vpcnet import VpcFabric

log = logging.getLogger("bakery.local")


def render(egress: Egress, subnets: dict[str, str], link: str) -> tuple[str, set[str]]:
    """(the VPC namespace's ruleset for its link ``link``, the public addresses it carries: those
    of its 1:1 NAT and its working NAT gateways'). ``subnets`` maps the VPC's subnets on the fabric to their
    bridges. Deterministic: the same input gives the same text."""
    nats = {n.id: n for n in egress.nat_gateways.values() if n.available and n.public_ip}
    public = {pub: private for pub, (private, subnet) in sorted(egress.public_ips.items())
              if subnet in subnets and any(_to_igw(egress, r) for r in egress.routes.get(subnet, ()))}
    forward, postrouting = [], []
    for subnet in sorted(subnets):
        here = f'iifname "{subnets[subnet]}" oifname "{link}"'
        for route in sorted(egress.routes.get(subnet, ()), key=_most_specific):
            to = "" if route.destination == "0.0.0.0/0" else f" ip daddr {route.destination}"
            note = f'comment "{subnet}: {route.destination} -> {route.target}'
            if _to_igw(egress, route):
                forward += [f'{here}{to} ip saddr != @public-sources drop {note}: no public address"',
                            f'{here}{to} accept {note}"']
                postrouting.append(f'{here}{to} snat ip to ip saddr map @to-public {note}"')
            elif route.target in nats and _nat_reaches(egress, nats[route.target].subnet_id, route.destination):
                forward.append(f'{here}{to} accept {note}"')
                postrouting.append(f'{here}{to} snat ip to {nats[route.target].public_ip} {note}"')
            else:
                forward.append(f'{here}{to} drop {note}: not carried by the local cloud"')
    forward.append(f'oifname "{link}" drop comment "no route"')
    prerouting = [f'iifname "{link}" dnat ip to ip daddr map @to-private'] if public else []
    out = [f"# the gateways of {egress.vpc_id} ({egress.internet_gateway}) (bakery/local/gateways.py); "
           "loaded as one transaction",
           f"table ip {GATEWAYS_TABLE}", f"delete table ip {GATEWAYS_TABLE}", f"table ip {GATEWAYS_TABLE} {{"]
    out += _map("public-sources", "ipv4_addr", sorted(set(public.values()), key=ipaddress.IPv4Address))
    out += _map("to-public", "ipv4_addr : ipv4_addr", [f"{private} : {pub}" for pub, private in public.items()])
    out += _map("to-private", "ipv4_addr : ipv4_addr", [f"{pub} : {private}" for pub, private in public.items()])
    out += _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", prerouting)
    out += _chain("forward", "type filter hook forward priority filter; policy accept;", forward)
    out += _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", postrouting)
    out.append("}")
    carried = set(public) | {n.public_ip for n in nats.values()
                             if any(_to_igw(egress, r) for r in egress.routes.get(n.subnet_id, ()))}
    return "\n".join(out) + "\n", carried


def apply(fabric: VpcFabric, internet: Internet, egress: dict[str, Egress], handed_out: set[str]) -> list[str]:
    """Bring the internet namespace and every VPC's gateways in line with moto: VPCs on the fabric
    with an internet gateway are connected (the namespace made when the first one is), others
    not; every public address handed out is routed to its VPC or, unused, to nowhere. Returns the
    VPCs whose ruleset was loaded now."""
    vpcs = {vpc: rec["netns"] for vpc, rec in fabric.layout()["vpcs"].items()
            if vpc in egress and egress[vpc].internet_gateway}
    if not vpcs and not internet.exists():
        return []
    try:
        internet.ensure()
        _reported.pop(internet.netns, None)
    except LocalCloudError as exc:
        if _reported.get(internet.netns) == exc.message:  # once per distinct failure, not every pass
            return []
        _reported[internet.netns] = exc.message
        raise
    for vpc in set(internet.links()) - set(vpcs):
        internet.disconnect(vpc)
    layout = fabric.layout()
    loaded, failures, routes = [], [], {}
    for vpc, netns in sorted(vpcs.items()):
        subnets = {sid: s["bridge"] for sid, s in layout["subnets"].items() if s["vpc"] == vpc}
        try:
            link = internet.connect(vpc, netns)
            ruleset, carried = render(egress[vpc], subnets, link.vpc_if)
            if internet.load(vpc, ruleset):
                loaded.append(vpc)
                log.info("gateways of %s loaded (%d public addresses)", vpc, len(carried))
            routes.update({pub: vpc for pub in carried})
            _reported.pop(vpc, None)
        except LocalCloudError as exc:
            if _reported.get(vpc) != exc.message:  # once per distinct failure, not every pass
                _reported[vpc] = exc.message
                failures.append(exc.message)
    for pub in handed_out - set(routes):
        routes[pub] = None
    for pub in [p for p in routes if is_reserved(p)]:
        if pub not in _warned:
            _warned.add(pub)
            log.error("public address %s is one this machine reaches for real (its network, its gateway or a "
                      "package mirror): it is not routed; release it and allocate another", pub)
        del routes[pub]
    internet.route(routes)
    if failures:
        raise LocalCloudError("; ".join(failures))
    return loaded


_reported: dict[str, str] = {}
_warned: set[str] = set()


def _to_igw(egress: Egress, route: Route) -> bool:
    return egress.internet_gateway is not None and route.target == egress.internet_gateway


def _nat_reaches(egress: Egress, nat_subnet: str, destination: str) -> bool:
    """Whether a NAT gateway in `nat_subnet` reaches `destination`: its own subnet's most specific
    route covering it goes to the internet gateway."""
    dest = ipaddress.IPv4Network(destination)
    covering = [r for r in egress.routes.get(nat_subnet, ()) if dest.subnet_of(ipaddress.IPv4Network(r.destination))]
    return bool(covering) and _to_igw(egress, min(covering, key=_most_specific))


def _most_specific(route: Route) -> tuple[int, str]:
    net = ipaddress.IPv4Network(route.destination)
    return -net.prefixlen, route.destination


def _map(name: str, kind: str, elements: list[str]) -> list[str]:
    word = "set" if ":" not in kind else "map"
    return [f"\t{word} {name} {{", f"\t\ttype {kind}", *([f"\t\telements = {{ {', '.join(elements)} }}"]
                                                        if elements else []), "\t}", ""]


def _chain(name: str, head: str, rules: list[str]) -> list[str]:
    return [f"\tchain {name} {{", f"\t\t{head}", *(f"\t\t{rule}" for rule in rules), "\t}", ""]
