"""The internet of one local cloud: a network namespace standing for everything beyond its VPCs.

``bakery-inet-<digest of the data dir>`` (one per local cloud, so two clouds on one host never
share it) holds the local cloud's only way out of this machine, slirp4netns: user-mode NAT, so the
package mirrors are reached from sockets of the host's own with no address, route or firewall rule
added to the host. And it stands for the internet: every public address the local cloud hands out
(instances' public IPs, Elastic IPs, NAT gateways' addresses) is routed from here to its VPC over
that VPC's internet gateway, a veth pair between the two namespaces (``connect``); one handed out
but in use nowhere leads nowhere here (no answer, as on the internet), never out of the machine. ``INTERNET_HOST`` is a host
on this internet: what an instance reaches beyond its VPC can be served from it
(``ip netns exec bakery-inet-... python3 -m http.server --bind 198.51.100.1 80``), and connections
made from this namespace to a public address come from it.

What leaves through slirp is only what a VPC's gateways translated to a public address (then
masqueraded to slirp's own address), and never to private, shared or link-local ranges: an
internet gateway does not carry those. The VPC side of each link (what the VPC's route tables
send there, 1:1 NAT for public addresses, NAT gateways) is gateways.py's ruleset, loaded here
(``load``) so it is loaded again whenever the link is made anew.

State (the namespace's identity, slirp's PID and start time, the links, what is routed) lives in
``data_dir/internet/state.json`` under an flock, like the VPC fabric's: a restarted endpoint finds
slirp and the links again; the kernel's namespaces stay the truth for whether they still exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.local import netns as N
from bakery.local.errors import LocalCloudError
from bakery.local.procs import alive, starttime
from bakery.local.vpcnet import PUBLIC_RANGES, locked_state, short_name

log = logging.getLogger("bakery.local")

#: a host on the local cloud's internet (never handed out as a public address)
INTERNET_HOST = "198.51.100.1"
SLIRP_IF, SLIRP_DNS = "tap0", "10.0.2.3"
#: where a public address handed out but in use nowhere is routed: a veth whose other end is down
#: drops what it is sent (to a neighbour that is always "there"), so a client waits for an answer
#: that never comes, as on the internet (a blackhole route would fail its connect at once)
NOWHERE_IF, NOWHERE_GW, NOWHERE_MAC = "nowhere", "169.254.255.254", "02:00:00:00:00:01"
#: link networks (/30 each: the VPC's end, then this namespace's): link-local, which no VPC may use
#: (EC2 reserves 169.254.0.0/16), below the metadata service's 169.254.169.x
LINKS = ipaddress.IPv4Network("169.254.0.0/17")
#: never sent on through slirp: what no internet gateway carries (slirp's own 10.0.2.0/24 is more
#: specific and stays reachable: its DNS forwarder is 10.0.2.3)
BLOCKED = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16",
           "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")
TABLE = "bakery-internet"
#: the table of the VPC side of a link, in the VPC's namespace (written by gateways.py)
GATEWAYS_TABLE = "bakery-gateways"
#: the package mirrors the local cloud's images use (base.py's apt sources): never handed out
MIRROR_HOSTS = ("deb.debian.org",)
_RESERVED_TTL = 60.0


@dataclass(frozen=True)
class Link:
    """A VPC's internet gateway: a veth pair, ``vpc_if`` in the VPC's namespace at ``vpc_ip``,
    ``inet_if`` here at ``inet_ip``."""

    vpc_id: str
    vpc_if: str
    vpc_ip: str
    inet_if: str
    inet_ip: str


def _ruleset() -> str:
    publics = ", ".join(PUBLIC_RANGES)
    return f"""# the local cloud's internet (bakery/local/internet.py); loaded as one transaction
