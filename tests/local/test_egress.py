"""The way out of the local cloud's VPCs, as an environment declares it: an internet gateway, route
tables, a NAT gateway, public IPs and an Elastic IP on a persistent ENI, on a private local cloud.

The environment is launched by bakery from the base image (no bake: what runs on the instances is
started by the tests in their network namespaces and stopped by PID). "The internet" is the
cloud's internet namespace: a server on its host (internet.INTERNET_HOST) tells each client the
address it came from; the package mirror is asked once, by an instance's own curl."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import boto3
import pytest

from bakery.cloud.tags import ENVIRONMENT, SLOT, TIER, tag_filter, tags_of
from bakery.local.internet import INTERNET_HOST
from bakery.local.sandbox import Sandbox
from tests.local.conftest import WHO
from tests.local.test_firewall_fabric import reach
from tests.local.test_firewall_prod import until
from tests.support import ROOT

pytestmark = pytest.mark.local

ENV = """\
network:
  vpc: {{cidr: 10.60.0.0/16}}
  subnets:
    public: {{cidr: 10.60.1.0/24, az: us-east-1a, public: true}}
    private: {{cidr: 10.60.2.0/24, az: us-east-1a}}
    isolated: {{cidr: 10.60.3.0/24, az: us-east-1a}}
  security_groups:
    svc: {{ingress: [{{protocol: tcp, ports: 8080, cidr: 0.0.0.0/0}}]}}
  elastic_ips:
    front: {{}}
    nat: {{}}
  internet_gateway: true
  nat_gateways:
    nat: {{subnet: public, elastic_ip: nat}}
  route_tables:
    public: {{subnets: [public], routes: [{{cidr: 0.0.0.0/0, internet_gateway: true}}]}}
    private: {{subnets: [private], routes: [{{cidr: 0.0.0.0/0, nat_gateway: nat}}]}}
tiers:
  front:      # its public address: an Elastic IP on a persistent ENI, which fails over to a hot standby
    image: {{ami: {ami}}}
    count: 1
    standby: 1
    interfaces:
      - {{device_index: 0, subnet: public, security_groups: [svc], public_ip: false}}
      - {{device_index: 1, subnet: public, security_groups: [svc], private_ip: 10.60.1.20, persistent: true,
          elastic_ip: {{name: front}}}}
  web:        # a public IP of its own (the subnet maps one)
    image: {{ami: {ami}}}
    interfaces: [{{device_index: 0, subnet: public, security_groups: [svc]}}]
  dark:       # a public subnet, no public IP
    image: {{ami: {ami}}}
    interfaces: [{{device_index: 0, subnet: public, security_groups: [svc], public_ip: false}}]
  private:    # routed to the NAT gateway
    image: {{ami: {ami}}}
    interfaces: [{{device_index: 0, subnet: private, security_groups: [svc]}}]
  isolated:   # no route out at all
    image: {{ami: {ami}}}
    interfaces: [{{device_index: 0, subnet: isolated, security_groups: [svc]}}]
