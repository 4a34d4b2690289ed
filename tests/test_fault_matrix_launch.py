"""The fault matrix, launch: every EC2 call `invoke launch` makes, at the stage that makes it,
under every fault that applies to it; and SIGINT in the middle of a launch.

The environment has the network of tests/test_network_e2e.py and one tier that uses all of it
(ENV below). `network.up` has made the network once for the module; the calls below were found by
recording every EC2 call of a launch with a botocore hook.

Throttling and server errors are retried: the fleet comes up. An expired token, no capacity or
a waiter that never sees `running` fail the launch with one line and roll it back: no instance
of the launch is left and the network is as `network.up` left it (persistent ENIs detached,
Elastic IP not associated). A failure writing the launch template comes after the fleet is up:
the fleet stays, the template is not written, one line says so.
"""

from __future__ import annotations

import io
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from bakery.bake import bake
from bakery.cloud.ec2 import EC2
from bakery.environment import load_environment
from bakery.errors import BakeryError, CloudError, WaitTimeout
from bakery.launch import Launcher, _launch_locked
from bakery.network import Network
from bakery.progress import Reporter
from bakery.settings import Settings
from tests.faults import CAPACITY, EXPIRED, TRANSIENT, Fault, Gate, Stale, short_waits
from tests.matrix import CliRun, assert_one_line_error, cli_environment
from tests.support import (FakeBuilderHost, MotoServer, changes, endpoint_state, every_page, recipe_text,
                           stop_process, write_recipe)
from tests.test_network_e2e import NETWORK_ENV

pytestmark = pytest.mark.e2e

# The network of tests/test_network_e2e.py and its `app` tier, which uses all of it: a launch-time
# ENI (here with source/dest check off), two persistent ENIs (one with a secondary IP and the
# Elastic IP) and a hot standby; plus a launch template. Two instances per launch keep the module's
# moto (which never forgets a terminated instance) fast.
ENV = (NETWORK_ENV.split("  fw:")[0]
       .replace("    standby: 1\n", "    standby: 1\n    launch_template: {name: app-lt}\n")
       .replace("security_groups: [web-sg]}", "security_groups: [web-sg], source_dest_check: false}"))
assert "launch_template" in ENV and "source_dest_check: false" in ENV and "fw" not in ENV


class World:
    """A moto server of its own, with the image baked and the network up; `take_down()` removes
    whatever a case launched (as AWS would on terminate), back to exactly that state."""

    def __init__(self, root: Path):
        self.root = root
        self.server = MotoServer()
        self.client = self.server.client()
        seed = self.client.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]
        self.client.create_image(InstanceId=seed["InstanceId"], Name="test-debian-12-amd64-20260101")
        self.client.terminate_instances(InstanceIds=[seed["InstanceId"]])
        host = FakeBuilderHost(self.server, root / "builder")
        try:
            write_recipe(root / "recipes", "app", recipe_text(host.port, "  - {name: hi, shell: echo app}\n"))
            (root / "envs").mkdir()
            (root / "envs/prod.yaml").write_text(ENV)
            self.settings = Settings(cloud="aws", region="us-east-1", endpoint_url=self.server.url, project_dir=root,
                                     recipes_dir=root / "recipes", envs_dir=root / "envs", state_dir=root / "state")
            bake(self.settings, "app", {}, report=Reporter(quiet=True))
        finally:
            host.close()
        Network(EC2(self.settings), self.env()).up(dry_run=False)
        self.pristine = endpoint_state(self.client)
        self.eni = {name: eni["NetworkInterfaceId"] for eni in self.client.describe_network_interfaces()["NetworkInterfaces"]
                    for name in [{t["Key"]: t["Value"] for t in eni.get("TagSet", [])}.get("bakery:network-name")] if name}

    def env(self):
        return load_environment(self.settings.envs, "prod")

    def take_down(self) -> None:
        c = self.client
        live = [i["InstanceId"] for r in every_page(c, "describe_instances", "Reservations") for i in r["Instances"]
                if i["State"]["Name"] != "terminated"]
        if live:
            c.terminate_instances(InstanceIds=live)
        for a in c.describe_addresses()["Addresses"]:
            if a.get("AssociationId"):
                c.disassociate_address(AssociationId=a["AssociationId"])
        for eni in every_page(c, "describe_network_interfaces", "NetworkInterfaces"):
            att = eni.get("Attachment") or {}
            if att.get("DeleteOnTermination"):
                c.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])
            elif att.get("AttachmentId") and att.get("DeviceIndex") != 0:  # (moto's own primary ENIs stay)
                c.detach_network_interface(AttachmentId=att["AttachmentId"], Force=True)
        for t in c.describe_launch_templates()["LaunchTemplates"]:
            c.delete_launch_template(LaunchTemplateName=t["LaunchTemplateName"])

    def close(self) -> None:
        stop_process(self.server.proc)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("launch-world"))
    yield w
    w.close()


