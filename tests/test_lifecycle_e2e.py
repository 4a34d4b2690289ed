"""Scheduled rebakes, smoke tests, promotion and pruning against a moto server."""

from __future__ import annotations

import io

import pytest

from bakery.bake.inputs import Inputs
from bakery.bake.run import bake
from bakery.errors import StepFailed
from bakery.bake.rebake import rebake
from bakery.cloud.ec2 import EC2
from bakery.housekeeping.prune import prune
from bakery.progress import Reporter
from tests.support import cloud_of, leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

OK = "  - {name: hi, shell: echo hi}\n"


@pytest.fixture
def recipes(tmp_path, builder_host):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, OK))
    write_recipe(recipes, "app", recipe_text(builder_host.port, OK))
    return recipes


def quiet():
    return Reporter(stream=io.StringIO())


def test_rebake_bakes_only_what_changed_and_reports_why(moto, recipes, builder_host, settings_for, tmp_path,
                                                        monkeypatch):
    from bakery.cli import show

    settings = settings_for(recipes)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    def rebake_and_show(names):  # what `invoke rebake` does: the decisions, then the table and job summary
        rows = rebake(settings, names, report=quiet())
        show.rebake(rows, json=False)
        return rows

    first = rebake_and_show(None)
    assert [(r.recipe, r.decision) for r in first] == [("app", "rebaked"), ("web", "rebaked")]

    second = rebake_and_show(None)
    assert [r.decision for r in second] == ["unchanged", "unchanged"]
    assert all("inputs unchanged" in r.reason for r in second)

    (recipes / "web.yaml").write_text(recipe_text(builder_host.port, OK + "  - {name: more, shell: echo more}\n"))
    third = rebake_and_show(None)
    assert [(r.recipe, r.decision) for r in third] == [("app", "unchanged"), ("web", "rebaked")]

    # a newer source image (a weekly security patch) changes every recipe's inputs
    ec2 = moto.client()
    seed = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    import time
    time.sleep(1.1)  # CreationDate has one-second resolution
    ec2.create_image(InstanceId=seed, Name="test-debian-12-amd64-20260201")
    ec2.terminate_instances(InstanceIds=[seed])
    fourth = rebake_and_show(["web"])
    assert fourth[0].decision == "rebaked"
    text = summary.read_text()
    assert text.count("| recipe | decision |") == 4 and "| web | rebaked |" in text
    # and what changed in each rebaked image, from the SBOMs: nothing before the first; the same
    # builder every time, so the same packages (the upload-free recipe brings no files)
    assert f"#### app: no diff ({first[0].ami_id} is the first finished image of app" in text
    assert f"#### web: `{third[1].ami_id}` -> `{fourth[0].ami_id}`\n\n**dpkg packages** (" in text
    assert text.count("): no change") == 6  # third and fourth web: dpkg, Python, uploaded files each
    assert leftovers(ec2) == {}


def test_one_failing_recipe_does_not_stop_the_others(moto, recipes, builder_host, settings_for):
    write_recipe(recipes, "broken", recipe_text(builder_host.port, "  - {name: fails, shell: exit 4}\n"))
    rows = rebake(settings_for(recipes), None, report=quiet())
    assert {r.recipe: r.decision for r in rows} == {"app": "rebaked", "broken": "failed", "web": "rebaked"}, \
        [(r.recipe, r.decision, r.reason) for r in rows]
    assert "fails exited with status 4" in next(r.reason for r in rows if r.recipe == "broken")
    assert leftovers(moto.client()) == {}


CHECKS = "checks:\n  commands:\n    - {name: marker, shell: 'test -f /srv/marker'}\n"


def test_a_failing_smoke_test_leaves_the_image_marked_and_unpublished(moto, recipes, builder_host, settings_for):
    extra = CHECKS + "image: {ssm_parameter: /bakery/test/web}\n"
    write_recipe(recipes, "web", recipe_text(builder_host.port, OK, extra))
    with pytest.raises(StepFailed, match="smoke test of ami-\\w+ failed, not published: check 'marker' exited"):
        bake(settings_for(recipes), "web", {}, report=quiet())
    ec2 = moto.client()
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:recipe", "Values": ["web"]}])["Images"]
    (image,) = images
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["bakery:smoke"] == "failed" and "bakery:complete" not in tags
    assert moto.client("ssm").describe_parameters()["Parameters"] == []
    assert leftovers(ec2) == {}
    smoke = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
             if {"Key": "bakery:role", "Value": "smoke"} in i.get("Tags", [])]
    assert len(smoke) == 1 and smoke[0]["ImageId"] == image["ImageId"]  # the check ran on the new image


