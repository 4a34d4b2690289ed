"""The fault matrix: every EC2 call of the bake, under every relevant fault.

Throttling and server errors must be absorbed by retries (the bake succeeds); an expired
token must stop the bake with one clear error. Either way the endpoint then holds nothing
of that build except, on success, its finished image.
"""

from __future__ import annotations

import io

import pytest

from bakery.bake import Bake
from bakery.cloud.ec2 import EC2
from bakery.errors import CloudError
from bakery.progress import Reporter
from bakery.recipe import load_recipe
from tests.faults import Fault
from tests.support import leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

OPERATIONS = ["DescribeImages", "ImportKeyPair", "DescribeSubnets", "CreateSecurityGroup",
              "AuthorizeSecurityGroupIngress", "RunInstances", "DescribeInstances", "StopInstances",
              "CreateImage", "CreateTags", "TerminateInstances", "DeleteSecurityGroup", "DeleteKeyPair"]
FAULTS = {
    "throttling": dict(code="Throttling", status=400, times=2, message="Rate exceeded"),
    "server-error": dict(code="InternalError", status=500, times=2, message="An internal error has occurred"),
    "auth-expired": dict(code="ExpiredToken", status=400, times=1, message="The security token included in the request is expired"),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_fault(moto, tmp_path, builder_host, settings_for, operation, fault):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - {name: hi, shell: echo hi}\n"))
    settings = settings_for(recipes)
    ec2 = EC2(settings)
    injected = Fault(ec2.client, operation, **FAULTS[fault])
    runner = Bake(settings, load_recipe(recipes, "web"), {}, report=Reporter(stream=io.StringIO()), ec2=ec2)
    if fault == "auth-expired" and operation not in ("TerminateInstances", "DeleteSecurityGroup", "DeleteKeyPair"):
        with pytest.raises(CloudError, match="not authorised \\(ExpiredToken\\)"):
            runner.run()
    elif fault == "auth-expired":
        # a clean-up call refused once: the bake still finishes, the clean-up failure is reported,
        # and the janitor (or a retry) has what it needs: everything left is tagged with the build
        runner.run()
    else:
        manifest = runner.run()
        assert manifest.ami_id
    assert injected.injected >= 1, f"{operation} was never called"
    left = leftovers(moto.client())
    if fault == "auth-expired" and operation in ("TerminateInstances", "DeleteSecurityGroup", "DeleteKeyPair"):
        from bakery.cleanup import clean_build

        clean_build(EC2(settings), runner.build_id)  # what the janitor does once the resources expire
        left = leftovers(moto.client())
    assert left == {}