@pytest.fixture
def network_only(world):
    """The world before the case; after it, the world is taken down to that again (and checked)."""
    yield world
    world.take_down()
    assert endpoint_state(world.client) == world.pristine


# ---- outcomes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launched:
    """The fleet is up: the active and the standby instance running with their root volumes and
    launch-time ENIs; the active one holds both persistent ENIs, the Elastic IP is on the first;
    the tier's launch template has version 1."""

    def check(self, world, got: dict, report, error) -> None:
        assert error is None, error.message
        fleet = {r.instance_id: r.slot for r in report.instances}
        assert sorted(fleet.values()) == ["0", "standby-0"]
        assert got["instances"] == {i: f"running {'standby' if slot.startswith('standby') else 'active'}"
                                    for i, slot in fleet.items()}
        active = next(i for i, slot in fleet.items() if slot == "0")
        persistent = {world.eni["eni/app/1"]: f"attached to {active}", world.eni["eni/app/2"]: f"attached to {active}"}
        assert {e: d for e, d in got["network_interfaces"].items() if e in persistent} == persistent
        assert sorted(d.removeprefix("attached to ") for d in got["network_interfaces"].values()) == \
            sorted([active, active, active, next(i for i in fleet if i != active)])
        assert list(got["elastic_ips"].values()) == [f"on {world.eni['eni/app/1']}"]
        assert got["launch_templates"] == {"app-lt": "version 1"}
        assert len(got["volumes"]) == len(fleet) and set(got["volumes"].values()) == {"in-use"}  # root volumes
        assert set(got) == {"instances", "network_interfaces", "elastic_ips", "launch_templates", "volumes"}


@dataclass(frozen=True)
class RolledBack:
    """The launch fails with one line; nothing of it is left: the network is as network.up left it."""

    error: type[BakeryError]
    message: str

    def check(self, world, got: dict, report, error) -> None:
        assert isinstance(error, self.error), f"expected {self.error.__name__}, got {error!r}"
        assert re.search(self.message, error.message), error.message
        assert got == {}


@dataclass(frozen=True)
class TemplateFails:
    """The fleet is up (it is not rolled back for this) and the launch ends with one line saying
    why the launch template step failed; the new version exists only if making it the default failed."""

    message: str
    version_written: bool = False

    def check(self, world, got: dict, report, error) -> None:
        assert isinstance(error, CloudError) and re.search(self.message, error.message), error
        assert got.get("launch_templates") == ({"app-lt": "version 1"} if self.version_written else None)
        assert len(got["instances"]) == 2 and all(d.startswith("running") for d in got["instances"].values())


# ---- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    stage: str
    call: str
    fault: str
    inject: Callable  # the EC2 facade -> the injected fault
    outcome: object

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.call}:{self.fault}".replace(" ", "-")


def fault(operation: str, **kind):
    return lambda ec2: Fault(ec2.client, operation, **kind)


EXPIRED_MESSAGE = r"not authorised \(ExpiredToken\)"
EXPIRED_HERE = RolledBack(CloudError, EXPIRED_MESSAGE)
by_id = dict(match=lambda p: "InstanceId.1" in p)


def calls(stage: str, call: str, expired, **where) -> list[Row]:
    """A call throttled once and failing with a 5xx once (each retried once: the fleet comes up; once
    keeps botocore's backoff sleep short), and meeting an expired token (`expired`)."""
    operation = call.partition("(")[0]
    return [Row(stage, call, f"{name}-once", fault(operation, **where, **{**kind, "times": 1}), Launched())
            for name, kind in TRANSIENT.items()] \
        + [Row(stage, call, "auth-expired", fault(operation, **where, **EXPIRED), expired)]


