"""Checkpoints (issue 17 item 2), against a moto server and a real sshd standing in for every
builder: a step marked `checkpoint: true` leaves an image made as the product is made (hygiene,
the leftover check, a stopped builder), the bake goes on from it on a new builder, and the next
`bake` whose steps up to there are unchanged starts from it. `rebake` and `--no-cache` never do;
prune and the janitor remove a checkpoint once it has expired.

On moto an image holds nothing: that the checkpoint carries the first steps' files into the
resumed builder is shown on the local cloud (tests/local/test_checkpoints_local.py). Here the
builder's files outlive every builder (one sshd plays them all), so a step that did not run is
told by the count of lines it appends."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from bakery.bake.inputs import inputs_hash, load_inputs, prefix_hashes
from bakery.bake.rebake import rebake
from bakery.bake.run import bake
from bakery.cloud import tags as T
from bakery.errors import StepFailed
from bakery.housekeeping.janitor import janitor
from bakery.housekeeping.prune import prune
from bakery.progress import Reporter
from tests.support import leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e


def steps(last: str = "echo v1", first_marked: bool = True) -> str:
    return ("  - name: heavy\n    shell: echo ran >> /srv/heavy.log\n"
            + ("    checkpoint: true\n" if first_marked else "")
            + f"  - name: last\n    shell: {last}\n")


def checkpoints(ec2) -> list[dict]:
    return [i for i in ec2.describe_images(Owners=["self"])["Images"]
            if {"Key": T.ROLE, "Value": T.ROLE_CHECKPOINT} in i.get("Tags", [])]


def launched_from(ec2) -> list[str]:
    """The image of every builder, in launch order."""
    found = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
             if {"Key": T.ROLE, "Value": "builder"} in i.get("Tags", [])]
    return [i["ImageId"] for i in sorted(found, key=lambda i: i["LaunchTime"])]


def stage_order(out: str, *needles: str) -> list[int]:
    lines = out.splitlines()
    return [next(n for n, line in enumerate(lines) if needle in line) for needle in needles]


@pytest.fixture
def project(tmp_path, builder_host, settings_for):
    recipes = tmp_path / "recipes"

    def write(text: str):
        write_recipe(recipes, "web", recipe_text(builder_host.port, text))
        return settings_for(recipes)
    return write


def test_a_marked_step_leaves_a_cleaned_checkpoint_and_the_bake_goes_on_from_it(moto, project, builder_host):
    settings = project(steps())
    out = io.StringIO()
    manifest = bake(settings, "web", {}, report=Reporter(stream=out))
    ec2 = moto.client()
    [image] = checkpoints(ec2)
    tags = T.tags_of(image)
    prefixes = prefix_hashes(load_inputs(settings.recipes, settings.state, "web"), {}, manifest.source_ami)
    assert tags[T.CHECKPOINT] == prefixes[0] and tags[T.CHECKPOINT_STEP] == "1/2"
    assert tags[T.RECIPE] == "web" and tags[T.BUILD_ID] == manifest.build_id
    expires = datetime.strptime(tags[T.EXPIRES], T.TIME_FORMAT).replace(tzinfo=timezone.utc)
    assert timedelta(days=6, hours=23) < expires - datetime.now(timezone.utc) <= timedelta(days=7)
    # made as the product is made: cleaned and checked on a stopped builder, then imaged
    text = out.getvalue()
    heavy, hygiene, leftover, stop, made, launch = stage_order(
        text, "step 1/2: heavy", "clean image (hygiene)", "check image for leftovers", "stop builder",
        "checkpoint after step 1/2", "from checkpoint")
    assert heavy < hygiene < leftover < stop < made < launch
    assert manifest.checkpoints == [{"image": image["ImageId"], "after_step": 1}]
    # the last step ran on a new builder started from the checkpoint; the first one is gone
    assert launched_from(ec2) == [manifest.source_ami, image["ImageId"]]
    assert (builder_host.fs / "srv/heavy.log").read_text() == "ran\n"
    assert [(s.name, s.status) for s in manifest.steps] == [("heavy", "ok"), ("last", "ok")]
    assert leftovers(ec2) == {}


def test_the_next_bake_with_only_a_later_step_changed_starts_from_the_checkpoint(moto, project, builder_host):
    first = bake(project(steps("echo v1")), "web", {}, report=Reporter(stream=io.StringIO()))
    settings = project(steps("echo v2"))
    out = io.StringIO()
    manifest = bake(settings, "web", {}, report=Reporter(stream=out))
    ec2 = moto.client()
    [image] = checkpoints(ec2)
    assert manifest.resumed_from == {"image": image["ImageId"], "after_step": 1}
    assert [(s.name, s.status) for s in manifest.steps] == [("heavy", "cached"), ("last", "ok")]
    assert f"step 1/2: heavy: cached in checkpoint {image['ImageId']}" in out.getvalue()
    assert "last | v2" in out.getvalue()
    assert (builder_host.fs / "srv/heavy.log").read_text() == "ran\n"  # the heavy step did not run again
    assert launched_from(ec2)[-1] == image["ImageId"] and manifest.checkpoints == []
    # the image still says what the whole recipe is: the same inputs hash a bake of every step gives
    inputs = load_inputs(settings.recipes, settings.state, "web")
    assert manifest.inputs_hash == inputs_hash(inputs, {}, first.source_ami) != first.inputs_hash
    assert leftovers(ec2) == {}


def test_a_changed_step_before_the_checkpoint_bakes_from_the_source_and_leaves_a_new_checkpoint(
        moto, project, builder_host):
    bake(project(steps()), "web", {}, report=Reporter(stream=io.StringIO()))
    changed = steps().replace("echo ran", "echo ran again")
    manifest = bake(project(changed), "web", {}, report=Reporter(stream=io.StringIO()))
    assert manifest.resumed_from is None and len(manifest.checkpoints) == 1
    assert launched_from(moto.client())[-2] == manifest.source_ami
    assert len(checkpoints(moto.client())) == 2


def test_no_cache_and_rebake_run_every_step_and_keep_no_checkpoint(moto, project, builder_host):
    bake(project(steps("echo v1")), "web", {}, report=Reporter(stream=io.StringIO()))
    fresh = bake(project(steps("echo v2")), "web", {}, report=Reporter(stream=io.StringIO()), cache=False)
    assert fresh.resumed_from is None and fresh.checkpoints == []
    assert (builder_host.fs / "srv/heavy.log").read_text() == "ran\nran\n"
    settings = project(steps("echo v3"))
    [row] = rebake(settings, ["web"], report=Reporter(stream=io.StringIO()))
    assert row.decision == "rebaked", row
    assert (builder_host.fs / "srv/heavy.log").read_text() == "ran\nran\nran\n"
    assert len(checkpoints(moto.client())) == 1  # only the first bake's
    assert launched_from(moto.client())[-1] == fresh.source_ami


def test_a_failing_later_step_keeps_the_checkpoint_and_the_fixed_recipe_resumes_from_it(moto, project, builder_host):
    with pytest.raises(StepFailed, match="step 2/2: last exited with status 3"):
        bake(project(steps("exit 3")), "web", {}, report=Reporter(stream=io.StringIO()))
    ec2 = moto.client()
    [image] = checkpoints(ec2)
    assert leftovers(ec2) == {}  # the builders, key pair and group went; the checkpoint stayed
    manifest = bake(project(steps("echo fixed")), "web", {}, report=Reporter(stream=io.StringIO()))
    assert manifest.resumed_from == {"image": image["ImageId"], "after_step": 1}
    assert (builder_host.fs / "srv/heavy.log").read_text() == "ran\n"


def test_a_checkpoint_that_would_carry_credentials_is_refused_and_nothing_is_left(moto, project, builder_host):
    leaky = ("  - name: heavy\n    shell: mkdir -p /root/.aws && printf 'aws_secret_access_key = x\\n'"
             " > /root/.aws/credentials\n    checkpoint: true\n  - name: last\n    shell: 'true'\n")
    with pytest.raises(StepFailed, match="refusing to snapshot: the image would carry /root/.aws/credentials"):
        bake(project(leaky), "web", {}, report=Reporter(stream=io.StringIO()))
    assert checkpoints(moto.client()) == [] and leftovers(moto.client()) == {}


def expire(ec2, image_id: str) -> None:
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).strftime(T.TIME_FORMAT)
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": T.EXPIRES, "Value": past}])


def test_an_expired_checkpoint_is_not_resumed_from_and_prune_and_the_janitor_remove_it(moto, project, builder_host):
    settings = project(steps())
    bake(settings, "web", {}, report=Reporter(stream=io.StringIO()))
    ec2 = moto.client()
    [old] = checkpoints(ec2)
    expire(ec2, old["ImageId"])
    manifest = bake(project(steps("echo v2")), "web", {}, report=Reporter(stream=io.StringIO()))
    assert manifest.resumed_from is None  # expired: as if it were gone
    live = [i["ImageId"] for i in checkpoints(ec2) if i["ImageId"] != old["ImageId"]]
    assert len(live) == 1

    from bakery.cloud.connect import open_cloud

    cloud = open_cloud(settings)
    dry = janitor(cloud.ec2, older_than=None, run_id=None, dry_run=True)
    assert any(f"expired checkpoint {old['ImageId']}" in items for items in dry.builds.values())
    assert {i["ImageId"] for i in checkpoints(ec2)} == {old["ImageId"], *live}
    [report] = prune(cloud.ec2, "web", 5, dry_run=False, report=Reporter(stream=io.StringIO()))
    assert report.removed == [old["ImageId"]]
    assert [i["ImageId"] for i in checkpoints(ec2)] == live  # the live one stays, for the next bake

    expire(ec2, live[0])
    done = janitor(cloud.ec2, older_than=None, run_id=None, dry_run=False)
    assert any(f"expired checkpoint {live[0]}" in items for items in done.builds.values())
    assert checkpoints(ec2) == []
    snapshots = [s for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
                 if {"Key": T.ROLE, "Value": "snapshot"} in s.get("Tags", [])
                 and {"Key": T.CHECKPOINT_STEP, "Value": "1/2"} in s.get("Tags", [])]
    assert snapshots == []


def test_a_resumed_images_provenance_names_the_checkpoint_it_was_baked_on(moto, tmp_path, builder_host, settings_for):
    from bakery.cloud.connect import open_cloud
    from bakery.evidence.attestation import trusted_key, verify_image
    from tests.support import signing_key_pair

    private, public = signing_key_pair(tmp_path)
    moto.client("s3").create_bucket(Bucket="evidence")
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, steps("echo v1")))
    settings = settings_for(recipes, signing_key=str(private), verify_key=str(public), evidence_bucket="evidence")
    first = bake(settings, "web", {}, report=Reporter(stream=io.StringIO()))
    write_recipe(recipes, "web", recipe_text(builder_host.port, steps("echo v2")))
    second = bake(settings, "web", {}, report=Reporter(stream=io.StringIO()))
    [kept] = first.checkpoints
    assert second.resumed_from["image"] == kept["image"]
    ec2 = open_cloud(settings).ec2
    for manifest in (first, second):  # the one that kept it and the one that resumed from it
        statement = verify_image(ec2, settings.state / "evidence", trusted_key(settings), manifest.ami_id)
        uris = [uri for uri, _ in statement.materials]
        assert uris[:2] == [f"arn:aws:ec2:us-east-1::image/{manifest.source_ami}",
                            f"arn:aws:ec2:us-east-1::image/{kept['image']}"], uris
