"""The fault matrix, launch: every EC2 call `invoke launch` makes, at the stage that makes it,
under every fault that applies to it; and SIGINT in the middle of a launch.

The environment has the network of tests/test_network_e2e.py and one tier that uses all of it
(ENV below); each case starts from a fresh endpoint where `network.up` has made that network and a
finished image exists. The calls below were found by recording every EC2 call of a launch with a
botocore hook.

Throttling and server errors are retried: the fleet comes up (each stage's calls all meet the
fault in one case; botocore's backoff sleeps are scaled down). An expired token, no capacity or
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

from bakery.cloud.ec2 import EC2
from bakery.config.environment import load_environment
from bakery.errors import BakeryError, CloudError, WaitTimeout
from bakery.launch.run import Launch
from bakery.network import Network
from bakery.progress import Reporter
from bakery.config.settings import Settings
from tests.faults import (CAPACITY, EXPIRED, TRANSIENT, Fault, Gate, Stale, scaled_backoff,  # noqa: F401 (fixture)
                          short_waits)
from tests.matrix import CliRun, assert_one_line_error, cli_environment
from tests.support import cloud_of, changes, endpoint_state
from tests.test_network_e2e import NETWORK_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("scaled_backoff")]

# The network of tests/test_network_e2e.py and its `app` tier, which uses all of it: a launch-time
# ENI (here with source/dest check off), two persistent ENIs (one with a secondary IP and the
# Elastic IP) and a hot standby; plus a launch template.
ENV = (NETWORK_ENV.split("  fw:")[0]
       .replace("    standby: 1\n", "    standby: 1\n    launch_template: {name: app-lt}\n")
       .replace("security_groups: [web-sg]}", "security_groups: [web-sg], source_dest_check: false}"))
assert "launch_template" in ENV and "source_dest_check: false" in ENV and "fw" not in ENV


@dataclass
class World:
    """A fresh endpoint with the environment's network up and a finished image of recipe `app`."""

    root: Path
    settings: Settings
    client: object
    eni: dict[str, str]  # persistent ENI name (eni/app/1) -> id

    def env(self):
        return load_environment(self.settings.envs, "prod")


@pytest.fixture
def world(moto, tmp_path, settings_for) -> World:
    c = moto.client()
    # The image a bake of `app` leaves, as far as launch can tell: available, tagged finished.
    seed = c.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    c.create_image(InstanceId=seed, Name="app-20260101000000", TagSpecifications=[{"ResourceType": "image", "Tags": [
        {"Key": "bakery:recipe", "Value": "app"}, {"Key": "bakery:complete", "Value": "true"}]}])
    c.terminate_instances(InstanceIds=[seed])
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/prod.yaml").write_text(ENV)
    settings = settings_for(tmp_path / "recipes", envs_dir=tmp_path / "envs")
    Network(EC2(settings), load_environment(settings.envs, "prod")).up(dry_run=False)
    enis = {name: eni["NetworkInterfaceId"] for eni in c.describe_network_interfaces()["NetworkInterfaces"]
            for name in [{t["Key"]: t["Value"] for t in eni.get("TagSet", [])}.get("bakery:network-name")] if name}
    return World(tmp_path, settings, c, enis)


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
    inject: Callable  # the EC2 facade -> the injected faults
    outcome: object

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.call}:{self.fault}".replace(" ", "-")


def fault(operation: str, **kind):
    return lambda ec2: [Fault(ec2.client, operation, **kind)]


EXPIRED_MESSAGE = r"not authorised \(ExpiredToken\)"
EXPIRED_HERE = RolledBack(CloudError, EXPIRED_MESSAGE)
by_id = dict(match=lambda p: "InstanceId.1" in p)

STAGES = {  # stage -> its calls -> what an expired token on that call does
    "network up": dict.fromkeys(["DescribeVpcs", "DescribeSubnets", "DescribeSecurityGroups",
                                 "AuthorizeSecurityGroupIngress", "DescribeNetworkAcls", "DescribeAddresses",
                                 "DescribeNetworkInterfaces"], EXPIRED_HERE),
    "plan tiers": dict.fromkeys(["DescribeImages", "DescribeInstances(existing)"],
                                EXPIRED_HERE),
    "launch slots": {"RunInstances": EXPIRED_HERE},
    "wait for instances": {"DescribeInstances(by id)": EXPIRED_HERE},
    "network interfaces": dict.fromkeys(["AttachNetworkInterface", "AssociateAddress",
                                         "ModifyNetworkInterfaceAttribute"], EXPIRED_HERE),
    "launch template": {"DescribeLaunchTemplates": TemplateFails(EXPIRED_MESSAGE),
                        "CreateLaunchTemplate": TemplateFails(EXPIRED_MESSAGE),
                        "ModifyLaunchTemplate": TemplateFails(EXPIRED_MESSAGE, version_written=True)},
}


def every_call(calls: list[str], kind: dict):
    """Each of the stage's calls meets the fault (e.g. is throttled the first two times it is made)."""
    return lambda ec2: [Fault(ec2.client, c.partition("(")[0], **kind, **(by_id if c.endswith("(by id)") else {}))
                        for c in calls]


MATRIX = [
    # Throttling and 5xx on every call of a stage at once: all retried, the fleet comes up.
    *[Row(stage, "every call", name, every_call(list(calls), kind), Launched())
      for stage, calls in STAGES.items() for name, kind in TRANSIENT.items()],
    # An expired token on each call in turn.
    *[Row(stage, call, "auth-expired", every_call([call], EXPIRED), expired)
      for stage, calls in STAGES.items() for call, expired in calls.items()],
    Row("launch slots", "RunInstances(standby)", "auth-expired", fault("RunInstances", after=1, **EXPIRED), EXPIRED_HERE),
    Row("launch slots", "RunInstances(standby)", "capacity", fault("RunInstances", after=1, times=None, **CAPACITY),
        RolledBack(CloudError, r"run-instances \(app\): InsufficientInstanceCapacity")),
    Row("wait for instances", "DescribeInstances(by id)", "waiter-timeout",
        lambda ec2: [Stale(ec2.client, "DescribeInstances", "running", "pending")],
        RolledBack(WaitTimeout, r"timed out after 2s waiting for instance i-\w+ to be running")),
    Row("network interfaces", "AttachNetworkInterface(second)", "auth-expired",
        fault("AttachNetworkInterface", after=1, **EXPIRED), EXPIRED_HERE),
]


@pytest.mark.parametrize("row", MATRIX, ids=lambda row: row.id)
def test_launch_under_an_ec2_fault(world, row):
    ec2 = short_waits(world.settings)
    injected = row.inject(ec2)
    out = io.StringIO()
    env = world.env()
    launcher = Launch(world.settings, env, report=Reporter(stream=out), cloud=cloud_of(ec2))
    before = endpoint_state(world.client)
    report = error = None
    try:
        report = launcher.run(env.select(None), dry_run=False)
    except BakeryError as exc:
        error = exc
    assert all(getattr(f, "injected", None) or getattr(f, "rewritten", None) for f in injected), \
        f"{row.call}: {[f.operation for f in injected if not (getattr(f, 'injected', 0) or getattr(f, 'rewritten', 0))]} never faulted"
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
def test_sigint_mid_launch_rolls_it_back(moto, world, held):
    before = endpoint_state(world.client)
    gate = Gate(moto.url, **held)
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
