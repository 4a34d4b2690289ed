"""The local cloud keeps what EC2 keeps: key pairs, parameters, networks and instances survive
local.down / local.up, a killed endpoint and a host reboot (every sandbox process and the endpoint
killed, every namespace gone); instances come back stopped, or running where their machine ran on."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from bakery.bake.run import bake
from bakery.cloud.connect import open_cloud
from bakery.config.settings import Settings
from bakery.launch.run import launch
from bakery.local.procs import alive
from bakery.progress import Reporter
from tests.local.conftest import netns_names, sandbox_recipe
from tests.support import endpoint_state, write_recipe

pytestmark = pytest.mark.local

RECIPE = sandbox_recipe("{name: mark, shell: echo durable > /etc/durable-marker}")

ENV = """\
network:
  vpc: {cidr: 10.60.0.0/16}
  subnets:
    a: {cidr: 10.60.1.0/24, az: us-east-1a}
  security_groups:
    ssh: {ingress: [{protocol: tcp, ports: 22, cidr: 10.60.0.0/16}]}
  elastic_ips: {front: {}}
tiers:
  box:
    image: {recipe: dur}
    instance_type: t3.small
    count: 1
    interfaces:
      - {device_index: 0, subnet: a, security_groups: [ssh], private_ip: 10.60.1.10}
      - {device_index: 1, subnet: a, security_groups: [ssh], private_ip: 10.60.1.20, persistent: true,
         elastic_ip: {name: front, private_ip: 10.60.1.20}}
    health_check: {type: tcp, port: 22, timeout: 60}
"""


@pytest.fixture(scope="module")
def world(cloud, tmp_path_factory):
    work = tmp_path_factory.mktemp("durable")
    write_recipe(work / "recipes", "dur", RECIPE)
    (work / "envs").mkdir()
    (work / "envs/dur.yaml").write_text(ENV)
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=work, recipes_dir=work / "recipes",
                        envs_dir=work / "envs", state_dir=work / "state")
    bake(settings, "dur", {}, report=Reporter(quiet=True))
    report = launch(settings, "dur", report=Reporter(quiet=True))
    ec2 = open_cloud(settings).ec2
    ec2.ssm.put_parameter(Name="/durable/p", Value="v1", Type="String")
    ec2.ssm.put_parameter(Name="/durable/p", Value="v2", Type="String", Overwrite=True)
    ec2.client.import_key_pair(KeyName="durable",
                               PublicKeyMaterial=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x")
    return settings, report.instances[0].instance_id


def client(cloud, service: str = "ec2"):
    """A plain boto3 client (bakery's own clients carry only the operations bakery calls)."""
    import boto3

    return boto3.client(service, endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def state_of(cloud) -> dict:
    return endpoint_state(client(cloud), client(cloud, "ssm"))


def instance_state(settings, iid: str) -> str:
    return open_cloud(settings).ec2.describe_instance(iid)["State"]["Name"]


def kill_like_a_reboot(cloud) -> None:
    """What a host reboot does to the local cloud: every process gone, /run/netns empty."""
    for box in cloud.sandboxes():
        for f in (box.dir / "pids").glob("*.pid"):
            pid, start = map(int, f.read_text().split())
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    endpoint = cloud.endpoint.state()
    if endpoint is not None:
        os.kill(endpoint.pid, signal.SIGKILL)
    for ns in netns_names():
        if ns.startswith("bakery-") and (ns[7:] in {b.name for b in cloud.sandboxes()}
                                          or ns.startswith("bakery-vpc-")):
            subprocess.run(["ip", "netns", "del", ns], check=True)


def test_down_and_up_keep_parameters_keys_networks_and_instances_stopped(cloud, world):
    settings, iid = world
    before = state_of(cloud)
    cloud.down()
    cloud.up()
    assert instance_state(settings, iid) == "stopped"
    after = state_of(cloud)
    assert after["ssm_parameters"] == before["ssm_parameters"]
    assert {k: v for k, v in after.items() if k not in ("instances", "volumes")} == \
        {k: v for k, v in before.items() if k not in ("instances", "volumes")}
    ssm = open_cloud(settings).ec2.ssm
    assert len(ssm.get_parameter_history(Name="/durable/p")["Parameters"]) == 2
    plan = launch(settings, "dur", dry_run=True, report=Reporter(quiet=True))
    assert [p.missing_slots for p in plan.plans] == [[]] and all("exists" in line for line in plan.network)
    assert [p.in_place() for p in plan.plans] == ["1 in place, 1 stopped"]  # it keeps its slot, not "running"
    assert bake(settings, "dur", {}, report=Reporter(quiet=True)).skipped


def test_a_killed_endpoint_loses_nothing_and_running_machines_are_adopted(cloud, world):
    settings, iid = world
    ec2 = open_cloud(settings).ec2
    if instance_state(settings, iid) != "running":
        client(cloud).start_instances(InstanceIds=[iid])
        ec2.wait_instance_state(iid, "running", timeout=60)
    ssh_banner(cloud, iid)  # booted: running is not yet serving, on EC2 either
    init = cloud.machine_info(iid)["init_pid"]
    ec2.ssm.put_parameter(Name="/durable/last", Value="acknowledged", Type="String")
    os.kill(cloud.endpoint.state().pid, signal.SIGKILL)  # right after the answer
    cloud.up()
    assert instance_state(settings, iid) == "running"
    assert open_cloud(settings).ec2.parameter("/durable/last") == "acknowledged"
    assert cloud.machine_info(iid)["init_pid"] == init and ssh_banner(cloud, iid)  # the same machine, still answering


def ssh_banner(cloud, iid: str) -> bytes:
    deadline = time.monotonic() + 60
    while True:
        try:
            sock = cloud.connect(iid, 22, 5)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"{iid}: no SSH after 60 s"
            time.sleep(0.1)
            continue
        try:
            banner = sock.recv(4)
        finally:
            sock.close()
        assert banner.startswith(b"SSH-")
        return banner


def test_after_a_host_reboot_instances_come_back_stopped_and_start_again(cloud, world):
    settings, iid = world
    before = {k: v for k, v in state_of(cloud).items() if k not in ("instances", "volumes")}
    kill_like_a_reboot(cloud)
    cloud.up()
    assert instance_state(settings, iid) == "stopped"
    assert {k: v for k, v in state_of(cloud).items() if k not in ("instances", "volumes")} == before
    client(cloud).start_instances(InstanceIds=[iid])
    open_cloud(settings).ec2.wait_instance_state(iid, "running", timeout=60)
    box = cloud.sandboxes()[0]
    deadline_ok = box.exec(["cat", "/etc/durable-marker"], timeout=10).stdout
    assert deadline_ok == "durable\n"  # the same disk
    addrs = subprocess.run(["ip", "-n", f"bakery-{iid}", "-br", "addr"], capture_output=True, text=True).stdout
    assert "10.60.1.10/24" in addrs and "10.60.1.20/24" in addrs  # its ENIs wired again, the persistent one too
