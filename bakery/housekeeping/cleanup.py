"""Remove what one run left behind, found by its tag (after --keep-on-error, a crash, or an
answer a signal cut off).

Order matters: instances first (they hold the security group and key pair), then the security
group (retrying while the ENI detaches), then key pairs, then images that never completed and
their snapshots. A finished image is the product, and an image a smoke test rejected is kept for
inspection: clean-up never touches either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bakery.cloud import tags as T


@dataclass
class CleanReport:
    build_id: str
    removed: list[str] = field(default_factory=list)
    dry_run: bool = False


def clean_build(ec2, build_id: str, *, dry_run: bool = False) -> CleanReport:
    return clean_tagged(ec2, T.BUILD_ID, build_id, dry_run=dry_run)


def clean_launch(ec2, launch_id: str) -> CleanReport:
    return clean_tagged(ec2, T.LAUNCH_ID, launch_id)


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
