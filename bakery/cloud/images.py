"""Images: resolving a recipe's source, finding bakery's own images, making, copying, sharing and
removing them. A mixin of the EC2 facade."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from bakery.cloud import tags as T
from bakery.errors import CloudError, ConfigError
from bakery.progress import say
from bakery.waits import Backoff, time_scale, wait_for


@dataclass(frozen=True)
class SourceImage:
    id: str
    name: str
    root_device_name: str
    owner: str


def source_image(image: dict) -> SourceImage:
    return SourceImage(id=image["ImageId"], name=image.get("Name", ""),
                       root_device_name=image.get("RootDeviceName") or "/dev/xvda",
                       owner=image.get("OwnerId", ""))


def snapshots_of(image: dict) -> list[str]:
    """The EBS snapshots behind an image, from its DescribeImages record."""
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]


class SnapshotProgress:
    """How far an image's snapshots are (DescribeSnapshots' Progress), read at most every
    INTERVAL seconds (scaled as every wait's clock is, BAKERY_TIME_SCALE): the image wait polls
    about once a second and its call budget is for that; a snapshot's progress moves by the minute.
    A read that fails (a snapshot not yet visible, no permission) keeps the last figure: progress
    is for the reader, never a reason for the wait to fail."""

    INTERVAL = 10.0

    def __init__(self, ec2) -> None:
        self.ec2 = ec2
        self.read_at: float | None = None
        self.said = ""

    def of(self, snapshot_ids: list[str]) -> str:
        """", snapshot 45%" (", snapshots 45%, 12%" for several), or "" before there is one."""
        now = time.monotonic()
        if not snapshot_ids or (self.read_at is not None and now - self.read_at < self.INTERVAL * time_scale()):
            return self.said
        self.read_at = now
        try:
            found = self.ec2.call("describe-snapshots", self.ec2.client.describe_snapshots,
                                  SnapshotIds=snapshot_ids).get("Snapshots", [])
        except CloudError:
            return self.said
        shares = [snap.get("Progress") or "0%" for snap in sorted(found, key=lambda s: s["SnapshotId"])]
        if shares:
            self.said = f", snapshot{'s' if len(shares) > 1 else ''} {', '.join(shares)}"
        return self.said


def _is_deprecated(image: dict) -> bool:
    when = image.get("DeprecationTime")
    if not when:
        return False
    try:
        return datetime.fromisoformat(when.replace("Z", "+00:00")) <= datetime.now(timezone.utc)
    except ValueError:
        return False


def _newest_first(images: list[dict]) -> list[dict]:
    return sorted(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")), reverse=True)


class ImagesAPI:
    """Image operations of the EC2 facade."""

    def resolve_source(self, source: dict) -> SourceImage:
        """The AMI a recipe starts from (its `source`, as data): a fixed id, the newest match of a
        filter, the id an SSM parameter holds, or the newest finished image of another recipe."""
        if source.get("ssm_parameter"):
            value = self.parameter(source["ssm_parameter"])
            return source_image(self.available_image(value, f"SSM parameter {source['ssm_parameter']}"))
        if source.get("ami"):
            return source_image(self.available_image(source["ami"], "source.ami"))
        if source.get("recipe"):
            parent = source["recipe"]
            images = self.bakery_images(recipe=parent)
            if not images:
                raise ConfigError(f"source.recipe: recipe {parent!r} has no finished image in {self.region}: "
                                  f"bake it first (invoke bake --recipe {parent})")
            return source_image(images[0])
        f = source["filter"]
        filters = [{"Name": "name", "Values": [f["name"]]}, {"Name": "state", "Values": ["available"]},
                   {"Name": "architecture", "Values": [f["architecture"]]}]
        images = self.describe_images(Owners=f["owners"], Filters=filters, IncludeDeprecated=f["include_deprecated"])
        # Some endpoints ignore IncludeDeprecated; re-check here so the rule holds everywhere.
        if not f["include_deprecated"]:
            images = [i for i in images if not _is_deprecated(i)]
        images = [i for i in images if fnmatch.fnmatchcase(i.get("Name", ""), f["name"])]
        if not images:
            raise ConfigError(f"source.filter: no available {f['architecture']} image named {f['name']!r} "
                              f"owned by {', '.join(f['owners'])} in {self.region}")
        images = _newest_first(images)
        if len(images) > 1 and not f["most_recent"]:
            raise ConfigError(f"source.filter: {len(images)} images match {f['name']!r}; "
                              "narrow the filter or set most_recent: true")
        return source_image(images[0])

    def available_image(self, ami: str, what: str) -> dict:
        """The image, or a ConfigError naming `what` when it does not exist or is not available."""
        image = self.image(ami)
        if image is None or image.get("State") != "available":
            raise ConfigError(f"{what}: image {ami} does not exist or is not available in {self.region}")
        return image

    def image(self, ami: str) -> dict | None:
        """The image's record, or None when there is no such image (or it is deregistered)."""
        found = self.lookup(f"describe-images {ami}", self.client.describe_images, "Images",
                            ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable", "InvalidAMIID.Malformed"),
                            ImageIds=[ami])
        return None if found is None or found.get("State") == "deregistered" else found

    def describe_images(self, **kwargs) -> list[dict]:
        return self.describe_all("describe_images", "Images", **kwargs)

    def bakery_images(self, recipe: str | None = None, inputs_hash: str | None = None,
                      states: Iterable[str] = ("available",)) -> list[dict]:
        """Finished images this account baked with bakery, newest first."""
        filters = [T.tag_filter(T.COMPLETE, "true")]
        if recipe:
            filters.append(T.tag_filter(T.RECIPE, recipe))
        if inputs_hash:
            filters.append(T.tag_filter(T.INPUTS_HASH, inputs_hash))
        if states:
            filters.append({"Name": "state", "Values": list(states)})
        return _newest_first(self.describe_images(Owners=["self"], Filters=filters))

    def checkpoint_images(self, recipe: str | None = None) -> list[dict]:
        """Finished checkpoints (bakery/bake/checkpoints.py), of one recipe or all, newest first."""
        filters = [T.tag_filter(T.ROLE, T.ROLE_CHECKPOINT), T.tag_filter(T.CHECKPOINT),
                   {"Name": "state", "Values": ["available"]}]
        if recipe:
            filters.append(T.tag_filter(T.RECIPE, recipe))
        return _newest_first(self.describe_images(Owners=["self"], Filters=filters))

    def rejected_images(self, recipe: str) -> list[dict]:
        """Images of a recipe that failed their smoke test or the vulnerability gate (kept for
        inspection until pruned)."""
        return [image for tag in (T.SMOKE, T.GATE) for image in self.describe_images(
            Owners=["self"], Filters=[T.tag_filter(T.RECIPE, recipe), T.tag_filter(tag, "failed")])]

    def create_image(self, instance_id: str, name: str, description: str, tags: dict[str, str]) -> str:
        """The image and its snapshots tagged at creation (bakery's IAM policy lets it tag a
        snapshot later only if it carries bakery's tags already). Another endpoint than AWS or the
        local cloud (a moto server) cannot tag snapshots there: the caller tags them afterwards."""
        at_creation = self.settings.cloud == "local" or not self.settings.endpoint_url
        kinds = ("image", "snapshot") if at_creation else ("image",)
        resp = self.call("create-image", self.client.create_image, InstanceId=instance_id, Name=name,
                         Description=description[:255], TagSpecifications=T.tag_specs(tags, *kinds))
        return resp["ImageId"]

    def copy_image_from(self, source: "ImagesAPI", image_id: str, name: str, kms_key_id: str | None,
                        tags: dict[str, str]) -> str:
        """Copy `image_id` from the `source` facade's region into this one, the copy and its
        snapshots tagged at creation (a run killed while it copies leaves a copy the janitor
        finds by its tags); returns the copy's id."""
        resp = self.call(f"copy-image to {self.region}", self.client.copy_image, SourceImageId=image_id,
                         SourceRegion=source.region, Name=name,
                         TagSpecifications=T.tag_specs(tags, "image", "snapshot"),
                         **({"Encrypted": True, "KmsKeyId": kms_key_id} if kms_key_id else {}))
        return resp["ImageId"]

    def image_snapshots(self, image_id: str) -> list[str]:
        images = self.describe_images(ImageIds=[image_id])
        return snapshots_of(images[0]) if images else []

    def share_image(self, image_id: str, accounts: list[str]) -> None:
        """Launch permission for the accounts, and create-volume permission on the image's snapshots."""
        self.call("modify-image-attribute", self.client.modify_image_attribute, ImageId=image_id,
                  LaunchPermission={"Add": [{"UserId": a} for a in accounts]})
        for snap in self.image_snapshots(image_id):
            self.call("modify-snapshot-attribute", self.client.modify_snapshot_attribute, SnapshotId=snap,
                      Attribute="createVolumePermission", OperationType="add", UserIds=accounts)

    def deprecate_image(self, image_id: str, when: datetime) -> None:
        self.call("enable-image-deprecation", self.client.enable_image_deprecation, ImageId=image_id,
                  DeprecateAt=when)

    def wait_image_available(self, image_id: str, timeout: float, backoff: Backoff | None = None) -> dict:
        self.ensure_credentials_last(timeout, f"waiting for image {image_id}")
        progress = SnapshotProgress(self)

        def check():
            images = self.describe_images(ImageIds=[image_id])
            if not images:
                return None  # eventual consistency right after CreateImage
            state = images[0].get("State")
            if state == "available":
                return images[0]
            if state in ("failed", "invalid", "deregistered", "error"):
                reason = images[0].get("StateReason", {}).get("Message", "")
                raise CloudError(f"image {image_id} ended in state {state}: {reason}")
            say(f"{image_id} in {self.region}: {state}{progress.of(snapshots_of(images[0]))}", subject=image_id)
            return None
        return wait_for(check, what=f"image {image_id} to become available", timeout=timeout,
                        **({"backoff": backoff} if backoff else {}))

    def deregister_image(self, image_id: str) -> None:
        """Deregister the image and delete its snapshots."""
        snaps = self.image_snapshots(image_id)
        self.call(f"deregister-image {image_id}", self.client.deregister_image, ImageId=image_id)
        for snap in snaps:
            self.call(f"delete-snapshot {snap}", self.client.delete_snapshot, SnapshotId=snap)
