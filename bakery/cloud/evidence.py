"""S3 operations of the EC2 facade: the bucket where an image's evidence (its SBOM, signed
provenance, vulnerability findings) is kept, so that any machine finds it by image id.

Path-style addressing: an endpoint other than AWS's (moto, the local cloud) has no per-bucket
DNS names."""

from __future__ import annotations

from botocore.config import Config

from bakery.cloud.session import CLIENT_CONFIG
from bakery.errors import CloudError

_S3_CONFIG = CLIENT_CONFIG.merge(Config(s3={"addressing_style": "path"}))


class EvidenceAPI:
    """S3 operations of the EC2 facade."""

    @property
    def s3(self):
        return self.service("s3", _S3_CONFIG)

    def put_evidence(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        self.call(f"s3 put-object s3://{bucket}/{key}", self.s3.put_object, Bucket=bucket, Key=key, Body=body,
                  ContentType=content_type)

    def get_evidence(self, bucket: str, key: str) -> bytes | None:
        """The object's bytes, or None when there is no such key."""
        try:
            return self.call(f"s3 get-object s3://{bucket}/{key}", self.s3.get_object, Bucket=bucket,
                             Key=key)["Body"].read()
        except CloudError as exc:
            if self.code_of(exc) in ("NoSuchKey", "404"):
                return None
            raise

    def ensure_bucket(self, bucket: str) -> None:
        """Make the bucket when it is not there (the local cloud's own; on AWS the platform team's,
        with its policy and encryption, is named in the settings and never made here)."""
        try:
            self.call(f"s3 head-bucket {bucket}", self.s3.head_bucket, Bucket=bucket)
        except CloudError as exc:
            if self.code_of(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            kwargs = {} if self.region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": self.region}}
            self.call(f"s3 create-bucket {bucket}", self.s3.create_bucket, Bucket=bucket, **kwargs)
