"""VPC fabric with real namespaces, bridges and veths: ENI failover keeps IPs and MAC, routing
between subnets goes through the VPC router. Needs root. "Instances" are plain named netns;
every netns, veth and process a test makes is removed, also when it fails."""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bakery.local.errors import LocalCloudError
from bakery.local.vpcnet import VpcFabric

pytestmark = pytest.mark.local

REPO = Path(__file__).resolve().parents[2]
PORT = 7777
MAC = "02:00:00:00:aa:01"
SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(16); print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(sys.argv[2].encode()); c.close()\n"
)
_libc = ctypes.CDLL(None, use_errno=True)


def ip_json(ns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", "-n", ns, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def all_netns() -> set[str]:
    return {entry["name"] for entry in json.loads(subprocess.run(
        ["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout or "[]")}


def ask(ns: str, ip: str, port: int = PORT, timeout: float = 0.5) -> str | None:
    """Connect from inside ``ns`` (socket made by a thread that setns'd; the test stays put)."""
    made: dict[str, object] = {}

    def make() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET, this thread only
                raise OSError(ctypes.get_errno(), "setns")
            made["sock"] = socket.socket()
        except BaseException as exc:
            made["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    sock: socket.socket = made["sock"]  # type: ignore[assignment]
    sock.settimeout(timeout)
    try:
        sock.connect((ip, port))
        return sock.recv(16).decode()
    except OSError:
        return None
    finally:
        sock.close()


class Lab:
    """Fabric + throwaway instance netns + reply servers, all removed by ``close``."""

    def __init__(self, state_dir: Path) -> None:
        self.fabric = VpcFabric(state_dir)
        self.tag = secrets.token_hex(4)
        self.vpc = f"vpc-t{self.tag}"
        self.netns: list[str] = []
        self.servers: list[subprocess.Popen[str]] = []

    def instance(self, reply: str) -> str:
        name = f"bakery-t-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.netns.append(name)
        server = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", SERVER, str(PORT), reply],
                                  stdout=subprocess.PIPE, text=True)
        self.servers.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        return name

    def client(self, subnet: str, ip: str) -> str:
        return self.fabric.client(subnet, ip, f"t{self.tag}-{ip.replace('.', '-')}")

    def close(self) -> None:
        for server in self.servers:  # first: a process inside would keep its netns alive
            server.kill()
            server.wait()
        try:
            self.fabric.teardown()
        finally:
            for name in self.netns:
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_eni_failover_keeps_ips_and_mac(lab: Lab) -> None:
    fab = lab.fabric
    fab.ensure_subnet(lab.vpc, "subnet-1", "10.77.1.0/24")
    fab.ensure_subnet(lab.vpc, "subnet-1", "10.77.1.0/24")  # idempotent
    a, b = lab.instance("A"), lab.instance("B")
    assert fab.attach("eni-aaa", "subnet-1", a, 0, MAC, ["10.77.1.10", "10.77.1.11"]) == "eth0"
    assert fab.attach("eni-aaa", "subnet-1", f"/run/netns/{a}", 0, MAC, ["10.77.1.10", "10.77.1.11"]) == "eth0"
    client = lab.client("subnet-1", "10.77.1.50")
    assert ask(client, "10.77.1.10") == "A" and ask(client, "10.77.1.11") == "A"
    fab.add_ips("eni-aaa", ["10.77.1.12"])
    assert ask(client, "10.77.1.12") == "A"
    neigh = ip_json(client, "neigh", "show", "10.77.1.10")
    assert neigh[0]["lladdr"] == MAC

    times = []
    for src, dst, reply in ((a, b, "B"), (b, a, "A"), (a, b, "B")):
        ips = fab.status()["attachments"]["eni-aaa"]["ips"]
        started = time.monotonic()
        fab.detach("eni-aaa")
        fab.attach("eni-aaa", "subnet-1", dst, 0, MAC, ips)
        while (got := ask(client, "10.77.1.10", timeout=0.05)) != reply and time.monotonic() - started < 10:
            pass
        times.append(time.monotonic() - started)
        assert got == reply, f"no answer from {dst} after failover"
        assert ip_json(src, "link", "show", "type", "veth") == []
    print(f"\nENI failover, detach start to first answer: {[f'{t * 1000:.1f} ms' for t in times]}, "
          f"median {statistics.median(times) * 1000:.1f} ms")
    assert ask(client, "10.77.1.12") == "B"
    assert ip_json(client, "neigh", "show", "10.77.1.10")[0]["lladdr"] == MAC  # same MAC, no re-ARP needed
    (eth0,) = ip_json(b, "addr", "show", "dev", "eth0")
    assert eth0["address"] == MAC
    assert [x["local"] for x in eth0["addr_info"] if x["family"] == "inet"] == [f"10.77.1.1{i}" for i in range(3)]


def test_two_subnets_dual_homed_instance_and_router(lab: Lab) -> None:
    fab = lab.fabric
    fab.ensure_subnet(lab.vpc, "subnet-1", "10.77.1.0/24")
    a, b = lab.instance("A"), lab.instance("B")
    assert fab.attach("eni-a0", "subnet-1", a, 0, "02:00:00:00:a0:00", ["10.77.1.10"]) == "eth0"
    fab.ensure_subnet(lab.vpc, "subnet-2", "10.77.2.0/24")  # A learns the route to the new subnet
    assert fab.attach("eni-a1", "subnet-2", a, 1, "02:00:00:00:a1:00", ["10.77.2.10"]) == "eth1"
    mac_b = "02:00:00:00:b0:00"
    assert fab.attach("eni-b0", "subnet-2", b, 0, mac_b, ["10.77.2.20"], source_dest_check=False) == "eth0"
    addrs = {link["ifname"]: [x["local"] for x in link["addr_info"] if x["family"] == "inet"]
             for link in ip_json(a, "addr", "show") if link["ifname"] != "lo"}
    assert addrs == {"eth0": ["10.77.1.10"], "eth1": ["10.77.2.10"]}
    c1, c2 = lab.client("subnet-1", "10.77.1.50"), lab.client("subnet-2", "10.77.2.50")
    assert ask(c2, "10.77.2.10") == "A"
    assert ask(c1, "10.77.2.20") == "B"  # across the VPC router, both ways
    assert ip_json(c1, "route", "get", "10.77.2.20")[0]["gateway"] == "10.77.1.1"
    assert ip_json(b, "route", "get", "10.77.1.50")[0]["gateway"] == "10.77.2.1"
    assert ip_json(a, "route", "get", "10.77.2.50")[0]["dev"] == "eth1"  # connected beats the router route

    def sysctl(ns: str, key: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", key], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert (sysctl(b, "net.ipv4.ip_forward"), sysctl(b, "net.ipv4.conf.eth0.rp_filter")) == ("1", "0")
    assert sysctl(a, "net.ipv4.ip_forward") == "0"
    fab.set_source_dest_check("eni-b0", True)
    assert sysctl(b, "net.ipv4.ip_forward") == "0"
    status = fab.status()
    assert status["subnets"]["subnet-2"]["live"] and status["attachments"]["eni-a1"]["ifname"] == "eth1"


def test_teardown_leaves_nothing_and_works_from_another_process(lab: Lab) -> None:
    fab = lab.fabric
    fab.ensure_subnet(lab.vpc, "subnet-1", "10.77.1.0/24")
    fab.ensure_subnet(lab.vpc, "subnet-2", "10.77.2.0/24")
    a = lab.instance("A")
    fab.attach("eni-aaa", "subnet-1", a, 0, MAC, ["10.77.1.10"])
    fab.attach("eni-bbb", "subnet-2", a, 1, "02:00:00:00:bb:01", ["10.77.2.10"])
    client = lab.client("subnet-1", "10.77.1.50")
    ours = {f"bakery-vpc-t{lab.tag}", client}
    assert ours <= all_netns()
    code = ("from pathlib import Path; from bakery.local.vpcnet import VpcFabric; "
            f"VpcFabric(Path({str(fab.dir.parent)!r})).detach('eni-aaa')")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    assert [link["ifname"] for link in ip_json(a, "link", "show", "type", "veth")] == ["eth1"]
    fab.teardown()
    fab.teardown()  # idempotent
    assert not ours & all_netns()
    assert ip_json(a, "link", "show", "type", "veth") == []
    status = fab.status()
    assert status == {"vpcs": {}, "subnets": {}, "attachments": {}, "clients": {}}


def test_errors_name_the_eni_and_subnet(lab: Lab) -> None:
    fab = lab.fabric
    fab.ensure_subnet(lab.vpc, "subnet-1", "10.77.1.0/24")
    a, b = lab.instance("A"), lab.instance("B")
    fab.attach("eni-aaa", "subnet-1", a, 0, MAC, ["10.77.1.10"])
    with pytest.raises(LocalCloudError) as err:
        fab.attach("eni-aaa", "subnet-1", b, 0, MAC, ["10.77.1.10"])
    assert "eni-aaa" in str(err.value) and a in str(err.value) and b in str(err.value)
    with pytest.raises(LocalCloudError, match="unknown subnet subnet-nope"):
        fab.attach("eni-ccc", "subnet-nope", b, 0, MAC, ["10.77.1.10"])
    with pytest.raises(LocalCloudError, match="10.77.9.9"):
        fab.attach("eni-ccc", "subnet-1", b, 0, "02:00:00:00:cc:01", ["10.77.9.9"])
    fab.attach("eni-ddd", "subnet-1", b, 0, "02:00:00:00:dd:01", ["10.77.1.20"])
    with pytest.raises(LocalCloudError, match=r"eni-eee.*File exists.*command: .*link add"):
        fab.attach("eni-eee", "subnet-1", b, 0, "02:00:00:00:ee:01", ["10.77.1.21"])  # eth0 is taken
    with pytest.raises(LocalCloudError, match="overlaps subnet-1"):
        fab.ensure_subnet(lab.vpc, "subnet-9", "10.77.0.0/16")
    # an instance that went away (netns deleted) frees its ENI for the next one
    subprocess.run(["ip", "netns", "del", a], check=True)
    lab.servers[0].kill()
    assert fab.attach("eni-aaa", "subnet-1", b, 1, MAC, ["10.77.1.10"]) == "eth1"
