"""An image's signed provenance, made and checked where the image is (issue 16 item 5).

`sign_image` (the bake's last step) states what was built (the image in every region, by the
AMI digest provenance.py defines, and the SBOM by its sha256) from what (the source image,
every recipe input file, bakery's version), signs it with the settings' key, keeps the envelope
in the evidence store under every regional image id, and tags each image with the envelope's
sha256. `verify_image` (`invoke verify`, and `launch` of an environment that requires it) reads
that tag, finds the envelope (this machine, else the bucket: a second checkout finds it), and
checks it with the trusted public key alone against the image as DescribeImages and its tags
show it now: a retagged inputs hash or SBOM digest, a swapped snapshot, an altered envelope or
signature, or another image's statement each fail in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bakery.cloud import tags as T
from bakery.config.settings import Settings, user_path
from bakery.errors import ConfigError, VerificationFailed
from bakery.evidence.dsse import KmsSigner, PublicKey, Signer, load_public_key, load_signing_key
from bakery.evidence.provenance import (Descriptor, VerifiedStatement, ami_subject, bakery_material, build_statement,
                                        builder_id, sign_statement, source_image_material, verify)
from bakery.evidence.store import EvidenceStore


def signer_for(settings: Settings, ec2) -> Signer | None:
    """The settings' signing key (a PEM file, or a KMS key as `kms:KEY-ID`); None when unset."""
    if not settings.signing_key:
        return None
    if settings.signing_key.startswith("kms:"):
        return KmsSigner(ec2, settings.signing_key.removeprefix("kms:"))
    return load_signing_key(user_path(settings.signing_key, settings.project_dir))


def trusted_key(settings: Settings) -> PublicKey:
    if not settings.verify_key:
        raise ConfigError("invoke config bakery.verify_key: not set; name the public key images must be signed "
                          "with (a PEM file)")
    return load_public_key(user_path(settings.verify_key, settings.project_dir))


def sbom_subject(recipe: str, build_id: str, sbom_sha256: str) -> Descriptor:
    return f"{recipe}-{build_id}.sbom.cdx.json", {"sha256": sbom_sha256}


def snapshot_ids(image: dict) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]


@dataclass(frozen=True)
class Built:
    """What one bake made and from what: the statement's facts."""

    recipe: str
    build_id: str
    variables: dict[str, str]
    inputs_hash: str
    images: dict[str, str]              # region -> AMI id, the home region's first
    sbom_sha256: str | None
    source: tuple[str, str, list[str]]  # (AMI id, region, snapshot ids) the bake started from
    inputs: dict[str, str]              # recipe input file (relative to the recipes dir) -> sha256
    started: datetime
    finished: datetime
    # the checkpoints the steps ran on after the source (bakery/bake/checkpoints.py): the one the
    # bake resumed from and the ones it kept; what they held is in the image too
    checkpoints: tuple[tuple[str, str, list[str]], ...] = ()


def sign_image(ec2, store_dir: Path, signer: Signer, built: Built) -> str:
    """Sign the provenance of every regional image; their tag value (the envelope's sha256)."""
    subjects = []
    for region, image_id in built.images.items():
        image = ec2.in_region(region).image(image_id)
        if image is None:
            raise VerificationFailed(f"{image_id} ({region}): the image to sign is gone")
        subjects.append(ami_subject(image_id, region, snapshot_ids(image), built.inputs_hash))
    if built.sbom_sha256:
        subjects.append(sbom_subject(built.recipe, built.build_id, built.sbom_sha256))
    materials = [source_image_material(*built.source), *(source_image_material(*c) for c in built.checkpoints),
                 bakery_material(),
                 *((f"file:recipes/{rel}", {"sha256": sha}) for rel, sha in sorted(built.inputs.items()))]
    statement = build_statement(subjects, materials, recipe=built.recipe, variables=built.variables,
                                builder=builder_id(), build_id=built.build_id, started=built.started,
                                finished=built.finished)
    envelope = sign_statement(statement, signer).dumps()
    store = EvidenceStore(ec2, store_dir)
    for region, image_id in built.images.items():
        sha256 = store.keep(image_id, "provenance", envelope)
        ec2.in_region(region).tag([image_id], {T.PROVENANCE: sha256})
    return sha256


def verify_image(ec2, store_dir: Path, trusted: PublicKey, image_id: str) -> VerifiedStatement:
    """The image's verified statement, or VerificationFailed saying what is wrong, in one line."""
    image = ec2.image(image_id)
    if image is None:
        raise VerificationFailed(f"{image_id}: no such image in {ec2.region}")
    tags = T.tags_of(image)
    sha256 = tags.get(T.PROVENANCE)
    if not sha256:
        raise VerificationFailed(f"{image_id}: not signed (no {T.PROVENANCE} tag)")
    envelope = EvidenceStore(ec2, store_dir).find(image_id, "provenance", sha256)
    if envelope is None:
        raise VerificationFailed(f"{image_id}: its provenance ({sha256}) is neither on this machine nor in the "
                                 f"evidence bucket ({ec2.settings.evidence_bucket or 'none set'})")
    expected = [ami_subject(image_id, ec2.region, snapshot_ids(image), tags.get(T.INPUTS_HASH))]
    sbom = tags.get(T.SBOM, "").removeprefix("sha256:")
    if sbom:
        expected.append(sbom_subject(tags.get(T.RECIPE, ""), tags.get(T.BUILD_ID, ""), sbom))
    return verify(envelope, trusted, expected, where=f"{image_id} provenance")


def verify_ami(settings: Settings, image_id: str) -> tuple[str, VerifiedStatement]:
    """`invoke verify --ami ID`: the trusted key is read before the cloud opens; (ID, statement)."""
    import re

    from bakery.cloud.connect import open_cloud
    from bakery.config.patterns import AMI_RE

    if not re.fullmatch(AMI_RE, image_id):
        raise ConfigError(f"--ami {image_id!r}: not an image id (ami- and 8 or 17 hex digits)")
    trusted = trusted_key(settings)
    return image_id, verify_image(open_cloud(settings).ec2, settings.state / "evidence", trusted, image_id)
