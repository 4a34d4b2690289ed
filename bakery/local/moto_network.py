"""The networks moto holds, read in the endpoint's process into plain data for the fabric.

For the firewall (``policies``): security groups (ingress and egress permissions, each with one CIDR
or one referenced group), every ENI's private IPs, groups and source/dest check, and the network
ACLs (numbered entries and the subnets each one governs) of every VPC. For the way out
(``egress``): each VPC's attached internet gateway, every subnet's routes (its route table's, or
its VPC's main one's), NAT gateways with their addresses, and which public address (an instance's,
an Elastic IP) stands for which private one. All as moto has them now, whichever client made them. Like
moto_state.py this is the only place that knows moto's internal objects (which are not an API);
reads copy moto's containers first, since request threads change them at the same time. Nothing
here changes moto's state.

What the firewall enforces is what the API shows: an ENI's groups are what DescribeNetworkInterfaces
reports for it, an ACL's entries what DescribeNetworkAcls reports.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

from bakery.local import moto_state as M

#: EC2's protocol spellings (names or numbers as text) -> one name; other numbers stay numbers
_PROTOCOLS = {"-1": "all", "all": "all", "tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp",
              "1": "icmp", "icmpv6": "58"}


@dataclass(frozen=True)
class Traffic:
    """What a rule matches besides addresses."""

    protocol: str                       # "all", "tcp", "udp", "icmp" or an IP protocol number ("47")
    ports: tuple[int, int] | None = None  # tcp/udp destination ports, inclusive; None: all
    icmp: tuple[int, int] | None = None   # icmp (type, code), -1 for any; None: all


@dataclass(frozen=True)
class Permission:
    """One allow rule of a security group: traffic to (egress) or from (ingress) one CIDR or the
    private IPs of every ENI in one group."""

    traffic: Traffic
    cidr: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class SecurityGroup:
    id: str
    ingress: tuple[Permission, ...]
    egress: tuple[Permission, ...]


@dataclass(frozen=True)
class Interface:
    """An ENI as the firewall sees it (attached or not: its IPs count for group references)."""

    id: str
    subnet_id: str
    ips: tuple[str, ...]  # primary first
    groups: tuple[str, ...]
    source_dest_check: bool
    instance_id: str | None = None  # the instance it is attached to


@dataclass(frozen=True)
class AclEntry:
    number: int
    allow: bool
    traffic: Traffic
    cidr: str  # the peer: source for ingress entries, destination for egress ones


@dataclass(frozen=True)
class NetworkAcl:
    id: str
    ingress: tuple[AclEntry, ...]  # by rule number
    egress: tuple[AclEntry, ...]


@dataclass(frozen=True)
class VpcPolicy:
    vpc_id: str
    groups: dict[str, SecurityGroup] = field(default_factory=dict)
    interfaces: dict[str, Interface] = field(default_factory=dict)
    acls: dict[str, NetworkAcl] = field(default_factory=dict)
    subnet_acls: dict[str, str] = field(default_factory=dict)  # subnet id -> its ACL's id

    def members(self, group_id: str) -> tuple[str, ...]:
        """Every private IP (secondary ones too) of the VPC's ENIs in the group."""
        return tuple(sorted({ip for eni in self.interfaces.values() if group_id in eni.groups for ip in eni.ips},
                            key=ipaddress.IPv4Address))

    def instance_ips(self, eni: Interface) -> tuple[str, ...]:
        """The private IPs of every ENI attached to the same instance as `eni` (its own first)."""
        others = {ip for other in self.interfaces.values()
                  if eni.instance_id and other.instance_id == eni.instance_id for ip in other.ips}
        return (*eni.ips, *sorted(others - set(eni.ips), key=ipaddress.IPv4Address))


