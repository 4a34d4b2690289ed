"""Publishing a smoke-tested image: copies to other regions (in parallel), launch permissions
for other accounts, the AMI id in SSM in every region, a pinned launch template version,
and a deprecation time.

Everything published is registered on the bake's clean-up stack (and its ledger) as it is
made, so a publish that fails half-way leaves no orphan copy in some region and no SSM value or
template version naming an image that is then removed: publishing is all or nothing.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from bakery.cloud.ec2 import EC2, snapshots_of
from bakery.errors import CloudError
from bakery.progress import Reporter
from bakery.config.recipe import Publish


@dataclasses.dataclass
class Published:
    images: dict[str, str]  # region -> AMI id
    ssm_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    shared_with: list[str] = dataclasses.field(default_factory=list)
    launch_template: str | None = None
    deprecate_at: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


def publish(ec2: EC2, spec: Publish, image_id: str, name: str, tags: dict[str, str], *, report: Reporter,
            created) -> Published:
    """`created(kind, id, region, label, undo, **extra)` journals a resource and registers its undo on
    the caller's stack (run only if the bake fails before the image is finished)."""
    result = Published(images={ec2.region: image_id})
    regions = {ec2.region: ec2}
    for region in spec.regions:
        regions[region] = EC2(dataclasses.replace(ec2.settings, region=region), session=ec2.session)

    if spec.regions:
        with report.stage(f"copy to {', '.join(spec.regions)}") as s:
            def copy(region: str) -> tuple[str, str]:
                target = regions[region]
                kms = spec.kms_key_ids.get(region)
                resp = target.call(f"copy-image to {region}", target.client.copy_image, SourceImageId=image_id,
                                   SourceRegion=ec2.region, Name=name, CopyImageTags=True,
                                   **({"Encrypted": True, "KmsKeyId": kms} if kms else {}))
                copy_id = resp["ImageId"]
                # registered as soon as it exists: a copy failing in another region must not orphan this one
                created("image", copy_id, region, f"copy {copy_id} in {region}",
                        lambda: target.deregister_image(copy_id))
                return region, copy_id

            with ThreadPoolExecutor(max_workers=len(spec.regions)) as pool:
                futures = [pool.submit(copy, region) for region in spec.regions]
            copies = [f.result() for f in futures]  # every copy has returned (or failed) by now
            for region, copy_id in copies:
                result.images[region] = copy_id
            with ThreadPoolExecutor(max_workers=len(copies)) as pool:
                ready = list(pool.map(lambda rc: regions[rc[0]].wait_image_available(rc[1], timeout=3600), copies))
            for (region, copy_id), image in zip(copies, ready):  # CopyImageTags is not honoured everywhere
                target = regions[region]
                target.tag([copy_id], {**tags, "bakery:copied-from": f"{ec2.region}/{image_id}"})
                target.tag(snapshots_of(image), {**tags, "bakery:role": "snapshot"})
            s.detail = ", ".join(f"{r}: {i}" for r, i in copies)

    if spec.share_with:
        with report.stage(f"share with {', '.join(spec.share_with)}"):
            for region, ami in result.images.items():
                target = regions[region]
                target.call("modify-image-attribute", target.client.modify_image_attribute, ImageId=ami,
                            LaunchPermission={"Add": [{"UserId": a} for a in spec.share_with]})
                for snap in target.image_snapshots(ami):
                    target.call("modify-snapshot-attribute", target.client.modify_snapshot_attribute,
                                SnapshotId=snap, Attribute="createVolumePermission", OperationType="add",
                                UserIds=spec.share_with)
            result.shared_with = list(spec.share_with)

    if spec.ssm_parameter:
        with report.stage(f"publish {spec.ssm_parameter} in {len(result.images)} region(s)"):
            for region, ami in result.images.items():
                target, param = regions[region], spec.ssm_parameter
                previous = target.parameter_value(param)
                created("ssm-parameter", param, region, f"SSM parameter {param} in {region}",
                        lambda t=target, p=param, v=previous, a=ami: t.restore_parameter(p, v, a),
                        previous=previous, value=ami)
                result.ssm_versions[region] = target.publish_parameter(param, ami)

    if spec.launch_template:
        with report.stage(f"launch template {spec.launch_template.name}") as s:
            lt = spec.launch_template.name
            version = ec2.new_launch_template_version(
                lt, {"ImageId": image_id}, f"bakery {name}", merge_latest=True,
                initial={"MetadataOptions": {"HttpTokens": "required"}})
            created("launch-template-version", f"{lt}:{version}", ec2.region, f"launch template {lt} version {version}",
                    lambda: ec2.delete_launch_template_version(lt, version), name=lt, version=version)
            result.launch_template = f"{spec.launch_template.name}:{version}"
            s.detail = result.launch_template

    if spec.deprecate_after_days:
        when = (datetime.now(timezone.utc) + timedelta(days=spec.deprecate_after_days)).replace(microsecond=0)
        for region, ami in result.images.items():
            target = regions[region]
            try:
                target.call("enable-image-deprecation", target.client.enable_image_deprecation, ImageId=ami,
                            DeprecateAt=when)
                result.deprecate_at = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            except CloudError as exc:
                # moto and some compatible endpoints lack EnableImageDeprecation: say so, do not fail the bake
                warning = f"deprecation time not set on {ami} in {region}: the endpoint does not support it ({exc.message})"
                result.warnings.append(warning)
                report.warn(warning)
    return result
