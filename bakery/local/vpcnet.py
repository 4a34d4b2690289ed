"""EC2 networking for the local cloud: VPCs, subnets and ENIs as real Linux interfaces.

Each VPC is a network namespace ``bakery-vpc-<id>`` holding one bridge per subnet. A bridge carries
the subnet's first host address (x.x.x.1, the VPC router as on AWS) and the namespace forwards
between its bridges. An ENI is a veth pair created in the VPC namespace: one end is a bridge port,
the other is created directly inside the instance's namespace as ``eth<device index>`` with the
ENI's MAC and private IPs. MAC and IPs move with the ENI, so on failover a client on the subnet
keeps its neighbour entry; only the bridge relearns the port. The host's own namespace is never
touched. What exists is recorded in ``state_dir/vpcnet/state.json`` (under an flock) so a later
process can detach or move what an earlier one attached; the kernel stays the truth for whether an
interface still exists (deleting an instance's netns takes its veth with it).

An instance's default route is its primary ENI's subnet router, and a reply from another ENI's
address leaves by that ENI (a routing rule per address, as EC2's images set up for secondary
interfaces), so where traffic goes beyond the VPC is the VPC's business: it drops what it has no
route for (silently, as EC2's router does), and internet.py and gateways.py give it the way out
that its internet gateway, route tables and NAT gateways declare.

A VPC's namespace also holds its firewall (security groups, network ACLs, the source/dest check):
firewall.py writes the nftables ruleset from the policy and this layout, ``apply_firewall`` loads
it in one transaction, and the state file keeps the digest of what is loaded, so an unchanged
ruleset is not loaded again. And it is where the VPC's link-local services answer (linklocal.py:
metadata, DNS, the AWS APIs): every ENI gives its instance a route to their addresses through its
subnet's router, and the endpoint listens there on the VPC namespace's loopback, so nothing of
them is inside an instance.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bakery.local.errors import LocalCloudError
from bakery.local.linklocal import SERVICE_IPS
from bakery.local.netns import GONE as _GONE
from bakery.local.netns import NETNS_DIR
from bakery.local.netns import batch as _batch
from bakery.local.netns import exists as _ns_exists
from bakery.local.netns import ip_argv as _ip_argv
from bakery.local.netns import links as _links
from bakery.local.netns import load_nft
from bakery.local.netns import path as _ns_path
from bakery.local.netns import run as _run
from bakery.local.netns import sysctl as _sysctl

#: routes to sibling subnets via the router lose to a directly connected subnet (metric 0)
ROUTE_METRIC = 100
#: the VPC namespace's last resort: a blackhole default route below any real one
BLACKHOLE_METRIC = 65535
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
#: an ENI's bridge port is named ENI_PORT_PREFIX + a digest (clients' ports start otherwise)
ENI_PORT_PREFIX = "v"
#: public addresses (instances', Elastic IPs): the documentation ranges (RFC 5737), which reach
#: nothing outside this machine
PUBLIC_RANGES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
#: in an instance: the routing table of the ENI at device index N is SOURCE_TABLE + N (N >= 1), its
#: addresses' rules have this priority, and MAIN_FIRST keeps the main table's specific routes first
SOURCE_TABLE, SOURCE_RULE, MAIN_FIRST = 100, 200, 100


def short_name(prefix: str, ident: str) -> str:
    """Stable interface name below IFNAMSIZ (16): EC2 ids are too long to use as they are."""
    return prefix + hashlib.sha1(ident.encode()).hexdigest()[: 15 - len(prefix)]


def _mac(ident: str) -> str:
    """Fixed, locally administered bridge MAC: otherwise the bridge takes its ports' lowest MAC
    and the router's address would change under the clients whenever an ENI moves."""
    h = hashlib.sha1(ident.encode()).hexdigest()
    return "02:" + ":".join(h[i : i + 2] for i in range(0, 10, 2))


