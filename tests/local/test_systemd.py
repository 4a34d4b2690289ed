"""Instances boot a real init: the image's systemd is PID 1, cloud-init runs through its own units,
services a recipe enables start at boot, stop is a clean shutdown, start and reboot keep the disk.
Real sandboxes (systemd-nspawn), the real endpoint and a real bake; needs root."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import boto3
import pytest

from bakery.bake.run import bake
from bakery.cloud.connect import open_cloud
from bakery.config.settings import Settings
from bakery.local.sandbox import Sandbox
from bakery.progress import Reporter
from tests.local.conftest import sandbox_recipe, wait_for_boot
from tests.support import write_recipe

pytestmark = pytest.mark.local

# A recipe that installs a service and enables it (nothing starts it by hand, at bake or at boot).
# Its ExecStop leaves a line per clean shutdown, naming the boot it ends.
RECIPE = sandbox_recipe("{name: install hello service, script: hello.sh}")
HELLO_SH = """\
#!/bin/sh
set -eu
mkdir -p /srv/hello && echo "hello from systemd" > /srv/hello/index.html
cat > /etc/systemd/system/hello.service <<'UNIT'
[Unit]
Description=bakery test service
After=network-online.target
[Service]
ExecStart=/usr/bin/python3 -m http.server 8081 --directory /srv/hello --bind 127.0.0.1
ExecStop=/bin/sh -c 'echo "stopped $$(cat /proc/sys/kernel/random/boot_id)" >> /var/lib/hello-stops'
[Install]
WantedBy=multi-user.target
UNIT
systemctl enable hello.service
"""
USER_DATA = """\
#cloud-config
runcmd:
  - [sh, -c, 'echo first boot >> /var/lib/per-instance-runs']