table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname "{SLIRP_IF}" ip saddr != {{ {publics} }} drop comment "only what a VPC's gateway translated"
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "{SLIRP_IF}" masquerade comment "slirp answers its own address"
\t}}
}}
"""


class Internet:
    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "internet"
        digest = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
        self.netns = f"bakery-inet-{digest}"

    def _state(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        return locked_state(self.dir, {"links": {}, "routes": {}})

    # ---- the namespace ---------------------------------------------------------------------------

    def exists(self) -> bool:
        return N.exists(self.netns)

    def ensure(self) -> None:
        """The namespace, its configuration and slirp running; made again when any is gone (a host
        reboot, a killed slirp). Cheap when all is there: two stats."""
        with self._state() as st:
            inode = N.inode(self.netns)
            if inode is None or st.get("inode") != inode:
                self._create(st)
            slirp = st.get("slirp") or {}
            if not alive(slirp.get("pid", 0), slirp.get("start", 0)):
                self._start_slirp(st)

    def _create(self, st: dict[str, Any]) -> None:
        self._stop_slirp(st)
        N.run(["ip", "netns", "del", self.netns], f"removing a stale {self.netns}", ok=N.GONE)
        st.clear()
        st.update({"links": {}, "routes": {}})
        what = f"creating the local cloud's internet namespace {self.netns}"
        N.run(["ip", "netns", "add", self.netns], what)
        try:
            N.batch(self.netns, ["link set lo up", f"address add {INTERNET_HOST}/32 dev lo",
                                 f"link add {NOWHERE_IF} type veth peer name {NOWHERE_IF}-end",
                                 f"link set {NOWHERE_IF} up",
                                 f"neigh add {NOWHERE_GW} lladdr {NOWHERE_MAC} dev {NOWHERE_IF} nud permanent",
                                 *[f"route add blackhole {cidr}" for cidr in BLOCKED]], what)
            N.sysctl(self.netns, {"net.ipv4.ip_forward": 1}, what)
            N.load_nft(self.netns, _ruleset(), what)
        except LocalCloudError:  # half made: made again from nothing next time
            N.run(["ip", "netns", "del", self.netns], f"undoing {what}", ok=N.GONE)
            raise
        st["inode"] = N.inode(self.netns)

    def _start_slirp(self, st: dict[str, Any]) -> None:
        """slirp4netns, detached: it outlives the endpoint (machines keep their way out while it
        restarts) and goes with ``teardown``."""
        proc, ready = N.start_slirp(self.netns, self.dir / "slirp4netns.log")
        _CHILDREN[proc.pid] = proc
        st["slirp"] = {"pid": proc.pid, "start": starttime(proc.pid)}
        try:
            up = N.wait_slirp(proc, ready)
        finally:
            os.close(ready)
        if not up:
            self._stop_slirp(st)
            raise LocalCloudError(f"slirp4netns did not come up in {self.netns} (log: {self.dir / 'slirp4netns.log'})")

    def _stop_slirp(self, st: dict[str, Any]) -> None:
        slirp = st.pop("slirp", None) or {}
        pid, start = slirp.get("pid", 0), slirp.get("start", 0)
        for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 3.0)):
            if not alive(pid, start):
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while alive(pid, start) and time.monotonic() < deadline:
                if pid in _CHILDREN:
                    _CHILDREN[pid].poll()
                time.sleep(0.005)
        if alive(pid, start):
            raise LocalCloudError(f"slirp4netns {pid} of {self.netns} did not exit")
        proc = _CHILDREN.pop(pid, None)
        if proc is not None:
            proc.poll()

    def teardown(self) -> None:
        """slirp stopped, the namespace deleted (its links go with it), the state forgotten."""
        with self._state() as st:
            self._stop_slirp(st)
            N.run(["ip", "netns", "del", self.netns], f"deleting {self.netns}", ok=N.GONE)
            st.clear()
            st.update({"links": {}, "routes": {}})

    # ---- internet gateways -----------------------------------------------------------------------

    def links(self) -> dict[str, Link]:
        with self._state() as st:
            return {vpc: _link(rec) for vpc, rec in st["links"].items()}

    def connect(self, vpc_id: str, vpc_netns: str) -> Link:
        """The VPC's internet gateway: a veth pair into the VPC's namespace, its default route
        there. Idempotent; made again when either namespace was made anew."""
        with self._state() as st:
            rec = st["links"].get(vpc_id)
            if rec is not None and (rec["vpc_netns"], rec["vpc_inode"]) == (vpc_netns, N.inode(vpc_netns)):
                return _link(rec)
            if rec is not None:
                self._disconnect(st, vpc_id)
            used = {r["index"] for r in st["links"].values()}
            index = next(i for i in range(LINKS.num_addresses // 4) if i not in used)
            net = ipaddress.IPv4Network((int(LINKS.network_address) + 4 * index, 30))
            rec = {"vpc_id": vpc_id, "index": index, "vpc_netns": vpc_netns, "vpc_inode": N.inode(vpc_netns),
                   "vpc_if": short_name("gw", vpc_id), "vpc_ip": str(net[1]), "inet_if": short_name("ig", vpc_id),
                   "inet_ip": str(net[2])}
            what = f"connecting {vpc_id} ({vpc_netns}) to the internet namespace {self.netns}"
            N.run([*N.ip_argv(vpc_netns), "link", "del", rec["vpc_if"]], what, ok=N.GONE)  # a leftover
            N.run([*N.ip_argv(vpc_netns), "link", "add", rec["vpc_if"], "type", "veth", "peer", "name",
                   rec["inet_if"], "netns", self.netns], what)
            try:
                N.batch(vpc_netns, [f"address add {rec['vpc_ip']}/30 dev {rec['vpc_if']}", f"link set {rec['vpc_if']} up",
                                    f"route add default via {rec['inet_ip']} dev {rec['vpc_if']}"], what)
                N.batch(self.netns, [f"address add {rec['inet_ip']}/30 dev {rec['inet_if']}",
                                     f"link set {rec['inet_if']} up"], what)
            except LocalCloudError:
                N.run([*N.ip_argv(vpc_netns), "link", "del", rec["vpc_if"]], f"undoing {what}", ok=N.GONE)
                raise
            st["links"][vpc_id] = rec
            # what was routed over an earlier link of this VPC went with it: route it again
            st["routes"] = {pub: vpc for pub, vpc in st["routes"].items() if vpc != vpc_id}
            return _link(rec)

    def disconnect(self, vpc_id: str) -> None:
        """The VPC loses its internet gateway: the link and its ruleset go."""
        with self._state() as st:
            self._disconnect(st, vpc_id)

    def _disconnect(self, st: dict[str, Any], vpc_id: str) -> None:
        rec = st["links"].pop(vpc_id, None)
        if rec is None:
            return
        what = f"disconnecting {vpc_id} from the internet namespace"
        if N.inode(rec["vpc_netns"]) == rec["vpc_inode"]:
            N.run([*N.ip_argv(rec["vpc_netns"]), "link", "del", rec["vpc_if"]], what, ok=N.GONE)
            N.load_nft(rec["vpc_netns"], f"table ip {GATEWAYS_TABLE}\ndelete table ip {GATEWAYS_TABLE}\n", what)
        st["routes"] = {pub: vpc for pub, vpc in st["routes"].items() if vpc != vpc_id}

    def load(self, vpc_id: str, ruleset: str) -> bool:
        """Load the VPC side of its link (gateways.py's nftables ruleset) into the VPC's namespace,
        unless that text is loaded there already; returns whether it was loaded now."""
        digest = hashlib.sha256(ruleset.encode()).hexdigest()
        with self._state() as st:
            rec = st["links"].get(vpc_id)
            if rec is None:
                raise LocalCloudError(f"{vpc_id} has no internet gateway link to load its gateways into")
            if rec.get("ruleset") == digest:
                return False
            rec.pop("ruleset", None)  # a failed load leaves an unknown ruleset: load it again next time
            N.load_nft(rec["vpc_netns"], ruleset, f"loading the gateways of {vpc_id} into {rec['vpc_netns']}")
            rec["ruleset"] = digest
            return True

    def route(self, routes: dict[str, str | None]) -> None:
        """Route each public address (/32) to its VPC's link, or nowhere (None: handed out but in
        use nowhere); addresses no longer given are no longer routed. Only changes are made."""
        with self._state() as st:
            if N.inode(self.netns) != st.get("inode"):
                return  # not there (yet): ensure() makes it, the next pass routes
            links, before = st["links"], st["routes"]
            lines, after = [], {}
            for pub, vpc in sorted(routes.items()):
                if vpc is not None and vpc not in links:
                    vpc = None
                after[pub] = vpc
                if pub in before and before[pub] == vpc:
                    continue
                if vpc is None:
                    lines.append(f"route replace {pub}/32 via {NOWHERE_GW} dev {NOWHERE_IF} onlink")
                else:
                    rec = links[vpc]
                    lines.append(f"route replace {pub}/32 via {rec['vpc_ip']} dev {rec['inet_if']} src {INTERNET_HOST}")
            gone = [pub for pub in before if pub not in after]
            if lines:
                N.batch(self.netns, lines, f"routing public addresses in {self.netns}")
            for pub in gone:
                N.run([*N.ip_argv(self.netns), "route", "del", f"{pub}/32"], f"unrouting {pub} in {self.netns}",
                      ok=(*N.GONE, "No such process"))
            st["routes"] = after

    def status(self) -> dict[str, Any]:
        """The namespace, whether slirp runs, each VPC's link and what is routed where."""
        with self._state() as st:
            slirp = st.get("slirp") or {}
            return {"netns": self.netns, "exists": self.exists(), "host": INTERNET_HOST,
                    "slirp": alive(slirp.get("pid", 0), slirp.get("start", 0)),
                    "links": {vpc: {k: rec[k] for k in ("vpc_if", "vpc_ip", "inet_if", "inet_ip")}
                              for vpc, rec in st["links"].items()},
                    "routes": dict(st["routes"])}


