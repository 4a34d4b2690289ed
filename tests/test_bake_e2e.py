"""The bake, end to end: moto server as EC2, a real sshd as the builder."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from bakery.bake.inputs import Inputs
from bakery.bake.run import bake
from bakery.progress import Reporter
from tests.support import cloud_of, leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

STEPS = """\
  - name: say hello
    shell: echo "hello from $(hostname)" && echo "$GREETING" > /srv/greeting
    env: {GREETING: "{{ greeting }}"}
  - name: upload payload
    upload: {source: files/payload.bin, dest: /srv/payload.bin, mode: "0640"}
  - name: upload tree
    upload: {source: files/tree, dest: /srv/tree}
  - name: run script
    script: files/check.sh
"""


@pytest.fixture
def recipes(tmp_path, builder_host):
    recipes = tmp_path / "recipes"
    (recipes / "files/tree/sub").mkdir(parents=True)
    (recipes / "files/payload.bin").write_bytes(bytes(range(256)) * 4096)
    (recipes / "files/tree/a.txt").write_text("a\n")
    (recipes / "files/tree/sub/b.txt").write_text("b\n")
    (recipes / "files/check.sh").write_text("#!/bin/sh\nset -e\ntest -f /srv/tree/sub/b.txt\necho checked\n")
    extra = "variables:\n  greeting: {default: hi}\nimage:\n  name: 'web-{{ build_id }}'\n  tags: {team: platform}\n  ssm_parameter: /bakery/test/web\n"
    write_recipe(recipes, "web", recipe_text(builder_host.port, STEPS, extra))
    return recipes


def run(settings, name="web", variables=None, **kw):
    out = io.StringIO()
    manifest = bake(settings, name, variables or {}, report=Reporter(stream=out), **kw)
    return manifest, out.getvalue()


def test_a_recipe_becomes_a_tagged_image_and_nothing_else_is_left(moto, recipes, builder_host, settings_for):
    manifest, log = run(settings_for(recipes), variables={"greeting": "bonjour"})
    ec2 = moto.client()

    assert not manifest.skipped and manifest.ami_id.startswith("ami-")
    image = ec2.describe_images(ImageIds=[manifest.ami_id])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["bakery:recipe"] == "web" and tags["bakery:inputs-hash"] == manifest.inputs_hash
    assert tags["team"] == "platform" and tags["bakery:complete"] == "true"
    snaps = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    snap_tags = {t["Key"]: t["Value"] for t in ec2.describe_snapshots(SnapshotIds=snaps)["Snapshots"][0]["Tags"]}
    assert snap_tags["bakery:build-id"] == manifest.build_id and snap_tags["bakery:role"] == "snapshot"

    # the steps really ran on the builder, uploads arrived byte-exact with their mode
    srv = builder_host.fs / "srv"
    assert (srv / "greeting").read_text() == "bonjour\n"
    payload = (recipes / "files/payload.bin").read_bytes()
    assert hashlib.sha256((srv / "payload.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert oct((srv / "payload.bin").stat().st_mode & 0o777) == "0o640"
    assert (srv / "tree/sub/b.txt").read_text() == "b\n"
    assert "say hello | hello from" in log and "run script | checked" in log
    assert [s.status for s in manifest.steps] == ["ok"] * 4

    # hygiene ran before the snapshot
    assert not (builder_host.fs / "root/.ssh/authorized_keys").exists()
    assert not list((builder_host.fs / "etc/ssh").glob("ssh_host_*"))
    assert (builder_host.fs / "etc/machine-id").read_text() == ""

    # the builder was launched the secure way
    builder = ec2.describe_instances(InstanceIds=[builder_host.instance_id])["Reservations"][0]["Instances"][0]
    assert builder["MetadataOptions"]["HttpTokens"] == "required"
    assert builder["State"]["Name"] == "terminated"
    assert {t["Key"] for t in builder["Tags"]} >= {"bakery:recipe", "bakery:build-id", "bakery:role", "bakery:expires"}

    # published, recorded, and nothing temporary left
    ssm = moto.client("ssm")
    param = ssm.get_parameter(Name="/bakery/test/web")["Parameter"]
    assert param["Value"] == manifest.ami_id and param["DataType"] == "aws:ec2:image"
    on_disk = json.loads(open(manifest.manifest_path).read())
    assert on_disk["ami_id"] == manifest.ami_id and len(on_disk["steps"]) == 4
    assert leftovers(ec2) == {}
    assert not (settings_for(recipes).state / "keys" / manifest.build_id).exists()
    assert list((settings_for(recipes).state / "ledger").iterdir()) == []  # everything settled: no journal


def test_unchanged_inputs_skip_the_bake_and_force_bakes_again(moto, recipes, builder_host, settings_for):
    settings = settings_for(recipes)
    first, _ = run(settings)
    second, _ = run(settings)
    assert second.skipped and second.ami_id == first.ami_id and "inputs unchanged" in second.reason
    assert builder_host.served == [builder_host.instance_id]  # the skip launched no builder

    forced, _ = run(settings, force=True)
    assert not forced.skipped and forced.ami_id != first.ami_id
    assert forced.inputs_hash == first.inputs_hash and len(builder_host.served) == 2
    assert leftovers(moto.client()) == {}


def test_changed_inputs_bake_a_new_image(moto, recipes, builder_host, settings_for):
    settings = settings_for(recipes)
    first, _ = run(settings)
    by_var, _ = run(settings, variables={"greeting": "changed"})
    assert not by_var.skipped and by_var.inputs_hash != first.inputs_hash

    (recipes / "files/tree/a.txt").write_text("edited\n")
    by_file, _ = run(settings)
    assert not by_file.skipped and by_file.inputs_hash not in (first.inputs_hash, by_var.inputs_hash)
    assert len(builder_host.served) == 3


def test_the_builder_is_launched_locked_down(moto, tmp_path, builder_host, settings_for):
    """IMDSv2, encrypted root volume, tags at creation, a client token, the instance profile."""
    from bakery.bake.run import Bake
    from bakery.cloud.ec2 import EC2
    from bakery.config.recipe import load_recipe

    iam = moto.client("iam")
    iam.create_role(RoleName="bake", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="bake-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="bake-profile", RoleName="bake")
    recipes = tmp_path / "recipes"
    extra = ("  iam_instance_profile: bake-profile\n"
             "  root_volume: {size_gb: 12, type: gp3, encrypted: true, kms_key_id: alias/bake}\n")
    body = recipe_text(builder_host.port, "  - {name: hi, shell: echo hi}\n").replace(
        "  ssh:", extra + "  ssh:", 1)
    write_recipe(recipes, "web", body)
    settings = settings_for(recipes)
    ec2 = EC2(settings)
    sent: list[dict] = []
    ec2.client.meta.events.register("provide-client-params.ec2.RunInstances", lambda params, **_: sent.append(params))
    Bake(settings, Inputs.of(load_recipe(recipes, "web")), {}, report=Reporter(quiet=True), cloud=cloud_of(ec2)).run()

    (params,) = sent
    assert params["MetadataOptions"]["HttpTokens"] == "required"
    ebs = params["BlockDeviceMappings"][0]["Ebs"]
    assert ebs == {"VolumeSize": 12, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True,
                   "KmsKeyId": "alias/bake"}
    assert params["IamInstanceProfile"] == {"Name": "bake-profile"} and len(params["ClientToken"]) == 36
    kinds = {spec["ResourceType"] for spec in params["TagSpecifications"]}
    assert kinds == {"instance", "volume", "network-interface"}
    group = params["NetworkInterfaces"][0]["Groups"][0]
    assert "ssh_keys" in builder_host.user_data and "ed25519_private" in builder_host.user_data
    # the temporary group admitted SSH from the caller only (it is gone now: look at what was sent)
    assert group.startswith("sg-") and leftovers(moto.client()) == {}


def test_source_from_an_ssm_parameter(moto, tmp_path, builder_host, settings_for):
    ec2 = moto.client()
    source = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]
    moto.client("ssm").put_parameter(Name="/images/debian", Value=source, Type="String", DataType="aws:ec2:image")
    recipes = tmp_path / "recipes"
    body = recipe_text(builder_host.port, "  - {name: hi, shell: echo hi}\n").replace(
        '  filter: {name: "test-debian-12-amd64-*", owners: [self]}', "  ssm_parameter: /images/debian")
    write_recipe(recipes, "web", body)
    manifest, _ = run(settings_for(recipes))
    assert manifest.source_ami == source


def test_a_proxy_command_reaches_the_builder(moto, tmp_path, builder_host, settings_for):
    recipes = tmp_path / "recipes"
    body = recipe_text(builder_host.port, "  - {name: hi, shell: echo via proxy}\n").replace(
        "interface: host,", "interface: host, proxy_command: 'socat - TCP:%h:%p',")
    write_recipe(recipes, "web", body)
    manifest, log = run(settings_for(recipes))
    assert "hi | via proxy" in log and manifest.ami_id
    assert leftovers(moto.client()) == {}


def test_a_recipe_remembered_unchanged_is_baked_from_its_full_models_when_it_is_not_skipped(
        moto, recipes, builder_host, settings_for):
    """The skip decision can come from the remembered inputs (no models loaded); a bake that goes
    ahead loads and uses the recipe's models."""
    import os
    import time

    for path in recipes.rglob("*"):
        os.utime(path, (time.time() - 60, time.time() - 60))  # older than the racy window
    settings = settings_for(recipes)
    first, _ = run(settings, variables={"greeting": "bonjour"})
    assert (settings.state / "inputs/web.json").is_file()
    again, log = run(settings, variables={"greeting": "bonjour"}, force=True)
    assert not again.skipped and again.ami_id != first.ami_id and again.inputs_hash == first.inputs_hash
    assert "step 1/" in log