"""


class Egress:
    def __init__(self, cloud, work):
        self.cloud = cloud
        self.work = work
        self.ec2 = boto3.client("ec2", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                                aws_access_key_id="local", aws_secret_access_key="local")
        self.servers: list[subprocess.Popen[str]] = []
        self.inet = cloud.internet.netns

    def invoke(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(self.cloud.data_dir),
               "INVOKE_BAKERY_STATE_DIR": str(self.work / "state"), "INVOKE_BAKERY_ENVS_DIR": str(self.work / "envs")}
        return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    def instances(self) -> dict[tuple[str, str], str]:
        return {(tags_of(i)[TIER], tags_of(i)[SLOT]): i["InstanceId"]
                for r in self.ec2.describe_instances(Filters=[tag_filter(ENVIRONMENT, "egress")])["Reservations"]
                for i in r["Instances"] if i["State"]["Name"] == "running"}

    def ns(self, tier: str, slot: str = "0") -> str:
        return self.cloud.netns(self.instances()[(tier, slot)])

    def serve(self, ns: str, ip: str, port: int, name: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", WHO, ip, str(port), name],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def ask(self, ns: str, ip: str, port: int) -> str:
        """What the server at ip:port says (its name and the address it saw), else 'timeout' etc."""
        return reach(ns, ip, port, timeout=1.5)

    def eip(self, name: str) -> dict:
        return self.ec2.describe_addresses(Filters=[tag_filter("Name", f"egress-{name}")])["Addresses"][0]

    def close(self, keep: int = 0) -> None:
        """Stop the servers started after the first `keep` (by their PIDs)."""
        for proc in self.servers[keep:]:
            proc.kill()
            proc.wait()
        del self.servers[keep:]


@pytest.fixture(scope="module")
def egress(cloud, tmp_path_factory) -> Iterator[Egress]:
    work = tmp_path_factory.mktemp("egress")
    (work / "envs").mkdir()
    (work / "envs" / "egress.yaml").write_text(ENV.format(ami=cloud.ensure_base(log=lambda line: None)))
    env = Egress(cloud, work)
    out = env.invoke("launch", "--env", "egress")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(env.instances()) == [("dark", "0"), ("front", "0"), ("front", "standby-0"), ("isolated", "0"),
                                       ("private", "0"), ("web", "0")]
    env.serve(env.inet, INTERNET_HOST, 80, "internet")
    try:
        yield env
    finally:
        env.close()  # the instances go with the module's cloud (purged)


@pytest.fixture(autouse=True)
def own_servers(egress) -> Iterator[None]:
    """What a test serves on the instances stops with it (the internet's host stays)."""
    kept = len(egress.servers)
    yield
    egress.close(keep=kept)


def test_an_elastic_ip_answers_from_the_internet_through_its_enis_groups(egress):
    front = egress.ns("front")
    egress.serve(front, "0.0.0.0", 8080, "front")
    egress.serve(front, "0.0.0.0", 8081, "front")
    eip = egress.eip("front")
    assert eip["PrivateIpAddress"] == "10.60.1.20"
    # the instance sees the internet's host as the client: the only translation is the EIP's
    assert egress.ask(egress.inet, eip["PublicIp"], 8080) == f"front {INTERNET_HOST}"
    # its group lets in 8080 only: the firewall judged the ENI's private address, after the DNAT
    assert egress.ask(egress.inet, eip["PublicIp"], 8081) == "timeout"
    # the answer left by eth1, where the EIP's address is, though the instance's default route is
    # eth0's (whose source/dest check would drop it): the routing rule for eth1's addresses
    default = subprocess.run(["ip", "-n", front, "route", "show", "default"], capture_output=True, text=True)
    assert "dev eth0" in default.stdout and "eth1" not in default.stdout, default.stdout


def test_an_elastic_ip_follows_associate_and_disassociate_address(egress):
    eip = egress.eip("front")
    persistent = eip["NetworkInterfaceId"]
    web = egress.instances()[("web", "0")]
    egress.serve(egress.ns("web"), "0.0.0.0", 8080, "web")
    egress.serve(egress.ns("front"), "0.0.0.0", 8080, "front")
    try:
        egress.ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=web, AllowReassociation=True)
        moved = until(lambda: egress.ask(egress.inet, eip["PublicIp"], 8080), f"web {INTERNET_HOST}")
        egress.ec2.disassociate_address(AssociationId=egress.eip("front")["AssociationId"])
        gone = until(lambda: egress.ask(egress.inet, eip["PublicIp"], 8080), "timeout")
    finally:
        egress.ec2.associate_address(AllocationId=eip["AllocationId"], NetworkInterfaceId=persistent,
                                     PrivateIpAddress="10.60.1.20", AllowReassociation=True)
    back = until(lambda: egress.ask(egress.inet, eip["PublicIp"], 8080), f"front {INTERNET_HOST}")
    print(f"\nEIP to another instance: answers from it after {moved:.2f} s; disassociated: no answer after "
          f"{gone:.2f} s; back on its ENI: answers after {back:.2f} s")


