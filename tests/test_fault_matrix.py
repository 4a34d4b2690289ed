"""The fault matrix, EC2 side: every EC2 call of the bake, at the stage that makes it, under every
fault that applies to it (injected on the real HTTP path by botocore hooks: tests/faults.py).

Throttling and server errors are absorbed by retries: the bake succeeds. An expired token stops
the bake with one line, unless it hits a clean-up call: then the bake still succeeds, reports the
clean-up failure, and the janitor removes what is left (it is tagged). Capacity errors move on to
the next instance type. A waiter that never sees its state gives up with one line. After every
case the endpoint holds nothing of that build except, on success, its finished image and the
image's snapshots (tests/matrix.py checks the full state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest

from bakery.errors import CloudError, WaitTimeout
from tests.faults import (CAPACITY, EXPIRED, TRANSIENT, Fault, Stale, role_is, scaled_backoff,  # noqa: F401 (fixture)
                          short_waits)
from tests.matrix import Baked, Fails, Rejected, Tap, check_bake, run_bake
from tests.support import endpoint_state, recipe_text, write_recipe

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("scaled_backoff")]

STEPS = "  - {name: hi, shell: echo hi}\n"
CHECKS = "checks:\n  timeout: 20\n  commands:\n    - {name: hello, shell: 'true'}\n"

STOPPED_HERE = Fails(CloudError, r"not authorised \(ExpiredToken\)")
CLEAN_UP_REFUSED = Baked(warning=r"clean-up of .* failed: .*ExpiredToken", janitor=True)


@dataclass(frozen=True)
class Row:
    stage: str
    call: str
    fault: str
    inject: Callable  # the EC2 facade -> the injected fault (which counts how often it fired)
    outcome: object
    smoke: bool = False  # the recipe has a smoke test

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.call}:{self.fault}".replace(" ", "-")


def fault(operation: str, match=None, after: int = 0, **kind):
    return lambda ec2: Fault(ec2.client, operation, match=match, after=after, **kind)


def calls(stage: str, call: str, expired, smoke: bool = False, **where) -> list[Row]:
    """A call under throttling and server errors (retried: baked) and an expired token (`expired`)."""
    operation = call.partition("(")[0]
    rows = [Row(stage, call, name, fault(operation, **where, **kind), Baked(), smoke) for name, kind in TRANSIENT.items()]
    return rows + [Row(stage, call, "auth-expired", fault(operation, **where, **EXPIRED), expired, smoke)]


def stale(operation: str, actual: str, shown: str, match):
    return lambda ec2: Stale(ec2.client, operation, actual, shown, match)


new_image = dict(match=lambda p: p.get("ImageId.1", "").startswith("ami-"))
snapshots = dict(match=lambda p: p.get("ResourceId.1", "").startswith("snap-"))
completion = dict(match=lambda p: "bakery:complete" in p.values())
baked_image = lambda image: any(t["Key"] == "bakery:build-id" for t in image.get("Tags", []))  # noqa: E731
never = r"timed out after 2s waiting for"

MATRIX = [
    *calls("resolve source image", "DescribeImages", STOPPED_HERE),
    *calls("create temporary key pair", "ImportKeyPair", STOPPED_HERE),
    *calls("create temporary security group", "DescribeSubnets", STOPPED_HERE),
    *calls("create temporary security group", "CreateSecurityGroup", STOPPED_HERE),
    *calls("create temporary security group", "AuthorizeSecurityGroupIngress", STOPPED_HERE),
    *calls("launch builder", "RunInstances", STOPPED_HERE),
    Row("launch builder", "RunInstances", "capacity-once", fault("RunInstances", times=1, **CAPACITY), Baked()),
    Row("launch builder", "RunInstances", "capacity-everywhere", fault("RunInstances", times=None, **CAPACITY),
        Fails(CloudError, r"no capacity for any of t3.micro, t3.small: run-instances \(t3.small\): InsufficientInstanceCapacity")),
    *calls("wait for builder to run", "DescribeInstances", STOPPED_HERE),
    Row("wait for builder to run", "DescribeInstances", "waiter-timeout", stale("DescribeInstances", "running", "pending",
        role_is("builder")), Fails(WaitTimeout, rf"{never} instance i-\w+ to be running")),
    *calls("stop builder", "StopInstances", STOPPED_HERE),
    Row("stop builder", "DescribeInstances", "waiter-timeout", stale("DescribeInstances", "stopped", "stopping",
        role_is("builder")), Fails(WaitTimeout, rf"{never} instance i-\w+ to be stopped")),
    *calls("create image", "CreateImage", STOPPED_HERE),
    *calls("wait for image", "DescribeImages(new image)", STOPPED_HERE, **new_image),
    Row("wait for image", "DescribeImages(new image)", "waiter-timeout", stale("DescribeImages", "available", "pending",
        baked_image), Fails(WaitTimeout, rf"{never} image ami-\w+ to become available")),
    *calls("wait for image", "CreateTags(snapshots)", STOPPED_HERE, **snapshots),
    *calls("mark image complete", "CreateTags(complete)", STOPPED_HERE, **completion),
    *calls("clean up", "TerminateInstances", CLEAN_UP_REFUSED),
    Row("clean up", "DescribeInstances", "waiter-timeout", stale("DescribeInstances", "terminated", "shutting-down",
        role_is("builder")), Baked(warning=rf"clean-up of builder i-\w+ failed: {never} instance i-\w+ to be terminated")),
    *calls("clean up", "DeleteSecurityGroup", CLEAN_UP_REFUSED),
    Row("clean up", "DeleteSecurityGroup", "dependency-violation-forever",
        fault("DeleteSecurityGroup", code="DependencyViolation", times=None, message="resource has a dependent object"),
        Baked(warning=rf"clean-up of security group sg-\w+ failed: {never} security group sg-\w+ to be deletable",
              janitor=True)),
    *calls("clean up", "DeleteKeyPair", CLEAN_UP_REFUSED),
    *calls("smoke test: launch", "RunInstances(smoke)", Rejected(r"not authorised \(ExpiredToken\)"), smoke=True, after=1),
    Row("smoke test: launch", "RunInstances(smoke)", "capacity-once",
        fault("RunInstances", after=1, times=1, **CAPACITY), Baked(), smoke=True),
    Row("smoke test: launch", "RunInstances(smoke)", "capacity-everywhere",
        fault("RunInstances", after=1, times=None, **CAPACITY), Rejected(r"no capacity for any of"), smoke=True),
    Row("smoke test: launch", "DescribeInstances", "waiter-timeout", stale("DescribeInstances", "running", "pending",
        role_is("smoke")), Rejected(rf"{never} instance i-\w+ to be running"), smoke=True),
]


@pytest.mark.parametrize("row", MATRIX, ids=[r.id for r in MATRIX])
def test_bake_under_an_ec2_fault(moto, tmp_path, builder_host, settings_for, row):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS, CHECKS if row.smoke else ""))
    settings = settings_for(recipes)
    ec2 = short_waits(settings)
    injected = row.inject(ec2)
    before, tap = endpoint_state(moto.client()), Tap()
    runner, manifest, error = run_bake(settings, ec2, tap)
    assert getattr(injected, "injected", None) or getattr(injected, "rewritten", None), f"{row.call} never faulted"
    check_bake(row.outcome, moto=moto, before=before, settings=settings, runner=runner, manifest=manifest,
               error=error, tap=tap, smoke=row.smoke)
