"""Specifications for bakery.evidence.attestation: an image's provenance signed where the image
is, and checked against the image as EC2 shows it now (moto in process)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from moto import mock_aws

from bakery.cloud import tags as T
from bakery.cloud.ec2 import EC2
from bakery.config.settings import Settings
from bakery.errors import VerificationFailed
from bakery.evidence.attestation import Built, sign_image, verify_image
from bakery.evidence.dsse import load_public_key, load_signing_key
from bakery.evidence.store import EvidenceStore


def key_files(tmp_path, name: str):
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return load_signing_key(private), load_public_key(public)


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        ec2 = EC2(Settings(cloud="aws", region="us-east-1", project_dir=tmp_path, evidence_bucket="evidence"))
        ec2.ensure_bucket("evidence")
        iid = ec2.client.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        image_id = ec2.client.create_image(InstanceId=iid, Name="web-1")["ImageId"]
        ec2.tag([image_id], {T.RECIPE: "web", T.BUILD_ID: "b-20261130120000-abcdef", T.INPUTS_HASH: "1" * 64,
                             T.SBOM: "sha256:" + "2" * 64})
        signer, trusted = key_files(tmp_path, "release")
        built = Built(recipe="web", build_id="b-20261130120000-abcdef", variables={"site_title": "hi"},
                      inputs_hash="1" * 64, images={"us-east-1": image_id}, sbom_sha256="2" * 64,
                      source=("ami-12345678", "us-east-1", []), inputs={"web.yaml": "3" * 64},
                      started=datetime(2026, 11, 30, 12, tzinfo=timezone.utc),
                      finished=datetime(2026, 11, 30, 12, 5, tzinfo=timezone.utc))
        sha256 = sign_image(ec2, tmp_path / "state", signer, built)
        yield dict(ec2=ec2, image_id=image_id, trusted=trusted, sha256=sha256, tmp_path=tmp_path, built=built)


def test_a_signed_image_verifies_from_a_second_checkout(world):
    ec2, image_id = world["ec2"], world["image_id"]
    assert T.tags_of(ec2.image(image_id))[T.PROVENANCE] == world["sha256"]
    verified = verify_image(ec2, world["tmp_path"] / "elsewhere", world["trusted"], image_id)
    assert verified.recipe == "web" and verified.build_id == "b-20261130120000-abcdef"
    assert set(verified.subjects) == {image_id, "web-b-20261130120000-abcdef.sbom.cdx.json"}
    assert ("file:recipes/web.yaml", {"sha256": "3" * 64}) in verified.materials


def test_a_retagged_inputs_hash_or_sbom_fails_as_a_subject_mismatch(world):
    ec2, image_id = world["ec2"], world["image_id"]
    ec2.tag([image_id], {T.INPUTS_HASH: "9" * 64})
    with pytest.raises(VerificationFailed, match=f"{image_id} provenance: .*{image_id}"):
        verify_image(ec2, world["tmp_path"] / "state", world["trusted"], image_id)
    ec2.tag([image_id], {T.INPUTS_HASH: "1" * 64, T.SBOM: "sha256:" + "8" * 64})
    with pytest.raises(VerificationFailed, match="sbom.cdx.json"):
        verify_image(ec2, world["tmp_path"] / "state", world["trusted"], image_id)


def test_an_altered_statement_or_signature_or_another_key_fails(world, tmp_path):
    ec2, image_id, sha256 = world["ec2"], world["image_id"], world["sha256"]
    store = EvidenceStore(ec2, tmp_path / "forger")
    envelope = json.loads(store.find(image_id, "provenance", sha256))
    _, other = key_files(tmp_path, "someone-else")
    with pytest.raises(VerificationFailed):
        verify_image(ec2, tmp_path / "state", other, image_id)
    for field, value in (("payload", envelope["payload"][:-4] + "AAAA"),
                         ("signatures", [{**envelope["signatures"][0], "sig": envelope["signatures"][0]["sig"][::-1]}])):
        forged = json.dumps({**envelope, field: value}).encode()
        forged_sha = EvidenceStore(ec2, tmp_path / "forger").keep(image_id, "provenance", forged)
        ec2.tag([image_id], {T.PROVENANCE: forged_sha})  # the forger retags too: the signature still says no
        with pytest.raises(VerificationFailed):
            verify_image(ec2, tmp_path / "fresh", world["trusted"], image_id)


def test_an_unsigned_image_is_refused_in_one_line(world):
    ec2 = world["ec2"]
    iid = ec2.client.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    plain = ec2.client.create_image(InstanceId=iid, Name="plain")["ImageId"]
    with pytest.raises(VerificationFailed, match=f"^{plain}: not signed \\(no bakery:provenance tag\\)$"):
        verify_image(ec2, world["tmp_path"] / "state", world["trusted"], plain)
