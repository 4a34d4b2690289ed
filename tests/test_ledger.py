"""The resource ledger: each run journals what it creates, by id, before it waits on it.

A run that ends well leaves no journal; a run that dies leaves one whose lock is free, and the
janitor removes exactly what it names, in dependency order, restores what a publish overwrote,
and spares what is not its to remove.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from bakery.housekeeping import ledger
from bakery.cloud.ec2 import EC2
from bakery.housekeeping.janitor import janitor
from bakery.housekeeping.ledger import Ledger
from tests.support import ROOT, leftovers


def test_a_run_that_settles_everything_leaves_no_journal(tmp_path):
    with Ledger(tmp_path, "b-1", "bake web") as journal:
        journal.created("instance", "i-1", "us-east-1")
        journal.created("image", "ami-1", "us-east-1")
        journal.removed("instance", "i-1", "us-east-1")
        journal.kept("image", "ami-1", "us-east-1")
    assert list(tmp_path.iterdir()) == []


def test_an_unsettled_run_keeps_its_journal_and_a_torn_last_line_is_ignored(tmp_path):
    with Ledger(tmp_path, "b-2", "bake web") as journal:
        journal.created("key-pair", "bakery-web-b-2", "us-east-1")
        journal.created("ssm-parameter", "/img/web", "eu-west-1", previous=None, value="ami-9")
        journal.removed("key-pair", "bakery-web-b-2", "us-east-1")
    path = tmp_path / "b-2.jsonl"
    with path.open("a") as fh:
        fh.write('{"event": "created", "kind": "instance", "id": "i-')  # died mid-write
    start, pending = ledger.read(path)
    assert start["what"] == "bake web"
    assert pending == [ledger.Entry("ssm-parameter", "/img/web", "eu-west-1")]
    assert pending[0].extra == {"previous": None, "value": "ami-9"}
    for line in path.read_text().splitlines()[:-1]:
        assert json.loads(line)["t"].endswith("Z")


def test_a_run_is_live_while_its_process_holds_the_journal_even_after_sigkill_it_is_dead(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from bakery.housekeeping.ledger import Ledger;"
         f"j = Ledger(Path({str(tmp_path)!r}), 'b-3', 'bake db'); j.created('instance', 'i-3', 'us-east-1');"
         "print('ready', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        dead, live = ledger.dead_runs(tmp_path)
        assert (dead, live) == ([], ["b-3"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    dead, live = ledger.dead_runs(tmp_path)
    assert live == [] and [(d.run, d.what, d.outstanding) for d in dead] == [
        ("b-3", "bake db", [ledger.Entry("instance", "i-3", "us-east-1")])]


@pytest.mark.e2e
def test_janitor_removes_a_dead_runs_resources_by_id_in_order_and_spares_what_is_not_its(moto, tmp_path,
                                                                                          settings_for):
    ec2 = moto.client()
    facade = EC2(settings_for(tmp_path / "recipes"))
    run = "b-20260101000000-abcdef"
    mine = [{"Key": "bakery:build-id", "Value": run}]
    tag = lambda kind, tags: [{"ResourceType": kind, "Tags": tags}]  # noqa: E731
    source = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]

    instance = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1,
                                 TagSpecifications=tag("instance", mine))["Instances"][0]["InstanceId"]
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    untagged_group = ec2.create_security_group(GroupName="g-untagged", Description="d", VpcId=vpc)["GroupId"]
    foreign_group = ec2.create_security_group(
        GroupName="g-foreign", Description="d", VpcId=vpc,
        TagSpecifications=tag("security-group", [{"Key": "bakery:build-id", "Value": "b-someone-else"}]))["GroupId"]
    ec2.import_key_pair(KeyName=f"bakery-web-{run}", PublicKeyMaterial=_public_key(),
                        TagSpecifications=tag("key-pair", mine))
    unfinished = ec2.create_image(InstanceId=instance, Name="web-unfinished",
                                  TagSpecifications=tag("image", mine))["ImageId"]
    snapshot = ec2.describe_images(ImageIds=[unfinished])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    finished = ec2.create_image(InstanceId=instance, Name="web-finished", TagSpecifications=tag(
        "image", mine + [{"Key": "bakery:complete", "Value": "true"}]))["ImageId"]
    facade.publish_parameter("/images/web", source, "before")  # the value before the dead run
    facade.publish_parameter("/images/web", unfinished, "bakery b-dead")  # what the dead run published
    facade.new_launch_template_version("web", {"ImageId": source}, "someone's", tags={"bakery:recipe": "web"})
    facade.new_launch_template_version("web", {"ImageId": unfinished}, "the dead run's", tags={"bakery:recipe": "web"})

    with Ledger(tmp_path / "ledger", run, "bake web") as journal:  # closes with everything outstanding
        for kind, rid in [("instance", instance), ("security-group", untagged_group),
                          ("security-group", foreign_group), ("key-pair", f"bakery-web-{run}"),
                          ("image", unfinished), ("image", finished)]:
            journal.created(kind, rid, "us-east-1")
        journal.created("ssm-parameter", "/images/web", "us-east-1", previous=source, value=unfinished)
        journal.created("launch-template-version", "web:2", "us-east-1", name="web", version=2)
    before = leftovers(ec2)

    dry = janitor(facade, older_than=None, run_id=None, dry_run=True, ledger_dir=tmp_path / "ledger")
    assert leftovers(ec2) == before and (tmp_path / "ledger" / f"{run}.jsonl").exists()
    report = janitor(facade, older_than=None, run_id=None, dry_run=False, ledger_dir=tmp_path / "ledger")
    assert [item.split()[0] for item in dry.builds[run]] == [
        "instance", "ssm-parameter", "launch-template-version", "security-group", "key-pair", "image"]
    # moto 5.2 lacks DeleteLaunchTemplateVersions: what cannot be removed is reported in one line and
    # stays in the ledger for the next janitor, while everything else goes
    assert report.builds[run] == [item for item in dry.builds[run] if not item.startswith("launch-template")]
    assert len(report.failed) == 1 and report.failed[0].startswith(f"{run}: launch-template-version web:2")

    assert ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"] \
        == "terminated"
    groups = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert untagged_group not in groups and foreign_group in groups  # ours by record; another run's by tag
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    images = {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}
    assert unfinished not in images and finished in images
    assert snapshot not in {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert facade.parameter_value("/images/web") == source
    _, pending = ledger.read(tmp_path / "ledger" / f"{run}.jsonl")
    assert pending == [ledger.Entry("launch-template-version", "web:2", "us-east-1")]


def _public_key() -> bytes:
    from bakery.remote import keys

    return keys.generate("t").public_openssh.encode()


def test_a_journal_has_one_owner(tmp_path):
    with Ledger(tmp_path, "b-4", "bake web"):
        with pytest.raises(BlockingIOError):
            Ledger(tmp_path, "b-4", "bake web")
        assert ledger.dead_runs(tmp_path) == ([], ["b-4"])
    assert ledger.dead_runs(tmp_path) == ([], [])  # settled and unlinked