def test_the_elastic_ip_of_a_persistent_eni_reaches_the_standby_after_failover(egress):
    active, standby = egress.ns("front"), egress.ns("front", "standby-0")
    egress.serve(active, "0.0.0.0", 8080, "active")
    egress.serve(standby, "0.0.0.0", 8080, "standby")
    public = egress.eip("front")["PublicIp"]
    assert egress.ask(egress.inet, public, 8080) == f"active {INTERNET_HOST}"
    started = time.monotonic()
    out = egress.invoke("failover", "--env", "egress", "--tier", "front", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    took = json.loads(out.stdout)["seconds"]
    answered = until(lambda: egress.ask(egress.inet, public, 8080), f"standby {INTERNET_HOST}")
    print(f"\nfailover {took:.2f} s; the EIP answered from the standby {answered:.2f} s after the command "
          f"returned ({time.monotonic() - started:.2f} s in all)")
    assert egress.eip("front")["PrivateIpAddress"] == "10.60.1.20"


def test_instances_reach_the_internet_only_as_their_subnets_route_tables_say(egress):
    addresses = {(tier, n["PrivateIpAddress"]): n.get("Association", {}).get("PublicIp")
                 for r in egress.ec2.describe_instances(Filters=[tag_filter(ENVIRONMENT, "egress")])["Reservations"]
                 for i in r["Instances"] for n in i["NetworkInterfaces"]
                 for tier in [tags_of(i)[TIER]] if n["Attachment"]["DeviceIndex"] == 0}
    web_public = next(pub for (tier, _), pub in addresses.items() if tier == "web")
    nat_public = egress.eip("nat")["PublicIp"]
    # each as the internet sees it: the instance's own public IP, the NAT gateway's, or nothing
    assert egress.ask(egress.ns("web"), INTERNET_HOST, 80) == f"internet {web_public}"
    assert egress.ask(egress.ns("private"), INTERNET_HOST, 80) == f"internet {nat_public}"
    assert egress.ask(egress.ns("dark"), INTERNET_HOST, 80) == "timeout"  # public subnet, no public IP
    assert egress.ask(egress.ns("isolated"), INTERNET_HOST, 80) == "timeout"  # no route out
    # nothing reaches the private instance from the internet: the NAT gateway's address leads nowhere
    egress.serve(egress.ns("private"), "0.0.0.0", 8080, "private")
    assert egress.ask(egress.inet, nat_public, 8080) == "timeout"

    # the route table is moto's: without its route to the NAT gateway, the private subnet is cut off
    table = egress.ec2.describe_route_tables(Filters=[tag_filter("Name", "egress-private")])["RouteTables"][0]
    nat = next(r["NatGatewayId"] for r in table["Routes"] if r.get("NatGatewayId"))
    egress.ec2.delete_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0")
    try:
        until(lambda: egress.ask(egress.ns("private"), INTERNET_HOST, 80), "timeout")
    finally:
        egress.ec2.create_route(RouteTableId=table["RouteTableId"], DestinationCidrBlock="0.0.0.0/0",
                                NatGatewayId=nat)
    until(lambda: egress.ask(egress.ns("private"), INTERNET_HOST, 80), f"internet {nat_public}")


def test_the_package_mirror_is_reached_through_a_nat_gateway_and_not_without_a_route(egress):
    """The instances' own curl, as apt would go: through the NAT gateway it answers; from the
    isolated subnet (the mirror's address given, so no DNS is needed) nothing comes back."""
    mirror = socket.getaddrinfo("deb.debian.org", 80, socket.AF_INET)[0][4][0]
    url = "http://deb.debian.org/debian/dists/bookworm/Release"

    def curl(tier: str, *extra: str) -> subprocess.CompletedProcess[str]:
        box = Sandbox.attach(egress.instances()[(tier, "0")], egress.cloud.instances_dir)
        return box.exec(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", "--head", *extra, url],
                        timeout=30)

    private = curl("private")
    assert private.stdout == "200", private.stderr
    isolated = curl("isolated", "--connect-timeout", "2", "--resolve", f"deb.debian.org:80:{mirror}")
    assert isolated.returncode == 28 and isolated.stdout == "000", isolated.stderr  # timed out: no answer