def policies() -> dict[str, VpcPolicy]:
    """Every VPC's network policy, by VPC id, across moto's backends."""
    groups: dict[str, dict[str, SecurityGroup]] = defaultdict(dict)
    enis: dict[str, dict[str, Interface]] = defaultdict(dict)
    acls: dict[str, dict[str, NetworkAcl]] = defaultdict(dict)
    subnet_acls: dict[str, dict[str, str]] = defaultdict(dict)
    for backend in M.backends():
        for vpc_id, by_id in list(backend.groups.items()):
            for group in list(by_id.values()):
                groups[vpc_id or ""][group.id] = SecurityGroup(group.id, _permissions(group.ingress_rules),
                                                               _permissions(group.egress_rules))
        for eni in list(backend.enis.values()):
            iface = _interface(eni)
            if iface is not None:
                enis[eni.subnet.vpc_id][eni.id] = iface
        defaults = {}
        for acl in list(backend.network_acls.values()):
            acls[acl.vpc_id][acl.id] = _acl(acl)
            if acl.default:
                defaults[acl.vpc_id] = acl.id
            for assoc in list(acl._associations.values()):
                if assoc.subnet_id:
                    subnet_acls[acl.vpc_id][assoc.subnet_id] = acl.id
        for subnet in _subnets(backend):  # EC2: a subnet without an association has its VPC's default ACL
            if subnet.id not in subnet_acls[subnet.vpc_id] and subnet.vpc_id in defaults:
                subnet_acls[subnet.vpc_id][subnet.id] = defaults[subnet.vpc_id]
    vpcs = set(groups) | set(enis) | set(acls)
    vpcs.discard("")
    return {v: VpcPolicy(v, groups.get(v, {}), enis.get(v, {}), acls.get(v, {}), subnet_acls.get(v, {}))
            for v in sorted(vpcs)}


def _subnets(backend) -> list:
    return [s for by_az in list(backend.subnets.values()) for s in list(by_az.values())]


def _interface(eni) -> Interface | None:
    subnet = eni.subnet
    if subnet is None or not getattr(subnet, "vpc_id", None):
        return None
    ips = [a["PrivateIpAddress"] for a in list(eni.private_ip_addresses) if a.get("PrivateIpAddress")]
    ips = sorted(set(ips), key=lambda ip: (ip != eni.private_ip_address, ips.index(ip)))
    groups = sorted({getattr(g, "id", g) for g in list(eni.group_set) if g})
    instance = eni.instance
    return Interface(eni.id, subnet.id, tuple(ips), tuple(groups), bool(eni.source_dest_check),
                     instance.id if instance is not None else None)


def _permissions(rules) -> tuple[Permission, ...]:
    out = []
    for rule in list(rules):
        traffic = _traffic(rule.ip_protocol, rule.from_port, rule.to_port, rule.from_port, rule.to_port)
        cidr = _cidr((rule.ip_range or {}).get("CidrIp"))
        group = (rule.source_group or {}).get("GroupId")
        if traffic is not None and (cidr or group):  # IPv6 ranges and prefix lists match nothing here
            out.append(Permission(traffic, cidr, group))
    return tuple(out)


def _acl(acl) -> NetworkAcl:
    entries: dict[bool, list[AclEntry]] = {False: [], True: []}
    for e in list(acl.network_acl_entries):
        traffic = _traffic(e.protocol, e.port_range_from, e.port_range_to, e.icmp_type, e.icmp_code)
        cidr = _cidr(e.cidr_block)
        if traffic is None or cidr is None:
            continue  # IPv6 entries: the VPC fabric carries IPv4 only
        entries[str(e.egress).lower() == "true"].append(
            AclEntry(int(e.rule_number), str(e.rule_action).lower() == "allow", traffic, cidr))
    return NetworkAcl(acl.id, *(tuple(sorted(entries[egress], key=lambda e: e.number)) for egress in (False, True)))


def _traffic(protocol, low, high, icmp_type, icmp_code) -> Traffic | None:
    """EC2's protocol and ports (or ICMP type and code) as Traffic; None for a protocol unknown here."""
    name = str(protocol).strip().lower() if protocol is not None else "-1"
    name = _PROTOCOLS.get(name, name)
    if name == "all":
        return Traffic("all")
    if name in ("tcp", "udp"):
        lo, hi = _int(low), _int(high)
        if lo is None or lo < 0 or (lo, hi) == (0, 65535):
            return Traffic(name)
        return Traffic(name, ports=(lo, hi if hi is not None and hi >= lo else lo))
    if name == "icmp":
        kind, code = _int(icmp_type), _int(icmp_code)
        if kind is None or kind < 0:
            return Traffic("icmp")
        return Traffic("icmp", icmp=(kind, -1 if code is None or code < 0 else code))
    if name.isdigit() and 0 <= int(name) <= 255:
        return Traffic(str(int(name)))
    return None


