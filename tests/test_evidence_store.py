"""Specifications for bakery.evidence.store: an image's evidence found by its id and digest, on
this machine or, from a second checkout with an empty state directory, in the bucket."""

from __future__ import annotations

import pytest
from moto import mock_aws

from bakery.cloud.ec2 import EC2
from bakery.config.settings import Settings
from bakery.errors import CloudError
from bakery.evidence.store import EvidenceStore, digest


@pytest.fixture
def ec2(tmp_path):
    with mock_aws():
        facade = EC2(Settings(cloud="aws", region="us-east-1", project_dir=tmp_path, evidence_bucket="evidence"))
        facade.ensure_bucket("evidence")
        facade.ensure_bucket("evidence")  # a second time: already there, nothing to do
        yield facade


def test_a_second_checkout_finds_the_evidence_in_the_bucket_by_image_and_digest(ec2, tmp_path):
    sbom = b'{"bomFormat": "CycloneDX"}'
    sha256 = EvidenceStore(ec2, tmp_path / "first").keep("ami-0123456789abcdef0", "sbom", sbom)
    assert sha256 == digest(sbom)
    assert (tmp_path / "first/images/ami-0123456789abcdef0/sbom" / sha256).read_bytes() == sbom
    second = EvidenceStore(ec2, tmp_path / "second")
    assert second.find("ami-0123456789abcdef0", "sbom", sha256) == sbom
    assert second.find("ami-0123456789abcdef0", "sbom", "0" * 64) is None
    assert second.find("ami-0fffffffffffffff0", "sbom", sha256) is None


def test_an_altered_copy_is_refused(ec2, tmp_path):
    store = EvidenceStore(ec2, tmp_path / "state")
    sha256 = store.keep("ami-0123456789abcdef0", "provenance", b"signed")
    ec2.s3.put_object(Bucket="evidence", Key=store.key("ami-0123456789abcdef0", "provenance", sha256), Body=b"forged")
    with pytest.raises(CloudError, match=r"s3://evidence/images/ami-0123456789abcdef0/provenance/.*: its sha256 is "
                                         r".*altered"):
        EvidenceStore(ec2, tmp_path / "elsewhere").find("ami-0123456789abcdef0", "provenance", sha256)
    (tmp_path / "state/images/ami-0123456789abcdef0/provenance" / sha256).write_bytes(b"forged")
    with pytest.raises(CloudError, match="altered"):
        store.find("ami-0123456789abcdef0", "provenance", sha256)


def test_without_a_bucket_the_evidence_stays_on_this_machine(tmp_path):
    with mock_aws():
        ec2 = EC2(Settings(cloud="aws", region="us-east-1", project_dir=tmp_path))
        store = EvidenceStore(ec2, tmp_path / "state")
        sha256 = store.keep("ami-0123456789abcdef0", "findings", b"[]")
        assert store.find("ami-0123456789abcdef0", "findings", sha256) == b"[]"
        assert EvidenceStore(ec2, tmp_path / "other").find("ami-0123456789abcdef0", "findings", sha256) is None