def test_a_passing_smoke_test_then_promotion_to_two_regions(moto, recipes, builder_host, settings_for):
    steps = OK + "  - {name: marker, shell: touch /srv/marker}\n"
    # shared: encrypted with customer managed keys everywhere (the default aws/ebs key cannot be shared)
    extra = ("  root_volume: {kms_key_id: alias/images}\n" + CHECKS
             + "publish:\n  regions: [us-west-2, eu-west-1]\n  kms_key_ids: {us-west-2: alias/west, eu-west-1: alias/eu}\n"
             "  share_with: ['111122223333']\n  ssm_parameter: /bakery/images/web\n"
             "  launch_template: {name: web-lt}\n  deprecate_after_days: 30\n")
    write_recipe(recipes, "web", recipe_text(builder_host.port, steps, extra))
    out = io.StringIO()
    manifest = bake(settings_for(recipes), "web", {}, report=Reporter(stream=out))
    published = manifest.published
    assert set(published["images"]) == {"us-east-1", "us-west-2", "eu-west-1"}
    for region, ami in published["images"].items():
        ec2 = moto.client("ec2", region)
        image = ec2.describe_images(ImageIds=[ami])["Images"][0]
        tags = {t["Key"]: t["Value"] for t in image["Tags"]}
        assert tags["bakery:recipe"] == "web" and tags["bakery:inputs-hash"] == manifest.inputs_hash
        perms = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
        assert perms == [{"UserId": "111122223333"}]
        param = moto.client("ssm", region).get_parameter(Name="/bakery/images/web")["Parameter"]
        assert param["Value"] == ami and param["DataType"] == "aws:ec2:image"
    lt = moto.client().describe_launch_template_versions(LaunchTemplateName="web-lt")["LaunchTemplateVersions"]
    assert lt[0]["LaunchTemplateData"]["ImageId"] == manifest.ami_id
    assert "deprecation time not set" in out.getvalue()  # moto lacks EnableImageDeprecation: a warning, not a failure
    assert leftovers(moto.client()) == {}


SHARED = "publish:\n  regions: [us-west-2]\n  share_with: ['111122223333']\n"


@pytest.mark.parametrize("keys, field, says", [
    ("", "builder.root_volume.kms_key_id", "in us-east-1 would be encrypted with the region's EBS default, "
                                           "alias/aws/ebs, which AWS manages"),
    ("  root_volume: {kms_key_id: alias/images}\n", "publish.kms_key_ids.us-west-2",
     "in us-west-2 would be encrypted with the region's EBS default, alias/aws/ebs, which AWS manages"),
])
def test_sharing_what_the_default_ebs_key_encrypts_is_refused_before_anything_is_created(
        moto, recipes, builder_host, settings_for, keys, field, says):
    """No other account can use an AWS-managed key: a share of an image (or of its copy) encrypted
    with one fails only after the bake. The default key is the account's setting (moto has no
    GetEbsDefaultKmsKeyId: the AWS-managed one, as for an account that never changed it)."""
    from bakery.errors import ConfigError

    write_recipe(recipes, "web", recipe_text(builder_host.port, OK, keys + SHARED))
    with pytest.raises(ConfigError) as refused:
        bake(settings_for(recipes), "web", {}, report=quiet())
    message = refused.value.message
    assert message.startswith(f"{recipes / 'web.yaml'}: {field}: the image's snapshots {says}; publish.share_with "
                              "cannot share them"), message
    ec2 = moto.client()
    assert leftovers(ec2) == {} and ec2.describe_key_pairs()["KeyPairs"] == []
    assert [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] != "terminated"] == []