def _int(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _cidr(value) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.IPv4Network(str(value), strict=False))
    except ValueError:
        return None


# ---- the way out: internet gateways, route tables, NAT gateways, public addresses ----------------


@dataclass(frozen=True)
class Route:
    """One route of a subnet's route table (IPv4, not the VPC's local one)."""

    destination: str  # a CIDR
    target: str       # igw-..., nat-..., or whatever else EC2 routes to (eni-..., pcx-..., vgw-...)


@dataclass(frozen=True)
class NatGateway:
    id: str
    subnet_id: str
    public_ip: str | None  # its Elastic IP; None for a private NAT gateway
    available: bool


@dataclass(frozen=True)
class Egress:
    vpc_id: str
    internet_gateway: str | None                      # the one attached to the VPC
    routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)  # every subnet of the VPC
    nat_gateways: dict[str, NatGateway] = field(default_factory=dict)
    public_ips: dict[str, tuple[str, str]] = field(default_factory=dict)  # public -> (private IP, subnet)


def egress() -> dict[str, Egress]:
    """Every VPC's way out, by VPC id, across moto's backends."""
    out: dict[str, Egress] = {}
    for backend in M.backends():
        igws = {igw.vpc.id: igw.id for igw in list(backend.internet_gateways.values()) if igw.vpc is not None}
        tables = _route_tables(backend)
        nats: dict[str, dict[str, NatGateway]] = defaultdict(dict)
        nat_enis = set()
        for nat in list(backend.nat_gateways.values()):
            nat_enis.add(nat._eni.id)
            public = next((a.get("publicIp") for a in list(nat.address_set) if a.get("publicIp")), None)
            nats[nat.vpc_id][nat.id] = NatGateway(nat.id, nat.subnet_id, public if nat.connectivity_type != "private"
                                                  else None, nat.state == "available")
        public: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
        elastic = {a.public_ip for a in list(backend.addresses)}
        for address in list(backend.addresses):
            eni = address.eni
            if eni is not None and address.public_ip and eni.id not in nat_enis and eni.subnet is not None:
                private = address.private_ip_address or eni.private_ip_address
                public[eni.subnet.vpc_id][address.public_ip] = (private, eni.subnet.id)
        for eni in list(backend.enis.values()):  # an instance's own public IP, on its primary private one
            if eni.public_ip and eni.public_ip not in elastic and eni.id not in nat_enis and eni.subnet is not None:
                mine = public[eni.subnet.vpc_id]
                if eni.public_ip not in mine and eni.private_ip_address not in {p for p, _ in mine.values()}:
                    mine[eni.public_ip] = (eni.private_ip_address, eni.subnet.id)
        for vpc_id in list(backend.vpcs):
            routes = {subnet.id: tables.get(subnet.id, tables.get(("main", vpc_id), ()))
                      for subnet in _subnets(backend) if subnet.vpc_id == vpc_id}
            out[vpc_id] = Egress(vpc_id, igws.get(vpc_id), routes, nats.get(vpc_id, {}), public.get(vpc_id, {}))
    return out


def _route_tables(backend) -> dict:
    """subnet id -> the routes of its explicitly associated table; ("main", vpc id) -> the main table's."""
    out: dict = {}
    for table in list(backend.route_tables.values()):
        routes = tuple(r for r in (_route(route) for route in list(table._routes.values())) if r is not None)
        if table.main_association_id is not None:
            out[("main", table.vpc_id)] = routes
        for target in list(table._associations.values()):
            if str(target).startswith("subnet-"):
                out[target] = routes
    return out


def _route(route) -> Route | None:
    destination = _cidr(route.destination_cidr_block)
    if route.local or destination is None:
        return None  # the VPC's own (its namespace routes it), or IPv6 / prefix lists (not carried)
    for target in (route.gateway, route.nat_gateway, route.interface, route.instance, route.vpc_pcx,
                   route.transit_gateway, route.egress_only_igw, route.carrier_gateway):
        if target is not None:
            return Route(destination, target.id)
    return Route(destination, route.vpc_endpoint_id or "blackhole")

