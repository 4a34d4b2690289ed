"""The firewall on the real VPC fabric (namespaces, bridges, veths, nftables), no sandboxes: plain
network namespaces stand for instances, policies are written by hand. Needs root and nft. Every
namespace and process a test makes is removed, also when it fails; the host's own namespace is
checked unchanged (its nft ruleset and br_netfilter setting)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bakery.local import firewall
from bakery.local.moto_network import AclEntry, Interface, NetworkAcl, Permission, SecurityGroup, Traffic, VpcPolicy
from tests.local import test_vpcnet

pytestmark = pytest.mark.local

SERVER = (
    "import socket, sys, threading\n"
    "name, socks = sys.argv[1], []\n"
    "for port in sys.argv[2:]:\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('0.0.0.0', int(port))); s.listen(16); socks.append(s)\n"
    "def serve(s):\n"
    "    while True:\n"
    "        c, _ = s.accept(); c.sendall(name.encode()); c.close()\n"
    "for s in socks: threading.Thread(target=serve, args=(s,), daemon=True).start()\n"
    "print('ready', flush=True); threading.Event().wait()\n"
)
PROBE = (
    "import errno, socket, sys\n"
    "ip, port, src, timeout, read = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]\n"
    "s = socket.socket(); s.settimeout(timeout)\n"
    "try:\n"
    "    if src: s.bind((src, 0))\n"
    "    s.connect((ip, port)); print(s.recv(32).decode() if read else 'connected')\n"
    "except ConnectionRefusedError:\n"
    "    print('refused')\n"
    "except socket.timeout:\n"
    "    print('timeout')\n"
    "except OSError as exc:\n"
    "    print(errno.errorcode.get(exc.errno, exc))\n"
)
PORTS = (80, 5432, 5433, 8080, 9000)
ALL, ANY = Traffic("all"), "0.0.0.0/0"
OPEN_ACL = NetworkAcl("acl-open", (AclEntry(100, True, ALL, ANY),), (AclEntry(100, True, ALL, ANY),))


def tcp(port: int) -> Traffic:
    return Traffic("tcp", (port, port))


def reach(ns: str, ip: str, port: int, src: str | None = None, timeout: float = 0.6, read: bool = True) -> str:
    """Connect from inside `ns`: what the server says first (or 'connected' when not `read`), else
    'refused' (a reset), 'timeout' (no answer at all) or the error's name (e.g. EHOSTUNREACH)."""
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-S", "-c", PROBE, ip, str(port), src or "",
                          str(timeout), "1" if read else ""], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def host_view() -> tuple[str, str]:
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    return rules, Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text()