def test_prune_keeps_the_newest_and_spares_every_used_image(moto, recipes, builder_host, settings_for):
    import time

    settings = settings_for(recipes)
    amis = []
    for _ in range(5):
        amis.append(bake(settings, "web", {}, report=quiet(), force=True).ami_id)
        time.sleep(1.05)  # distinct creation times (one-second resolution)
    oldest, by_lt, by_ssm, by_instance, newest = amis
    ec2, ssm = moto.client(), moto.client("ssm")
    ec2.create_launch_template(LaunchTemplateName="pinned", LaunchTemplateData={"ImageId": by_lt})
    ssm.put_parameter(Name="/p", Value=by_ssm, Type="String", DataType="aws:ec2:image")
    ssm.put_parameter(Name="/p", Value=newest, Type="String", DataType="aws:ec2:image", Overwrite=True)
    ec2.run_instances(ImageId=by_instance, MinCount=1, MaxCount=1)

    dry = prune(EC2(settings), "web", 1, dry_run=True, report=quiet())[0]
    assert dry.removed == [oldest] and len(ec2.describe_images(ImageIds=[oldest])["Images"]) == 1
    done = prune(EC2(settings), "web", 1, dry_run=False, report=quiet())[0]
    assert done.kept == [newest] and done.removed == [oldest]
    assert set(done.spared) == {by_lt, by_ssm, by_instance}
    assert "version 1" in done.spared[by_ssm] and "launch template pinned" in done.spared[by_lt]
    assert ec2.describe_images(ImageIds=[oldest])["Images"] == []
    snaps = ec2.describe_snapshots(Filters=[{"Name": "tag:bakery:recipe", "Values": ["web"]}])["Snapshots"]
    assert len(snaps) == 4  # the pruned image's snapshot went with it


def test_a_publish_that_fails_half_way_takes_back_every_copy_and_every_ssm_value(moto, recipes, builder_host,
                                                                                 settings_for):
    from bakery.bake.run import Bake
    from bakery.cloud.ec2 import EC2
    from bakery.errors import CloudError
    from bakery.config.recipe import load_recipe
    from tests.faults import Fault

    extra = ("publish:\n  regions: [us-west-2, eu-west-1]\n  ssm_parameter: /bakery/images/web\n"
             "  launch_template: {name: web-lt}\n")
    write_recipe(recipes, "web", recipe_text(builder_host.port, OK, extra))
    settings = settings_for(recipes)
    ssm = moto.client("ssm")
    previous = moto.client().describe_images(Owners=["self"])["Images"][0]["ImageId"]
    ssm.put_parameter(Name="/bakery/images/web", Value=previous, Type="String", DataType="aws:ec2:image")
    ec2 = EC2(settings)
    Fault(ec2.client, "CreateLaunchTemplate", code="UnauthorizedOperation", times=None,
          message="You are not authorized to perform this operation.")  # the last thing publish does
    runner = Bake(settings, Inputs.of(load_recipe(recipes, "web")), {}, report=quiet(), cloud=cloud_of(ec2))
    with pytest.raises(CloudError, match="not authorised"):
        runner.run()
    assert ssm.get_parameter(Name="/bakery/images/web")["Parameter"]["Value"] == previous  # put back
    for region in ("us-west-2", "eu-west-1"):
        assert moto.client("ssm", region).describe_parameters()["Parameters"] == []  # created, then deleted
        assert moto.client("ec2", region).describe_images(Owners=["self"])["Images"] == []  # copy deregistered
    assert leftovers(moto.client()) == {}
    assert list((settings.state / "ledger").iterdir()) == []


def test_a_refused_deprecation_fails_the_publish_with_the_endpoints_reason(moto, recipes, builder_host,
                                                                           settings_for):
    """Only an endpoint that lacks EnableImageDeprecation earns a warning (the test above); a
    refusal (here AccessDenied) is the bake's failure, named as such, and the publish is taken back."""
    from bakery.bake.run import Bake
    from bakery.errors import CloudError
    from bakery.config.recipe import load_recipe
    from tests.faults import Fault

    extra = "publish:\n  ssm_parameter: /bakery/images/web\n  deprecate_after_days: 30\n"
    write_recipe(recipes, "web", recipe_text(builder_host.port, OK, extra))
    settings = settings_for(recipes)
    ec2 = EC2(settings)
    Fault(ec2.client, "EnableImageDeprecation", code="AccessDenied", times=None, status=403,
          message="User is not authorized to perform: ec2:EnableImageDeprecation")
    out = io.StringIO()
    runner = Bake(settings, Inputs.of(load_recipe(recipes, "web")), {}, report=Reporter(stream=out),
                  cloud=cloud_of(ec2))
    with pytest.raises(CloudError, match=r"AccessDenied") as failed:
        runner.run()
    assert "does not support" not in failed.value.message + out.getvalue()
    assert moto.client("ssm").describe_parameters()["Parameters"] == []  # the publish was taken back
    assert leftovers(moto.client()) == {}