def _link(rec: dict[str, Any]) -> Link:
    return Link(rec["vpc_id"], rec["vpc_if"], rec["vpc_ip"], rec["inet_if"], rec["inet_ip"])


#: Popen objects of the slirp processes this process started, reaped when they are stopped
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

_reserved: tuple[float, tuple[ipaddress.IPv4Network, ...]] = (0.0, ())
_mirrors: set[ipaddress.IPv4Network] = set()
_lookup: threading.Thread | None = None
_lookup_lock = threading.Lock()


def reserved(wait: float = 0.0) -> tuple[ipaddress.IPv4Network, ...]:
    """What of the documentation ranges is not the local cloud's to hand out: the internet's own
    host, and what this machine really reaches there (a machine may sit on such a network, or reach
    its package mirror at such an address): its own addresses and the networks they are on, its
    gateways (read from the host, never changed; kept for a minute), the mirrors' addresses (looked
    up on a thread of their own, so a slow resolver never holds up the reconciler; ``wait`` is how
    long to wait for the first answer)."""
    global _reserved
    mirrors = _mirror_addresses(wait)
    when, found = _reserved
    if time.monotonic() - when >= _RESERVED_TTL or not found:
        nets = {ipaddress.IPv4Network(f"{INTERNET_HOST}/32")}
        try:
            for link in json.loads(N.run(["ip", "-j", "-4", "addr", "show"], "reading this host's addresses") or "[]"):
                for a in link.get("addr_info", []):
                    nets.add(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
                    nets.add(ipaddress.IPv4Network(f"{a['local']}/32"))
            for route in json.loads(N.run(["ip", "-j", "-4", "route", "show"], "reading this host's routes") or "[]"):
                if route.get("gateway"):
                    nets.add(ipaddress.IPv4Network(f"{route['gateway']}/32"))
        except (LocalCloudError, ValueError, KeyError) as exc:
            log.warning("reading this host's addresses: %s", getattr(exc, "message", exc))
        ranges = [ipaddress.IPv4Network(r) for r in PUBLIC_RANGES]
        found = tuple(n for n in nets if any(n.overlaps(r) for r in ranges))
        _reserved = (time.monotonic(), found)
    return tuple(sorted({*found, *mirrors}, key=lambda n: (n.network_address, n.prefixlen)))


def _mirror_addresses(wait: float) -> set[ipaddress.IPv4Network]:
    global _lookup
    with _lookup_lock:
        if _lookup is None or (not _lookup.is_alive() and not _mirrors):
            _lookup = threading.Thread(target=_look_up_mirrors, name="mirror-lookup", daemon=True)
            _lookup.start()
        lookup = _lookup
    if wait > 0:
        lookup.join(wait)
    return set(_mirrors)


def _look_up_mirrors() -> None:
    for host in MIRROR_HOSTS:
        try:
            for info in socket.getaddrinfo(host, 80, socket.AF_INET, socket.SOCK_STREAM):
                _mirrors.add(ipaddress.IPv4Network(f"{info[4][0]}/32"))
        except OSError:
            pass  # no DNS (yet): asked again at the next call


def is_reserved(address: str, wait: float = 0.0) -> bool:
    ip = ipaddress.IPv4Address(address)
    return any(ip in net for net in reserved(wait))
