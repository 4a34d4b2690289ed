"""Remove what one build left behind (after --keep-on-error, or a crash), found by its tags.

Order matters: instances first (they hold the security group and key pair), then the
security group (retrying while the ENI detaches), then key pairs, then images that
never completed and their snapshots. A completed image is the product: never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bakery.cloud.ec2 import EC2


@dataclass
class CleanReport:
    build_id: str
    removed: list[str] = field(default_factory=list)
    dry_run: bool = False


def clean_build(ec2: EC2, build_id: str, *, dry_run: bool = False) -> CleanReport:
    report = CleanReport(build_id, dry_run=dry_run)
    tag = [{"Name": "tag:bakery:build-id", "Values": [build_id]}]

    reservations = ec2.describe_all("describe_instances", "Reservations", Filters=tag)
    instances = [i["InstanceId"] for r in reservations for i in r["Instances"]
                 if i["State"]["Name"] not in ("terminated",)]
    for iid in instances:
        report.removed.append(f"instance {iid}")
        if not dry_run:
            ec2.terminate_instance(iid)
    if not dry_run:
        for iid in instances:
            ec2.wait_instance_state(iid, "terminated", timeout=600)

    for group in ec2.describe_all("describe_security_groups", "SecurityGroups", Filters=tag):
        report.removed.append(f"security group {group['GroupId']}")
        if not dry_run:
            ec2.delete_security_group(group["GroupId"])

    for key in ec2.describe_all("describe_key_pairs", "KeyPairs", Filters=tag):
        report.removed.append(f"key pair {key['KeyName']}")
        if not dry_run:
            ec2.delete_key_pair(key["KeyName"])

    images = ec2.describe_all("describe_images", "Images", Owners=["self"], Filters=tag)
    for image in images:
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        if tags.get("bakery:complete") == "true" or tags.get("bakery:smoke") == "failed":
            continue  # the product, or a rejected image kept (marked) for inspection
        report.removed.append(f"unfinished image {image['ImageId']}")
        if not dry_run:
            ec2.deregister_image(image["ImageId"])
    return report