class Lab(test_vpcnet.Lab):
    """test_vpcnet's lab (a private fabric, throwaway netns and servers, all removed by ``close``)
    with a VPC of subnets a (10.77.1.0/24) and b (10.77.2.0/24) and its policy; instances get
    ENIs and a server on PORTS answering their name."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.a, self.b = f"subnet-{self.tag}a", f"subnet-{self.tag}b"
        self.fabric.ensure_subnet(self.vpc, self.a, "10.77.1.0/24")
        self.fabric.ensure_subnet(self.vpc, self.b, "10.77.2.0/24")
        self.policy = VpcPolicy(self.vpc, acls={"acl-open": OPEN_ACL},
                                subnet_acls={self.a: "acl-open", self.b: "acl-open"})

    def serve(self, ns: str, name: str) -> None:
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, name, *map(str, PORTS)],
                                  stdout=subprocess.PIPE, text=True)
        self.servers.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

    def with_enis(self, name: str, *enis: tuple[str, str, str, tuple[str, ...], bool]) -> str:
        """A netns with ENIs (id, subnet, ip, groups, source/dest check) as eth0, eth1, ..."""
        ns = f"bakery-t-{self.tag}-{name}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.netns.append(ns)
        for index, (eni, subnet, addr, groups, check) in enumerate(enis):
            self.fabric.attach(eni, subnet, ns, index, f"02:77:00:00:{len(self.policy.interfaces):02x}:{index:02x}",
                               [addr], check)
            self.policy.interfaces[eni] = Interface(eni, subnet, (addr,), groups, check, instance_id=ns)
        self.serve(ns, name)
        return ns

    def client_serving(self, subnet: str, addr: str, name: str) -> str:
        """A client of the fabric (not an ENI: no groups), with a server too."""
        ns = self.client(subnet, addr)
        self.serve(ns, name)
        return ns

    def groups(self, *groups: SecurityGroup) -> None:
        self.policy.groups.update({g.id: g for g in groups})

    def apply(self) -> list[str]:
        return firewall.apply(self.fabric, {self.vpc: self.policy})


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("the firewall needs root and nftables")
    before = host_view()
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
    assert host_view() == before, "the host's own namespace changed"


def three_tier(lab: Lab, db_egress: tuple[Permission, ...] = (Permission(ALL, cidr=ANY),)) -> tuple[str, str, str]:
    """web (80 from anywhere) and app (8080 from web) in subnet a, db (5432 and 5433 from app) in b."""
    lab.groups(SecurityGroup("sg-web", (Permission(tcp(80), cidr=ANY),), (Permission(ALL, cidr=ANY),)),
               SecurityGroup("sg-app", (Permission(tcp(8080), group="sg-web"),), (Permission(ALL, cidr=ANY),)),
               SecurityGroup("sg-db", (Permission(tcp(5432), group="sg-app"), Permission(tcp(5433), group="sg-app")),
                             db_egress))
    web = lab.with_enis("web", ("eni-web", lab.a, "10.77.1.10", ("sg-web",), True))
    app = lab.with_enis("app", ("eni-app", lab.a, "10.77.1.20", ("sg-app",), True))
    db = lab.with_enis("db", ("eni-db", lab.b, "10.77.2.50", ("sg-db",), True))
    assert lab.apply() == [lab.vpc]
    return web, app, db


def test_groups_are_stateful_per_eni_within_and_across_subnets_and_drop_without_answer(lab: Lab) -> None:
    web, app, db = three_tier(lab, db_egress=(Permission(tcp(443), cidr=ANY),))
    assert reach(web, "10.77.1.20", 8080) == "app"  # same subnet (bridged): web's group may
    assert reach(db, "10.77.1.20", 8080) == "timeout"  # db is not in sg-web: no answer at all
    assert reach(app, "10.77.1.10", 8080) == "timeout"  # web allows 80 only
    assert reach(app, "10.77.1.10", 80) == "web"
    assert reach(app, "10.77.2.50", 5432) == "db"  # across the router; db's reply passes though its
    assert reach(web, "10.77.2.50", 5432) == "timeout"  # egress allows only 443: stateful
    assert reach(db, "10.77.1.10", 80) == "timeout"  # ... but db's own new connections obey it
    lab.servers[2].kill()  # db's server
    lab.servers[2].wait()
    assert reach(app, "10.77.2.50", 5432) == "refused"  # allowed, nobody listens: the host's own reset
    assert reach(web, "10.77.2.50", 5432) == "timeout"  # blocked: EC2 drops, it never resets


def test_group_references_follow_secondary_ips_and_group_changes(lab: Lab) -> None:
    web, app, db = three_tier(lab)
    lab.fabric.add_ips("eni-web", ["10.77.1.11"])  # on the wire, not yet in the policy: anti-spoofing
    assert reach(web, "10.77.1.20", 8080, src="10.77.1.11") == "timeout"
    lab.policy.interfaces["eni-web"] = replace(lab.policy.interfaces["eni-web"], ips=("10.77.1.10", "10.77.1.11"))
    assert lab.apply() == [lab.vpc]
    assert reach(web, "10.77.1.20", 8080, src="10.77.1.11") == "app"  # a member's secondary IP counts
    lab.policy.interfaces["eni-app"] = replace(lab.policy.interfaces["eni-app"], groups=("sg-app", "sg-db"))
    lab.apply()
    assert reach(app, "10.77.2.50", 5432) == "db" and reach(web, "10.77.1.20", 5432) == "timeout"
    lab.policy.interfaces["eni-web"] = replace(lab.policy.interfaces["eni-web"], groups=("sg-app",))
    lab.apply()  # web moves from sg-web to sg-app: app's sg-app no longer lets it in, app's sg-db does (5432)
    assert reach(web, "10.77.1.20", 8080) == "timeout"
    assert reach(web, "10.77.1.20", 5432) == "app"


def test_acls_are_stateless_per_subnet_in_rule_order_and_do_not_filter_within_a_subnet(lab: Lab) -> None:
    web, app, db = three_tier(lab)
    other = lab.with_enis("db2", ("eni-db2", lab.b, "10.77.2.60", ("sg-web",), True))  # 80 from anywhere
    acl = NetworkAcl("acl-db",
                     ingress=(AclEntry(100, True, tcp(5432), "10.77.0.0/16"), AclEntry(200, False, ALL, ANY)),
                     egress=(AclEntry(100, True, Traffic("tcp", (1024, 65535)), "10.77.0.0/16"),
                             AclEntry(200, False, ALL, ANY)))
    lab.policy.acls["acl-db"] = acl
    lab.policy.subnet_acls[lab.b] = "acl-db"
    lab.apply()
    assert reach(app, "10.77.2.50", 5432) == "db"  # in by 100; the reply out by the ephemeral rule
    assert reach(app, "10.77.2.50", 5433) == "timeout"  # the group allows it, the ACL denies it (200)
    assert reach(db, "10.77.2.60", 80) == "db2"  # within the subnet: no ACL on the way
    assert reach(app, "10.77.2.60", 80) == "timeout"  # across its boundary: the ACL denies 80
    assert reach(web, "10.77.1.20", 8080) == "app"  # subnet a keeps its allow-all ACL

    lab.policy.acls["acl-db"] = replace(acl, egress=acl.egress[1:])  # no ephemeral-port rule
    lab.apply()
    assert reach(app, "10.77.2.50", 5432) == "timeout"  # stateless: the reply needs its own rule
    lab.policy.acls["acl-db"] = replace(acl, ingress=(AclEntry(90, False, tcp(5432), "10.77.1.20/32"), *acl.ingress))
    lab.apply()
    assert reach(app, "10.77.2.50", 5432) == "timeout"  # 90 (deny) before 100 (allow)
    lab.policy.acls["acl-db"] = replace(acl, ingress=(AclEntry(190, False, tcp(5432), "10.77.1.20/32"), *acl.ingress))
    lab.apply()
    assert reach(app, "10.77.2.50", 5432) == "db"  # 100 matched first


def test_the_source_dest_check_stops_spoofing_and_off_lets_an_appliance_forward(lab: Lab) -> None:
    lab.groups(SecurityGroup("sg-open", (Permission(ALL, cidr="10.77.0.0/16"),), (Permission(ALL, cidr=ANY),)))
    spoofer = lab.with_enis("spoofer", ("eni-sp", lab.a, "10.77.1.30", ("sg-open",), True))
    edge = lab.with_enis("edge", ("eni-e0", lab.a, "10.77.1.250", ("sg-open",), False),
                        ("eni-e1", lab.b, "10.77.2.250", ("sg-open",), False))
    lab.apply()
    outside = lab.client_serving(lab.a, "10.77.1.100", "out")
    inside = lab.client_serving(lab.b, "10.77.2.100", "in")
    ip(outside, "route", "add", "10.77.2.100/32", "via", "10.77.1.250")  # the appliance is its next hop
    ip(spoofer, "address", "add", "10.77.1.99/24", "dev", "eth0")
    assert reach(spoofer, "10.77.1.100", 80, src="10.77.1.30") == "out"
    assert reach(spoofer, "10.77.1.100", 80, src="10.77.1.99") == "timeout"  # not its IP: dropped at its port
    # reached on eth1 (via the router), the appliance answers on eth0, from eth1's address, and asks
    # ARP for the spoofer with it: an address of its own instance, so the ARP passes
    assert reach(spoofer, "10.77.2.250", 80) == "edge"
    assert reach(outside, "10.77.2.100", 80) == "in"  # through the appliance, the reply via the router
    assert reach(edge, "10.77.2.100", 80) == "in"

    def check(eni: str, on: bool) -> None:
        lab.policy.interfaces[eni] = replace(lab.policy.interfaces[eni], source_dest_check=on)
        lab.fabric.set_source_dest_check(eni, on)
        lab.apply()

    check("eni-e0", True)  # it may no longer receive for others ...
    assert reach(outside, "10.77.2.100", 80) == "timeout"
    check("eni-e0", False)
    check("eni-e1", True)  # ... nor send from others' addresses
    assert reach(outside, "10.77.2.100", 80) == "timeout"
    assert reach(edge, "10.77.2.100", 80) == "in"  # its own traffic still flows
    check("eni-e1", False)
    assert reach(outside, "10.77.2.100", 80) == "in"


def test_a_port_without_a_policy_drops_everything_and_clients_pass(lab: Lab) -> None:
    web, app, db = three_tier(lab)
    stray = lab.with_enis("stray", ("eni-stray", lab.a, "10.77.1.40", (), True))
    del lab.policy.interfaces["eni-stray"]  # attached, but the policy does not know it
    lab.apply()
    client = lab.client_serving(lab.a, "10.77.1.100", "c")
    assert reach(client, "10.77.1.40", 80) == "timeout" and reach(stray, "10.77.1.100", 80) == "timeout"
    assert reach(client, "10.77.1.10", 80) == "web"  # a client is no ENI: only the ENI's groups apply
    assert reach(web, "10.77.1.100", 9000) == "c"


def test_an_unchanged_policy_is_not_loaded_again(lab: Lab, monkeypatch) -> None:
    three_tier(lab)
    with monkeypatch.context() as patched:
        patched.setattr("bakery.local.vpcnet.load_nft", lambda *a: pytest.fail("an unchanged policy ran nft"))
        started = time.monotonic()
        assert lab.apply() == []  # same text: no nft at all
        unchanged = time.monotonic() - started
    lab.policy.groups["sg-web"] = replace(lab.policy.groups["sg-web"], ingress=())
    started = time.monotonic()
    assert lab.apply() == [lab.vpc]
    changed = time.monotonic() - started
    vns = lab.fabric.layout()["vpcs"][lab.vpc]["netns"]
    listed = subprocess.run(["ip", "netns", "exec", vns, "nft", "list", "tables"], capture_output=True, text=True,
                            check=True).stdout
    assert listed.split() == ["table", "bridge", "bakery", "table", "inet", "bakery"]
    print(f"\nfirewall apply: unchanged {unchanged * 1000:.2f} ms, changed (nft -f) {changed * 1000:.1f} ms")
