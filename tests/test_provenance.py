"""Signed provenance as a specification: the in-toto statement a bake makes (SLSA provenance v1),
the digest bakery gives an AMI, signing it in a DSSE envelope with a key file or a KMS key, and
verification that trusts only the key it is given and says in one line which check failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from moto import mock_aws

from bakery.errors import CloudError, ConfigError, VerificationFailed
from bakery.evidence.dsse import (KMS_RAW_LIMIT, Envelope, KmsSigner, PublicKey, load_public_key, load_signing_key,
                                  pae)
from bakery.evidence.provenance import (AMI_DIGEST_FORMAT, BUILD_TYPE, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE,
                                        ami_digest, ami_subject, bakery_material, build_statement, builder_id,
                                        file_subject, sign_statement, source_image_material, verify)

STARTED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
FINISHED = datetime(2026, 3, 1, 12, 9, 30, tzinfo=timezone.utc)
HOME = ("ami-0123456789abcdef0", "us-east-1", ["snap-0aaaaaaaaaaaaaaa1"], "4c1f0e2d9b8a7c6d5e4f3a2b1c0d9e8f")
COPY = ("ami-0fedcba9876543210", "eu-west-1", ["snap-0bbbbbbbbbbbbbbb2"], "4c1f0e2d9b8a7c6d5e4f3a2b1c0d9e8f")


# ---- keys as files ---------------------------------------------------------------------------------

def pem_private(key, path: Path, fmt=serialization.PrivateFormat.PKCS8, password: bytes | None = None) -> Path:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    return path


def pem_public(key, path: Path) -> Path:
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


KEYS = {
    "ed25519": Ed25519PrivateKey.generate,
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
}


@pytest.fixture(params=sorted(KEYS))
def keypair(request, tmp_path):
    """(signing key file, trusted public key file) of each supported kind."""
    key = KEYS[request.param]()
    return pem_private(key, tmp_path / "signing.pem"), pem_public(key, tmp_path / "trusted.pub")


# ---- a bake's statement -----------------------------------------------------------------------------

@pytest.fixture
def sbom(tmp_path) -> Path:
    path = tmp_path / "web-b-20260301120000.cdx.json"
    path.write_text('{"bomFormat": "CycloneDX", "specVersion": "1.5"}\n')
    return path


@pytest.fixture
def statement(sbom, tmp_path):
    script = tmp_path / "configure-web.sh"
    script.write_text("#!/bin/sh\nnginx -t\n")
    return build_statement(
        [ami_subject(*HOME), ami_subject(*COPY), file_subject(sbom)],
        [source_image_material("ami-0abcdef0123456789", "us-east-1", ["snap-0ccccccccccccccc3"]),
         ("file:recipes/web.yaml", {"sha256": hashlib.sha256(b"recipe").hexdigest()}),
         ("file:recipes/scripts/configure-web.sh", file_subject(script)[1]),
         bakery_material()],
        recipe="web", variables={"site_title": "bakery web", "release": "2.5"}, builder="urn:test-builder",
        build_id="b-20260301120000-abcdef", started=STARTED, finished=FINISHED, internal={"image_format": 3})


def expected(sbom: Path) -> list:
    return [ami_subject(*HOME), ami_subject(*COPY), file_subject(sbom)]


def test_the_statement_is_an_in_toto_statement_of_slsa_provenance(statement, sbom):
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE == "https://slsa.dev/provenance/v1"
    assert [s["name"] for s in statement["subject"]] == ["ami-0123456789abcdef0", "ami-0fedcba9876543210", sbom.name]
    assert statement["subject"][2]["digest"] == {"sha256": hashlib.sha256(sbom.read_bytes()).hexdigest()}
    definition = statement["predicate"]["buildDefinition"]
    assert definition["buildType"] == BUILD_TYPE
    assert definition["externalParameters"] == {"recipe": "web", "variables": {"release": "2.5",
                                                                              "site_title": "bakery web"}}
    assert definition["internalParameters"] == {"image_format": 3}
    deps = definition["resolvedDependencies"]
    assert deps[0]["uri"] == "arn:aws:ec2:us-east-1::image/ami-0abcdef0123456789"
    assert deps[-1] == {"uri": "pkg:generic/bakery@0.1.0"}  # a version, no digest
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["id"] == "urn:test-builder"
    assert run["metadata"] == {"invocationId": "b-20260301120000-abcdef", "startedOn": "2026-03-01T12:00:00Z",
                               "finishedOn": "2026-03-01T12:09:30Z"}


def test_an_amis_digest_is_the_sha256_of_its_canonical_description():
    """Pinned to the bytes: a change here would fail every statement already signed."""
    document = ('{"format":"bakery-ami/v1","image_id":"ami-0123456789abcdef0","inputs_hash":'
                '"4c1f0e2d9b8a7c6d5e4f3a2b1c0d9e8f","region":"us-east-1","snapshot_ids":["snap-0aaaaaaaaaaaaaaa1"]}')
    assert AMI_DIGEST_FORMAT == "bakery-ami/v1"
    assert ami_digest(*HOME) == {"sha256": hashlib.sha256(document.encode()).hexdigest()}
    two = ["snap-0aaaaaaaaaaaaaaa1", "snap-0ddddddddddddddd4"]
    assert ami_digest(HOME[0], HOME[1], two, HOME[3]) == ami_digest(HOME[0], HOME[1], reversed(two), HOME[3])
    others = [ami_digest("ami-0123456789abcdef1", *HOME[1:]), ami_digest(HOME[0], "us-west-2", *HOME[2:]),
              ami_digest(HOME[0], HOME[1], two, HOME[3]), ami_digest(*HOME[:3], "0" * 32),
              ami_digest(*HOME[:3], None)]
    assert len({d["sha256"] for d in [ami_digest(*HOME), *others]}) == 6
    with pytest.raises(ConfigError, match="'snap-x' is not a snapshot id"):
        ami_digest(HOME[0], HOME[1], ["snap-x"], None)


def test_a_statement_refuses_subjects_it_could_not_state():
    kw = dict(recipe="web", variables={}, builder="b", build_id="b-1", started=STARTED, finished=FINISHED)
    with pytest.raises(ValueError, match="at least one subject"):
        build_statement([], [], **kw)
    with pytest.raises(ValueError, match="subject 'ami-0123456789abcdef0': empty or given twice"):
        build_statement([ami_subject(*HOME), ami_subject(*HOME)], [], **kw)
    with pytest.raises(ValueError, match="is not lowercase hex"):
        build_statement([("x", {"sha256": "ABC"})], [], **kw)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_statement([ami_subject(*HOME)], [], **{**kw, "started": datetime(2026, 1, 1)})


def test_the_builder_is_the_workflow_on_github_and_this_machine_elsewhere():
    env = {"GITHUB_SERVER_URL": "https://github.com",
           "GITHUB_WORKFLOW_REF": "acme/bakery/.github/workflows/rebake.yml@refs/heads/main"}
    assert builder_id(env) == "https://github.com/acme/bakery/.github/workflows/rebake.yml@refs/heads/main"
    assert builder_id({}).startswith("urn:bakery-builder:")


# ---- sign and verify ------------------------------------------------------------------------------

def test_a_signed_statement_verifies_with_the_trusted_key(keypair, statement, sbom):
    signing, trusted = keypair
    envelope = sign_statement(statement, load_signing_key(signing))
    stored = envelope.dumps()  # as written beside the manifest and to the bucket
    doc = json.loads(stored)
    assert doc["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert json.loads(base64.b64decode(doc["payload"])) == statement

    key = load_public_key(trusted)
    verified = verify(stored, key, expected(sbom), payload_sha256=envelope.payload_sha256)
    assert verified.statement == statement and verified.keyid == key.keyid
    assert (verified.recipe, verified.build_id, verified.builder) == ("web", "b-20260301120000-abcdef",
                                                                     "urn:test-builder")
    assert verified.subjects["ami-0fedcba9876543210"] == ami_digest(*COPY)
    assert verified.materials[-1] == ("pkg:generic/bakery@0.1.0", {})
    # one region's image is enough to verify it, and the payload digest is optional
    assert verify(stored, key, [ami_subject(*COPY)]).payload_sha256 == envelope.payload_sha256


def test_the_payload_is_canonical_so_one_statement_has_one_digest(keypair, statement):
    signer = load_signing_key(keypair[0])
    reordered = json.loads(json.dumps(statement, sort_keys=False))
    reordered = dict(reversed(list(reordered.items())))
    assert sign_statement(statement, signer).payload_sha256 == sign_statement(reordered, signer).payload_sha256


def test_the_signature_is_over_dsses_pre_authentication_encoding():
    assert pae("application/vnd.in-toto+json", b"{}") == b"DSSEv1 28 application/vnd.in-toto+json 2 {}"


@pytest.fixture
def signed(tmp_path, statement):
    key = ec.generate_private_key(ec.SECP256R1())
    signer = load_signing_key(pem_private(key, tmp_path / "signing.pem", serialization.PrivateFormat.TraditionalOpenSSL))
    envelope = sign_statement(statement, signer)
    return envelope, load_public_key(pem_public(key, tmp_path / "trusted.pub"))


def altered(envelope: Envelope, **changes) -> dict:
    doc = envelope.to_json()
    doc.update(changes)
    return doc


def tampered_payload(envelope: Envelope) -> str:
    statement = json.loads(envelope.payload)
    statement["subject"][0]["digest"]["sha256"] = "0" * 64  # someone vouching for another image
    return base64.b64encode(json.dumps(statement).encode()).decode()


def test_a_tampered_payload_fails(signed, sbom):
    envelope, key = signed
    doc = altered(envelope, payload=tampered_payload(envelope))
    with pytest.raises(VerificationFailed, match=f"^provenance: tampered payload: its sha256 is [0-9a-f]{{64}}, the "
                                                 f"statement recorded was {envelope.payload_sha256}$"):
        verify(doc, key, expected(sbom), payload_sha256=envelope.payload_sha256)
    # without the recorded digest, only the signature can tell, and it cannot say which half changed
    with pytest.raises(VerificationFailed, match="^provenance: bad signature: it does not verify over this payload "
                                                 "with the trusted key .* the payload or the signature was altered$"):
        verify(doc, key, expected(sbom))


def test_an_altered_signature_fails(signed, sbom):
    envelope, key = signed
    sig = bytearray(envelope.signatures[0].sig)
    sig[-1] ^= 0x01
    doc = altered(envelope, signatures=[{"keyid": envelope.signatures[0].keyid, "sig": base64.b64encode(sig).decode()}])
    with pytest.raises(VerificationFailed, match="^provenance: bad signature: the payload is the one recorded, but its "
                                                 f"signature does not verify with the trusted key {key.keyid[:16]}"):
        verify(doc, key, expected(sbom), payload_sha256=envelope.payload_sha256)


def test_a_statement_signed_by_another_key_fails_even_if_it_names_that_key(signed, sbom, tmp_path, statement):
    envelope, key = signed
    other = load_public_key(pem_public(Ed25519PrivateKey.generate(), tmp_path / "other.pub"))
    with pytest.raises(VerificationFailed, match=f"^provenance: wrong key: signed by key {key.keyid[:16]}, not by the "
                                                 f"trusted key {other.keyid[:16]} \\({tmp_path}/other.pub\\)$"):
        verify(envelope, other, expected(sbom))
    # an attacker's envelope that claims the trusted key's id is checked with the trusted key all the same
    forged = sign_statement(statement, load_signing_key(pem_private(Ed25519PrivateKey.generate(), tmp_path / "x.pem")))
    doc = altered(forged, signatures=[{"keyid": key.keyid, "sig": forged.to_json()["signatures"][0]["sig"]}])
    with pytest.raises(VerificationFailed, match="^provenance: bad signature"):
        verify(doc, key, expected(sbom))


def test_an_altered_subject_digest_fails_as_a_subject_mismatch(signed, sbom):
    envelope, key = signed
    retagged = ami_subject(*HOME[:3], "f" * 32)  # the image's inputs-hash tag was changed after signing
    with pytest.raises(VerificationFailed, match=f"^provenance: subject mismatch: {HOME[0]} has sha256 "
                                                 f"{ami_digest(*HOME)['sha256']} in the statement, expected "
                                                 f"{retagged[1]['sha256']}$"):
        verify(envelope, key, [retagged])
    sbom.write_text("{}")  # an SBOM that is not the one signed
    with pytest.raises(VerificationFailed, match=f"subject mismatch: {sbom.name} has sha256"):
        verify(envelope, key, [file_subject(sbom)])


def test_a_missing_subject_fails(signed):
    envelope, key = signed
    elsewhere = ami_subject("ami-0aaaaaaaaaaaaaaaa", "ap-south-1", [], HOME[3])
    with pytest.raises(VerificationFailed, match="^provenance: missing subject ami-0aaaaaaaaaaaaaaaa: the statement "
                                                 "names ami-0123456789abcdef0, ami-0fedcba9876543210, web-b-"):
        verify(envelope, key, [elsewhere])
    with pytest.raises(VerificationFailed, match="subject ami-0123456789abcdef0: no digest algorithm in common "
                                                 r"\(the statement has sha256, expected sha512\)"):
        verify(envelope, key, [(HOME[0], {"sha512": "ab"})])


def test_a_signed_payload_that_is_not_slsa_provenance_fails(tmp_path, statement, sbom):
    key = Ed25519PrivateKey.generate()
    signer = load_signing_key(pem_private(key, tmp_path / "k.pem"))
    trusted = load_public_key(pem_public(key, tmp_path / "k.pub"))
    old = sign_statement({**statement, "_type": "https://in-toto.io/Statement/v0.1"}, signer)
    with pytest.raises(VerificationFailed, match="^provenance: statement type is 'https://in-toto.io/Statement/v0.1', "
                                                 "expected https://in-toto.io/Statement/v1$"):
        verify(old, trusted, expected(sbom))
    other = sign_statement({**statement, "predicateType": "https://spdx.dev/Document"}, signer)
    with pytest.raises(VerificationFailed, match="predicate type is 'https://spdx.dev/Document'"):
        verify(other, trusted, expected(sbom))


@pytest.mark.parametrize("change, message", [
    (lambda doc: {**doc, "payloadType": "application/json"},
     r"payload type is 'application/json', expected application/vnd\.in-toto\+json"),
    (lambda doc: {**doc, "signatures": []}, "not a DSSE envelope: it carries no signatures"),
    (lambda doc: {**doc, "payload": "not base64!"}, "not a DSSE envelope: payload is not base64"),
    (lambda doc: {**doc, "signatures": [{"sig": "%%"}]}, r"not a DSSE envelope: signatures\[0\].sig is not base64"),
    (lambda doc: {k: v for k, v in doc.items() if k != "payload"}, "not a DSSE envelope: payload is missing"),
    (lambda doc: "{\"payloadType\": ", "not a DSSE envelope: not JSON"),
    (lambda doc: "[1, 2]", "not a DSSE envelope: the document is not an object"),
])
def test_a_malformed_envelope_fails_in_one_line(signed, sbom, change, message):
    envelope, key = signed
    with pytest.raises(VerificationFailed, match=f"^ami-0123456789abcdef0: {message}") as exc:
        verify(change(envelope.to_json()), key, expected(sbom), where="ami-0123456789abcdef0")
    assert "\n" not in exc.value.message


# ---- key files ----------------------------------------------------------------------------------------

def test_a_signing_key_file_that_cannot_sign_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path}/none.pem: signing key file not found$"):
        load_signing_key(tmp_path / "none.pem")
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read the signing key file: Is a directory$"):
        load_signing_key(tmp_path)
    (tmp_path / "junk.pem").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI user@host\n")
    with pytest.raises(ConfigError, match="junk.pem: not a PEM file"):
        load_signing_key(tmp_path / "junk.pem")
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ConfigError, match="pub.pem: a public key; signing needs the private key$"):
        load_signing_key(pem_public(key, tmp_path / "pub.pem"))
    with pytest.raises(ConfigError, match="locked.pem: the signing key is encrypted with a passphrase"):
        load_signing_key(pem_private(key, tmp_path / "locked.pem", password=b"secret"))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ConfigError, match="rsa.pem: RSA keys are not supported; bakery signs with Ed25519, ECDSA "
                                          "P-256 or ECDSA P-384 keys$"):
        load_signing_key(pem_private(rsa_key, tmp_path / "rsa.pem"))
    k1 = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ConfigError, match="k1.pem: ECDSA keys on secp256k1 are not supported"):
        load_signing_key(pem_private(k1, tmp_path / "k1.pem"))
    (tmp_path / "cut.pem").write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAw\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="cut.pem: not a PEM private key"):
        load_signing_key(tmp_path / "cut.pem")


def test_the_trusted_key_must_be_a_public_key_file(tmp_path):
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ConfigError, match="priv.pem: a private key; verification trusts the public half only"):
        load_public_key(pem_private(key, tmp_path / "priv.pem"))
    with pytest.raises(ConfigError, match=f"^{tmp_path}/none.pub: public key file not found$"):
        load_public_key(tmp_path / "none.pub")


# ---- KMS -------------------------------------------------------------------------------------------------

@pytest.fixture
def kms_cloud(tmp_path, monkeypatch):
    """The EC2 facade on moto in process, with a KMS signing key."""
    from bakery.cloud.ec2 import EC2
    from bakery.config.settings import Settings

    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        cloud = EC2(Settings(cloud="aws", region="us-east-1", project_dir=tmp_path))
        yield cloud


def create_key(cloud, spec: str, usage: str = "SIGN_VERIFY") -> str:
    import boto3

    return boto3.client("kms", region_name="us-east-1").create_key(KeyUsage=usage, KeySpec=spec)["KeyMetadata"]["KeyId"]


def test_a_kms_key_signs_and_its_public_key_verifies(kms_cloud, statement, sbom):
    key_id = create_key(kms_cloud, "ECC_NIST_P256")
    signer = KmsSigner(kms_cloud, key_id)
    assert signer.algorithm == "ECDSA_SHA_256"
    envelope = sign_statement(statement, signer)
    assert len(envelope.payload) + 60 <= KMS_RAW_LIMIT  # this statement is signed as it is (MessageType RAW)
    trusted = PublicKey.from_der(kms_cloud.kms_public_key(key_id), f"KMS key {key_id}")
    assert verify(envelope.dumps(), trusted, expected(sbom)).keyid == signer.keyid == trusted.keyid
    # the PEM an operator exports from KMS (aws kms get-public-key) is the same trusted key
    pem = serialization.load_der_public_key(kms_cloud.kms_public_key(key_id)).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (sbom.parent / "kms.pub").write_bytes(pem)
    assert load_public_key(sbom.parent / "kms.pub").keyid == signer.keyid


def test_a_kms_key_that_cannot_sign_provenance_is_refused_naming_it(kms_cloud):
    rsa_key = create_key(kms_cloud, "RSA_2048")
    with pytest.raises(ConfigError, match=f"^KMS key {rsa_key}: RSA keys are not supported"):
        KmsSigner(kms_cloud, rsa_key)
    encrypting = create_key(kms_cloud, "RSA_2048", usage="ENCRYPT_DECRYPT")
    with pytest.raises(CloudError, match=f"^KMS key {encrypting} has KeyUsage ENCRYPT_DECRYPT; provenance needs a "
                                         "SIGN_VERIFY key"):
        KmsSigner(kms_cloud, encrypting)
    with pytest.raises(CloudError, match="kms get-public-key alias/nothing"):
        KmsSigner(kms_cloud, "alias/nothing")


class KmsLike:
    """Stands for KMS where moto differs from it: AWS signs a DIGEST message as the digest it is;
    moto hashes it again (`twice=True`), which the signer's own check must catch."""

    def __init__(self, twice: bool = False):
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.twice = twice
        self.calls: list[tuple[int, str, bool]] = []

    def kms_public_key(self, key_id: str) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    def kms_sign(self, key_id: str, message: bytes, algorithm: str, *, digest: bool) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import utils

        self.calls.append((len(message), algorithm, digest))
        if digest and not self.twice:
            return self.key.sign(message, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
        return self.key.sign(message, ec.ECDSA(hashes.SHA384()))


def test_a_statement_larger_than_kms_takes_is_signed_by_its_digest(statement, sbom):
    big = {**statement}
    big["predicate"] = json.loads(json.dumps(statement["predicate"]))
    big["predicate"]["buildDefinition"]["resolvedDependencies"] += [
        {"uri": f"file:recipes/files/site/page-{i}.html", "digest": {"sha256": f"{i:064x}"}} for i in range(60)]
    kms = KmsLike()
    envelope = sign_statement(big, KmsSigner(kms, "alias/provenance"))
    assert kms.calls == [(48, "ECDSA_SHA_384", True)]  # a SHA-384 digest, not the statement
    trusted = PublicKey.from_der(kms.kms_public_key("alias/provenance"), "kms")
    assert verify(envelope, trusted, expected(sbom)).statement == big

    with pytest.raises(CloudError, match="KMS key alias/provenance: the signature KMS returned \\(ECDSA_SHA_384, "
                                         "DIGEST\\) does not verify with the key's own public key"):
        sign_statement(big, KmsSigner(KmsLike(twice=True), "alias/provenance"))