"""


def get(sock, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("instance", timeout=5)
    conn.sock = sock
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def booted(cloud, instance_id: str, timeout: float = 60) -> Sandbox:
    """The instance's machine once systemd's start-up and cloud-init are over, and running clean."""
    box = Sandbox.attach(instance_id, cloud.instances_dir)
    status = wait_for_boot(box, timeout)
    assert status["system"] == 0, (f"systemctl is-system-running: {box.system_state()}; "
                                   f"failed units: {box.failed_units()}\n{box.boot_log()[-3000:]}")
    assert status["done"] == 0 and status["final"] == 0, box.boot_log()[-3000:]
    return box


def sh(box: Sandbox, command: str) -> str:
    result = box.exec(["sh", "-c", command], timeout=30)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def boot_id(box: Sandbox) -> str:
    return sh(box, "cat /proc/sys/kernel/random/boot_id").strip()


def test_an_enabled_service_runs_under_systemd_at_boot_and_survives_stop_start_and_reboot(cloud, tmp_path):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "svc", RECIPE)
    (recipes / "hello.sh").write_text(HELLO_SH)
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=tmp_path, recipes_dir=recipes,
                        state_dir=tmp_path / "state")
    manifest = bake(settings, "svc", {}, report=Reporter(quiet=True))
    ec2 = open_cloud(settings).ec2  # bakery's client: its waits; plain boto3 for what bakery never calls
    client = boto3.session.Session().client("ec2", region_name="us-east-1", aws_access_key_id="local",
                                            aws_secret_access_key="local", endpoint_url=cloud.endpoint.running_url())
    iid = ec2.client.run_instances(ImageId=manifest.ami_id, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                   UserData=USER_DATA)["Instances"][0]["InstanceId"]
    try:
        ec2.wait_instance_state(iid, "running", timeout=60)
        box = booted(cloud, iid)
        assert sh(box, "cat /proc/1/comm") == "systemd\n"
        # the service was started by systemd from its enabled unit: its process sits in the unit's cgroup
        assert sh(box, "systemctl is-active hello.service") == "active\n"
        main_pid = sh(box, "systemctl show --property=MainPID --value hello.service").strip()
        assert "/system.slice/hello.service" in sh(box, f"cat /proc/{main_pid}/cgroup")
        assert get(cloud.connect(iid, 8081, 5), "/") == (200, b"hello from systemd\n")
        assert sh(box, "systemctl is-active ssh.service") == "active\n"
        # cloud-init ran through its own units (the generator enabled it), not by hand
        long = sh(box, "cloud-init status --long")
        assert "status: done" in long and "enabled-by-generator" in long, long
        for unit in ("cloud-init-local", "cloud-init", "cloud-config", "cloud-final"):
            assert sh(box, f"systemctl show --property=Result --value {unit}.service") == "success\n", unit
        assert sh(box, "cat /var/lib/per-instance-runs") == "first boot\n"
        first_boot = boot_id(box)

        # StopInstances is a clean shutdown: the unit's ExecStop ran; the disk stays
        client.stop_instances(InstanceIds=[iid])
        ec2.wait_instance_state(iid, "stopped", timeout=60)
        assert (box.upper / "var/lib/hello-stops").read_text() == f"stopped {first_boot}\n"
        assert not box.is_running()

        # StartInstances boots the same disk: per-instance user data does not run again
        client.start_instances(InstanceIds=[iid])
        ec2.wait_instance_state(iid, "running", timeout=60)
        box = booted(cloud, iid)
        second_boot = boot_id(box)
        assert second_boot != first_boot
        assert sh(box, "cat /var/lib/per-instance-runs") == "first boot\n"
        assert sh(box, "systemctl is-active hello.service") == "active\n"

        # RebootInstances: a clean shutdown and a new boot of the same disk
        client.reboot_instances(InstanceIds=[iid])
        deadline = time.monotonic() + 60
        while True:
            box = Sandbox.attach(iid, cloud.instances_dir)
            try:
                if box.is_running() and boot_id(box) not in (first_boot, second_boot):
                    break
            except Exception:  # noqa: BLE001 - between the stop and the new boot
                pass
            assert time.monotonic() < deadline, "RebootInstances did not reboot the machine"
            time.sleep(0.1)
        box = booted(cloud, iid)
        assert sh(box, "systemctl is-active hello.service") == "active\n"
        assert sh(box, "cat /var/lib/hello-stops").splitlines() == [f"stopped {first_boot}", f"stopped {second_boot}"]
    finally:
        ec2.client.terminate_instances(InstanceIds=[iid])
        ec2.wait_instance_state(iid, "terminated", timeout=60)
    assert not (cloud.instances_dir / iid).exists()


UNITS = {
    "broken.service": "[Service]\nExecStart=/bin/false\n",
    "stubborn.service": ("[Service]\nExecStart=/bin/sleep infinity\nExecStop=/bin/sleep 600\n"
                         "TimeoutStopSec=infinity\n"),
}


def test_a_failed_unit_makes_the_system_degraded_and_is_named(local_base: Path, local_sandboxes) -> None:
    box = local_sandboxes([local_base])
    status = wait_for_boot(box)
    assert status["system"] == 0, box.failed_units()
    sh(box, "printf '%s' '" + UNITS["broken.service"] + "' > /etc/systemd/system/broken.service && "
            "systemctl daemon-reload && { systemctl start broken.service; true; }")
    assert box.system_state() == "degraded"
    assert box.failed_units() == ["broken.service"]
    assert box.boot_status()["system"] == 1 and box.boot_status()["done"] == 1
    assert "failed units: broken.service" in box.boot_log()  # for error messages


def test_stop_waits_for_a_clean_shutdown_only_so_long(local_base: Path, local_sandboxes) -> None:
    """A unit that will not stop cannot hold stop() beyond its bound: then the machine is killed."""
    box = local_sandboxes([local_base])
    wait_for_boot(box)
    sh(box, "printf '%s' '" + UNITS["stubborn.service"] + "' > /etc/systemd/system/stubborn.service && "
            "systemctl daemon-reload && systemctl start stubborn.service")
    pids = [int((box.dir / "pids" / f"{role}.pid").read_text().split()[0]) for role in ("init", "launcher")]
    started = time.monotonic()
    box.stop(timeout=1)
    assert time.monotonic() - started < 5
    assert not box.is_running() and not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not box.netns_path.exists()
