"""Remove what one run left behind, found by its tag (after --keep-on-error, a crash, or an
answer a signal cut off).

Order matters: instances first (they hold the security group and key pair), then the security
group (retrying while the ENI detaches), then key pairs, then images that never completed and
their snapshots, then the build's private key file on this machine (kept with a --keep-on-error
builder so `ssh -i` can reach it; useless once the key pair is gone). A finished image is the
product, and an image a smoke test or the vulnerability gate rejected is kept for inspection:
clean-up never touches either.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bakery.cloud import tags as T


@dataclass
class CleanReport:
    build_id: str
    removed: list[str] = field(default_factory=list)
    dry_run: bool = False


# A build id names a directory under STATE/keys: one plain name, never a path (ids also come from
# tags, which anyone with access to the account can write).
PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def key_dir(keys_dir: Path, build_id: str) -> Path | None:
    """Where a build keeps its private key (0600 in 0700); None for an id that is not a plain name."""
    return keys_dir / build_id if PLAIN_ID.fullmatch(build_id) else None


def clean_build(ec2, build_id: str, *, dry_run: bool = False, keys_dir: Path | None = None) -> CleanReport:
    """Remove one build's leftovers in the cloud and, given `keys_dir` (STATE/keys), its private key."""
    report = clean_tagged(ec2, T.BUILD_ID, build_id, dry_run=dry_run)
    key = key_dir(keys_dir, build_id) if keys_dir is not None else None
    if key is not None and key.exists():
        report.removed.append(f"private key {key}")
        if not dry_run:
            shutil.rmtree(key, ignore_errors=True)
    return report


def clean_launch(ec2, launch_id: str) -> CleanReport:
    """A launch's leftovers: its Auto Scaling groups first (each would replace the instances taken
    from it), then its instances."""
    groups = [g["AutoScalingGroupName"] for g in ec2.auto_scaling_groups_tagged(T.LAUNCH_ID, launch_id)]
    for name in groups:
        ec2.delete_auto_scaling_group(name)
    report = clean_tagged(ec2, T.LAUNCH_ID, launch_id)
    report.removed[:0] = [f"Auto Scaling group {name}" for name in groups]
    return report


def clean_tagged(ec2, key: str, run_id: str, *, dry_run: bool = False) -> CleanReport:
    report = CleanReport(run_id, dry_run=dry_run)
    found = ec2.tagged(key, run_id)
    instances = [i["InstanceId"] for i in found["instances"]]
    for iid in instances:
        report.removed.append(f"instance {iid}")
        if not dry_run:
            ec2.terminate_instance(iid)
    if not dry_run:
        for iid in instances:
            ec2.wait_instance_state(iid, "terminated", timeout=600)
    for group in found["security_groups"]:
        report.removed.append(f"security group {group['GroupId']}")
        if not dry_run:
            ec2.delete_security_group(group["GroupId"])
    for key_pair in found["key_pairs"]:
        report.removed.append(f"key pair {key_pair['KeyName']}")
        if not dry_run:
            ec2.delete_key_pair(key_pair["KeyName"])
    for image in found["images"]:
        if T.is_product(T.tags_of(image)):
            continue
        report.removed.append(f"unfinished image {image['ImageId']}")
        if not dry_run:
            ec2.deregister_image(image["ImageId"])
    return report