MATRIX = [
    *calls("network up", "DescribeVpcs", EXPIRED_HERE),
    *calls("network up", "DescribeSubnets", EXPIRED_HERE),
    *calls("network up", "DescribeSecurityGroups", EXPIRED_HERE),
    *calls("network up", "AuthorizeSecurityGroupIngress", EXPIRED_HERE),
    *calls("network up", "DescribeNetworkAcls", EXPIRED_HERE),
    *calls("network up", "DescribeAddresses", EXPIRED_HERE),
    *calls("network up", "DescribeNetworkInterfaces", EXPIRED_HERE),
    *calls("plan tiers", "DescribeImages", EXPIRED_HERE),
    *calls("plan tiers", "DescribeInstances(existing)", EXPIRED_HERE),
    *calls("plan tiers", "DescribeInstanceTypes", EXPIRED_HERE),
    *calls("launch slots", "RunInstances", EXPIRED_HERE),
    Row("launch slots", "RunInstances(standby)", "auth-expired", fault("RunInstances", after=1, **EXPIRED), EXPIRED_HERE),
    Row("launch slots", "RunInstances(standby)", "capacity", fault("RunInstances", after=1, times=None, **CAPACITY),
        RolledBack(CloudError, r"run-instances \(app\): InsufficientInstanceCapacity")),
    *calls("wait for instances", "DescribeInstances(by id)", EXPIRED_HERE, **by_id),
    Row("wait for instances", "DescribeInstances(by id)", "waiter-timeout",
        lambda ec2: Stale(ec2.client, "DescribeInstances", "running", "pending"),
        RolledBack(WaitTimeout, r"timed out after 2s waiting for instance i-\w+ to be running")),
    *calls("network interfaces", "AttachNetworkInterface", EXPIRED_HERE),
    Row("network interfaces", "AttachNetworkInterface(second)", "auth-expired",
        fault("AttachNetworkInterface", after=1, **EXPIRED), EXPIRED_HERE),
    *calls("network interfaces", "AssociateAddress", EXPIRED_HERE),
    *calls("network interfaces", "ModifyNetworkInterfaceAttribute", EXPIRED_HERE),
    *calls("launch template", "DescribeLaunchTemplates", TemplateFails(EXPIRED_MESSAGE)),
    *calls("launch template", "CreateLaunchTemplate", TemplateFails(EXPIRED_MESSAGE)),
    *calls("launch template", "ModifyLaunchTemplate", TemplateFails(EXPIRED_MESSAGE, version_written=True)),
]


@pytest.mark.parametrize("row", MATRIX, ids=lambda row: row.id)
def test_launch_under_an_ec2_fault(network_only, row):
    world = network_only
    ec2 = short_waits(world.settings)
    injected = row.inject(ec2)
    out = io.StringIO()
    env = world.env()
    launcher = Launcher(world.settings, env, report=Reporter(stream=out), ec2=ec2)
    before = endpoint_state(world.client)
    report = error = None
    try:
        report = _launch_locked(launcher, env, env.select(None), False, launcher.report, time.monotonic())
    except BakeryError as exc:
        error = exc
    assert getattr(injected, "injected", None) or getattr(injected, "rewritten", None), f"{row.call} never faulted"
    assert "Traceback" not in out.getvalue() and (error is None or "\n" not in error.message)
    row.outcome.check(world, changes(before, endpoint_state(world.client)), report, error)


# ---- SIGINT mid-launch -------------------------------------------------------------------------

INTERRUPTED_AT = {
    "launch slots (standby's RunInstances held)": dict(operation="RunInstances", nth=2),
    "launch slots (standby's RunInstances done, answer lost)": dict(operation="RunInstances", nth=2, mode="after"),
    "wait for instances": dict(operation="DescribeInstances", match=lambda p: "InstanceId.1" in p),
    "network interfaces (second attach held)": dict(operation="AttachNetworkInterface", nth=2),
}


@pytest.mark.parametrize("held", INTERRUPTED_AT.values(), ids=[k.replace(" ", "-") for k in INTERRUPTED_AT])
def test_sigint_mid_launch_rolls_it_back(network_only, held):
    world = network_only
    before = endpoint_state(world.client)
    gate = Gate(world.server.url, **held)
    run = CliRun(["launch", "--env", "prod"], cli_environment(gate.url, world.root))
    try:
        assert gate.held.wait(60), "".join(run.lines)
        run.proc.send_signal(signal.SIGINT)
        code, _, err = run.finish()
    finally:
        run.kill()
        gate.close()
    assert code == 130, err
    assert_one_line_error(err, "error: interrupted by SIGINT")
    assert changes(before, endpoint_state(world.client)) == {}
