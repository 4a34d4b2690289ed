"""Where an image's evidence lives: beside the manifests on this machine, and in the settings'
S3 bucket (bakery/cloud/evidence.py), keyed by image id, kind and sha256, so that a second
checkout with an empty state directory finds it by the image alone (its tags carry the digests).

A document is found by its digest and read back only when its bytes still hash to it: a copy
altered in the bucket or on disk is refused, not trusted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bakery.errors import CloudError

CONTENT_TYPES = {"sbom": "application/vnd.cyclonedx+json", "provenance": "application/vnd.dsse.envelope.v1+json",
                 "findings": "application/json"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EvidenceStore:
    def __init__(self, ec2, local_dir: Path):
        self.ec2 = ec2
        self.bucket = ec2.settings.evidence_bucket
        self.local_dir = local_dir

    def key(self, image_id: str, kind: str, sha256: str) -> str:
        return f"images/{image_id}/{kind}/{sha256}"

    def keep(self, image_id: str, kind: str, data: bytes) -> str:
        """Store the document; its sha256, which the image's tag records."""
        sha256 = digest(data)
        path = self.local_dir / self.key(image_id, kind, sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if self.bucket:
            self.ec2.put_evidence(self.bucket, self.key(image_id, kind, sha256), data, CONTENT_TYPES[kind])
        return sha256

    def find(self, image_id: str, kind: str, sha256: str) -> bytes | None:
        """The document with this digest: from this machine, else from the bucket; None when
        neither has it. A copy whose bytes no longer hash to `sha256` is an error."""
        path = self.local_dir / self.key(image_id, kind, sha256)
        where, data = str(path), path.read_bytes() if path.is_file() else None
        if data is None and self.bucket:
            where = f"s3://{self.bucket}/{self.key(image_id, kind, sha256)}"
            data = self.ec2.get_evidence(self.bucket, self.key(image_id, kind, sha256))
        if data is not None and digest(data) != sha256:
            raise CloudError(f"{where}: its sha256 is {digest(data)}, not the {sha256} the image records: altered")
        return data