@contextlib.contextmanager
def locked_state(directory: Path, empty: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``directory/state.json`` (``empty`` when there is none) under an exclusive lock, written back
    atomically if changed; saved even on error, since the kernel objects made before the error
    exist and must stay findable by a later teardown."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = directory / "state.json"
        try:
            before = path.read_text()
        except FileNotFoundError:
            before = json.dumps(empty)
        state = json.loads(before)
        try:
            yield state
        finally:
            after = json.dumps(state, indent=1) + "\n"
            if after != before:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(after)
                os.replace(tmp, path)


class VpcFabric:
    """One network namespace per VPC (``bakery-vpc-<id>``) holding a Linux bridge per subnet and
    acting as the VPC router. Instance namespaces are passed by name (``bakery-<instance>``, as
    ``Sandbox.netns``) or by path (``Sandbox.netns_path``, ``/proc/<pid>/ns/net``)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "vpcnet"

    def _state(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        return locked_state(self.dir, {"vpcs": {}, "subnets": {}, "attachments": {}, "clients": {}})

    @staticmethod
    def _vpc_netns(vpc_id: str) -> str:
        short = vpc_id.removeprefix("vpc-")
        if not _NAME_RE.match(short):
            raise LocalCloudError(f"invalid VPC id {vpc_id!r}: expected vpc-<lowercase letters/digits>")
        return f"bakery-vpc-{short}"

    @staticmethod
    def _subnet(st: dict[str, Any], subnet_id: str) -> tuple[dict[str, Any], str, ipaddress.IPv4Network]:
        """(record, VPC netns, network) of a known subnet."""
        sub = st["subnets"].get(subnet_id)
        if sub is None:
            raise LocalCloudError(f"unknown subnet {subnet_id}: create it with ensure_subnet(vpc, subnet, cidr) first")
        return sub, st["vpcs"][sub["vpc"]]["netns"], ipaddress.IPv4Network(sub["cidr"])

    @staticmethod
    def _check_ips(ips: list[str], net: ipaddress.IPv4Network, who: str) -> None:
        for ip in ips:
            try:
                addr = ipaddress.IPv4Address(ip)
            except ValueError:
                raise LocalCloudError(f"{who}: {ip!r} is not an IPv4 address") from None
            if addr not in net or int(addr) - int(net.network_address) < 4 or addr == net.broadcast_address:
                raise LocalCloudError(f"{who}: {ip} is not in {net} or is one of the 5 addresses EC2 reserves")

    def ensure_subnet(self, vpc_id: str, subnet_id: str, cidr: str) -> None:
        """Create (idempotently) the VPC netns and the subnet's bridge with the router address;
        instances already in the VPC get a route to the new subnet."""
        vns = self._vpc_netns(vpc_id)
        try:
            net = ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            raise LocalCloudError(f"subnet {subnet_id}: bad CIDR {cidr!r}: {exc}") from None
        if net.prefixlen > 28:
            raise LocalCloudError(f"subnet {subnet_id}: {cidr} is smaller than a /28, which EC2 does not allow")
        with self._state() as st:
            sub = st["subnets"].get(subnet_id)
            if sub and (sub["vpc"], sub["cidr"]) != (vpc_id, str(net)):
                raise LocalCloudError(f"subnet {subnet_id} is already {sub['cidr']} in {sub['vpc']}; "
                                      f"cannot make it {net} in {vpc_id}")
            for oid, other in st["subnets"].items():
                if oid != subnet_id and other["vpc"] == vpc_id and net.overlaps(ipaddress.IPv4Network(other["cidr"])):
                    raise LocalCloudError(f"subnet {subnet_id} ({net}) overlaps {oid} ({other['cidr']}) in {vpc_id}")
            created = not _ns_exists(vns)
            if created:
                _run(["ip", "netns", "add", vns], f"creating the network namespace of {vpc_id}")
                # what the VPC has no route for is dropped, not answered with an ICMP error; an
                # internet gateway's default route (internet.py) comes before it
                _batch(vns, ["link set lo up", f"route add blackhole default metric {BLACKHOLE_METRIC}"],
                       f"setting up {vns}")
            rec = st["vpcs"].setdefault(vpc_id, {})
            rec["netns"] = vns
            if created:
                rec.pop("firewall", None)  # a new namespace has no ruleset loaded
            bridge, router = short_name("br", subnet_id), str(next(net.hosts()))
            if bridge not in _links(vns):
                mac = _mac(subnet_id)
                _batch(vns, ["link set lo up", f"link add {bridge} address {mac} type bridge forward_delay 0",
                             f"address add {router}/{net.prefixlen} dev {bridge}", f"link set {bridge} up"],
                       f"creating the bridge of {subnet_id} in {vns}")
                _sysctl(vns, {"net.ipv4.ip_forward": 1}, f"enabling routing in {vns}")
            new = subnet_id not in st["subnets"]
            st["subnets"][subnet_id] = {"vpc": vpc_id, "cidr": str(net), "bridge": bridge, "router": router}
            for eni, att in st["attachments"].items() if new else ():
                att_sub = st["subnets"][att["subnet"]]
                if att_sub["vpc"] == vpc_id and att["subnet"] != subnet_id and _ns_exists(att["netns"]):
                    _batch(att["netns"], [self._route(str(net), att_sub["router"], att)],
                           f"routing {eni} in {att['netns']} to new subnet {subnet_id}")

    @staticmethod
    def _route(cidr: str, router: str, att: dict[str, Any]) -> str:
        return f"route add {cidr} via {router} dev {att['ifname']} metric {ROUTE_METRIC + att['device_index']}"

    def attach(self, eni_id: str, subnet_id: str, netns_path: str, device_index: int, mac: str,
               ips: list[str], source_dest_check: bool = True) -> str:
        """Plug the ENI into the instance netns (name or path) as ``eth<device_index>`` with its MAC
        and IPs (first = primary); returns that interface name. Idempotent for the same instance;
        an ENI attached to another live instance is an error (detach first, as on EC2)."""
        ns, ifname, veth = str(netns_path), f"eth{device_index}", short_name(ENI_PORT_PREFIX, eni_id)
        if ns.startswith(f"{NETNS_DIR}/") and "/" not in ns[len(f"{NETNS_DIR}/"):]:
            ns = ns[len(f"{NETNS_DIR}/"):]  # one spelling per netns, so idempotency and errors match
        if not ips:
            raise LocalCloudError(f"attaching {eni_id}: no private IP given")
        with self._state() as st:
            sub, vns, net = self._subnet(st, subnet_id)
            self._check_ips(ips, net, f"attaching {eni_id} to {subnet_id}")
            cur = st["attachments"].get(eni_id)
            if cur is not None:
                if _ns_exists(cur["netns"]) and cur["veth"] in _links(self._subnet(st, cur["subnet"])[1]):
                    if (cur["netns"], cur["device_index"], cur["subnet"]) == (ns, device_index, subnet_id):
                        return cur["ifname"]
                    raise LocalCloudError(f"{eni_id} is attached to {cur['netns']} as {cur['ifname']}; "
                                          f"detach it before attaching it to {ns}")
                self._detach(st, eni_id)  # its instance is gone: the record (and any lingering veth) is stale
            what = f"attaching {eni_id} to {ns} as {ifname}"
            _run([*_ip_argv(vns), "link", "add", veth, "type", "veth", "peer", "name", ifname,
                  "address", mac, "netns", ns], what)
            att = {"subnet": subnet_id, "netns": ns, "ifname": ifname, "veth": veth, "mac": mac,
                   "ips": list(ips), "device_index": device_index, "source_dest_check": source_dest_check}
            try:
                # An instance with two ENIs in one subnet must not answer ARP for one ENI's address
                # from the other (Linux does by default: "ARP flux"): a neighbour would send that
                # address's traffic to the wrong MAC, which that ENI's groups and check then judge.
                # On EC2 the VPC answers ARP per ENI; here each interface answers for its own addresses.
                _sysctl(ns, {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2}, what)
                _batch(vns, [f"link set {veth} master {sub['bridge']} up", *self._neighbours(att, sub, ips)], what)
                others = [s["cidr"] for k, s in st["subnets"].items() if s["vpc"] == sub["vpc"] and k != subnet_id]
                _batch(ns, [*[f"address add {ip}/{net.prefixlen} dev {ifname}" for ip in ips],
                            f"link set {ifname} up", *[self._route(c, sub["router"], att) for c in others],
                            *[self._route(f"{ip}/32", sub["router"], att) for ip in SERVICE_IPS],
                            self._default(sub, att)], what)
                self._source_rules(att, ips, "add")
                if not source_dest_check:
                    self._apply_sdc(st, att, False)
            except LocalCloudError:
                _run([*_ip_argv(vns), "link", "del", veth], f"undoing {what}", ok=_GONE)
                raise
            st["attachments"][eni_id] = att
            return ifname

    @staticmethod
    def _default(sub: dict[str, Any], att: dict[str, Any]) -> str:
        """The default route through the ENI's subnet router: the main table's for the primary ENI,
        its own table's for another (used by its addresses' rules)."""
        index = att["device_index"]
        where = f"metric {ROUTE_METRIC}" if index == 0 else f"table {SOURCE_TABLE + index}"
        return f"route add default via {sub['router']} dev {att['ifname']} {where}"

    @staticmethod
    def _source_rules(att: dict[str, Any], ips: list[str], op: str) -> None:
        """Traffic from a secondary ENI's addresses (a reply to what reached the instance there)
        leaves by that ENI, not by the primary one, whose source/dest check would drop it. The main
        table's specific routes (the subnets, the metadata service) still come first: only the
        default route depends on the source. Nothing for the primary ENI."""
        index = att["device_index"]
        if index == 0 or not _ns_exists(att["netns"]):
            return
        what = f"{'routing' if op == 'add' else 'unrouting'} {att['ifname']}'s addresses in {att['netns']}"
        tolerate = ("File exists",) if op == "add" else ()
        lines = [f"rule add priority {MAIN_FIRST} lookup main suppress_prefixlength 0"] if op == "add" else []
        lines += [f"rule {op} priority {SOURCE_RULE} from {ip} lookup {SOURCE_TABLE + index}" for ip in ips]
        for line in lines:  # one at a time: a rule already there must not stop the others
            _run([*_ip_argv(att["netns"]), *line.split()], what, ok=(*_GONE, *tolerate))

    @staticmethod
    def _neighbours(att: dict[str, Any], sub: dict[str, Any], ips: list[str], op: str = "replace") -> list[str]:
        """The router knows each ENI address's MAC, as EC2's network does, rather than learning it by
        ARP: an address EC2 hands to a new ENI moments after the last one let it go must not be
        sent to the old MAC while a stale cache entry lasts (the metadata service's answers went there)."""
        tail = f" lladdr {att['mac']} dev {sub['bridge']} nud permanent" if op == "replace" else f" dev {sub['bridge']}"
        return [f"neigh {op} {ip}{tail}" for ip in ips]

    def _apply_sdc(self, st: dict[str, Any], att: dict[str, Any], check: bool) -> None:
        """Check off (NAT/firewall appliances) lets the instance forward and accept asymmetric
        traffic; on restores the defaults unless another ENI of the instance still has it off."""
        what = f"setting source/dest check {'on' if check else 'off'} for {att['ifname']} in {att['netns']}"
        if not check:
            _sysctl(att["netns"], {"net.ipv4.ip_forward": 1, f"net.ipv4.conf.{att['ifname']}.rp_filter": 0}, what)
            return
        forward = any(not a["source_dest_check"] for a in st["attachments"].values()
                      if a["netns"] == att["netns"] and a is not att)
        _run(["nsenter", f"--net={_ns_path(att['netns'])}", "sh", "-c", f"sysctl -qw net.ipv4.ip_forward={int(forward)} "
              f"net.ipv4.conf.{att['ifname']}.rp_filter=$(sysctl -n net.ipv4.conf.default.rp_filter)"], what)

    def set_source_dest_check(self, eni_id: str, enabled: bool) -> None:
        """ModifyNetworkInterfaceAttribute SourceDestCheck on an attached ENI (else only recorded
        by EC2; pass it to ``attach``)."""
        with self._state() as st:
            att = st["attachments"].get(eni_id)
            if att is not None and att["source_dest_check"] != enabled:
                att["source_dest_check"] = enabled
                self._apply_sdc(st, att, enabled)

    def detach(self, eni_id: str) -> None:
        """Delete the ENI's veth (both ends go). Idempotent; fine if the instance netns is gone."""
        with self._state() as st:
            self._detach(st, eni_id)

    def _detach(self, st: dict[str, Any], eni_id: str) -> None:
        att = st["attachments"].get(eni_id)
        if att is not None:
            sub, vns, _ = self._subnet(st, att["subnet"])
            what = f"detaching {eni_id} from {att['netns']}"
            _run([*_ip_argv(vns), "link", "del", att["veth"]], what, ok=_GONE)
            self._source_rules(att, att["ips"], "del")
            taken = {ip for e, a in st["attachments"].items() if e != eni_id and a["subnet"] == att["subnet"]
                     for ip in a["ips"]}  # an address already on a newer ENI keeps that one's entry
            for line in self._neighbours(att, sub, [ip for ip in att["ips"] if ip not in taken], "del"):
                _run([*_ip_argv(vns), *line.split()], what, ok=(*_GONE, "No such file or directory"))
            del st["attachments"][eni_id]

    def add_ips(self, eni_id: str, ips: list[str]) -> None:
        """AssignPrivateIpAddresses: add secondary IPs to an attached ENI. An unattached ENI has
        nothing to change here: ``attach`` gets all its IPs."""
        with self._state() as st:
            att = st["attachments"].get(eni_id)
            if att is None:
                return
            _, _, net = self._subnet(st, att["subnet"])
            new = [ip for ip in ips if ip not in att["ips"]]
            self._check_ips(new, net, f"adding IPs to {eni_id}")
            what = f"adding IPs to {eni_id} ({att['ifname']} in {att['netns']})"
            _batch(att["netns"], [f"address add {ip}/{net.prefixlen} dev {att['ifname']}" for ip in new], what)
            sub, vns, _ = self._subnet(st, att["subnet"])
            _batch(vns, self._neighbours(att, sub, new), what)
            self._source_rules(att, new, "add")
            att["ips"] += new

    def client(self, subnet_id: str, ip: str, name: str) -> str:
        """A client host netns ``bakery-cl-<name>`` on the subnet (default route via the VPC router),
        to measure from inside the VPC; returns the netns name."""
        return self._client(subnet_id, ip, name)

    def probe_host(self, subnet_id: str) -> str:
        """The subnet's probe host (a client netns): what a check made from inside the subnet but
        outside any instance starts from, subject to the target's ingress rules only. It sits at
        the subnet's fourth address, which EC2 reserves "for future use" in every subnet, so no
        ENI ever holds it."""
        return self._client(subnet_id, None, "probe-" + subnet_id.removeprefix("subnet-"))

    def _client(self, subnet_id: str, ip: str | None, name: str) -> str:
        """`ip` None: the subnet's fourth address (the probe host's)."""
        if not _NAME_RE.match(name):
            raise LocalCloudError(f"invalid client name {name!r}: use lowercase letters, digits or '-'")
        cns, veth = f"bakery-cl-{name}", short_name("c", name)
        with self._state() as st:
            sub, vns, net = self._subnet(st, subnet_id)
            if ip is None:
                ip = str(net.network_address + 3)
            else:
                self._check_ips([ip], net, f"client {name}")
            if name in st["clients"]:
                if (st["clients"][name]["subnet"], st["clients"][name]["ip"]) == (subnet_id, ip) and _ns_exists(cns):
                    return cns
                raise LocalCloudError(f"client {name} already exists in another subnet or with another IP; "
                                      f"remove_client({name!r}) first")
            what = f"creating client {cns} at {ip} in {subnet_id}"
            _run(["ip", "netns", "add", cns], what)
            st["clients"][name] = {"subnet": subnet_id, "ip": ip, "netns": cns, "veth": veth}
            try:
                _run([*_ip_argv(vns), "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", cns], what)
                _batch(vns, [f"link set {veth} master {sub['bridge']} up"], what)
                _batch(cns, ["link set lo up", f"address add {ip}/{net.prefixlen} dev eth0", "link set eth0 up",
                             f"route add default via {sub['router']}"], what)
            except LocalCloudError:
                self._remove_client(st, name)
                raise
            return cns

    def remove_client(self, name: str) -> None:
        with self._state() as st:
            self._remove_client(st, name)

    def _remove_client(self, st: dict[str, Any], name: str) -> None:
        cl = st["clients"].get(name)
        if cl is not None:
            vns = self._subnet(st, cl["subnet"])[1]
            _run([*_ip_argv(vns), "link", "del", cl["veth"]], f"removing client {name}", ok=_GONE)
            _run(["ip", "netns", "del", cl["netns"]], f"removing client {name}", ok=_GONE)
            del st["clients"][name]

    def teardown(self, vpc_id: str | None = None) -> None:
        """Remove clients, ENI veths and the VPC netns, for one VPC or all; idempotent."""
        with self._state() as st:
            for vpc in [vpc_id] if vpc_id else list(st["vpcs"]):
                subnets = {sid for sid, s in st["subnets"].items() if s["vpc"] == vpc}
                for name in [n for n, c in st["clients"].items() if c["subnet"] in subnets]:
                    self._remove_client(st, name)
                for eni in [e for e, a in st["attachments"].items() if a["subnet"] in subnets]:
                    self._detach(st, eni)
                vns = self._vpc_netns(vpc)
                _run(["ip", "netns", "del", vns], f"deleting {vns}", ok=_GONE)
                for sid in subnets:
                    del st["subnets"][sid]
                st["vpcs"].pop(vpc, None)

    def layout(self) -> dict[str, Any]:
        """What is recorded (VPCs with their netns, subnets with their bridges, ENI attachments with
        their bridge ports, clients), read from the state file alone: no kernel call, cheap enough
        for every reconcile pass."""
        with self._state() as st:
            return copy.deepcopy(st)

    def apply_firewall(self, vpc_id: str, ruleset: str) -> bool:
        """Load an nftables ruleset (text for ``nft -f``, one transaction) into the VPC's namespace,
        with bridged IPv4 passed through the ``inet`` hooks there (br_netfilter, per namespace), so
        conntrack sees traffic between ports of one bridge too. Nothing is done when the same text
        is already loaded; returns whether it was loaded now."""
        digest = hashlib.sha256(ruleset.encode()).hexdigest()
        with self._state() as st:
            rec = st["vpcs"].get(vpc_id)
            if rec is None:
                raise LocalCloudError(f"no VPC namespace for {vpc_id}: it has no subnet on the fabric")
            if rec.get("firewall") == digest and _ns_exists(rec["netns"]):
                return False
            what = f"loading the firewall of {vpc_id} into {rec['netns']}"
            if "firewall" not in rec:  # the first load into this namespace (or the first since one failed)
                _sysctl(rec["netns"], {"net.bridge.bridge-nf-call-iptables": 1}, what)
            rec.pop("firewall", None)  # a failed load leaves an unknown ruleset: load it again next time
            load_nft(rec["netns"], ruleset, what)
            rec["firewall"] = digest
            return True

    def status(self) -> dict[str, Any]:
        """The recorded VPCs, subnets (bridge, cidr, router), attachments (eni -> instance netns,
        ifname, mac, ips) and clients, each with ``live``: whether its interface still exists."""
        with self._state() as st:
            out = copy.deepcopy(st)
        links = {vpc: _links(v["netns"]) for vpc, v in out["vpcs"].items()}
        for sub in out["subnets"].values():
            sub["live"] = sub["bridge"] in links[sub["vpc"]]
        for rec in [*out["attachments"].values(), *out["clients"].values()]:
            rec["live"] = rec["veth"] in links[out["subnets"][rec["subnet"]]["vpc"]]
        return out
