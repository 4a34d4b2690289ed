"""DSSE envelopes (Dead Simple Signing Envelope v1, secure-systems-lab/dsse): a payload, its type,
and signatures over PAE(type, payload), which binds the type to the bytes so neither can be swapped.

Signers are a small interface (`Signer`: a key id and `sign(data) -> signature`) with two
implementations: `KeySigner`, a private key read from a PEM file, and `KmsSigner`, an asymmetric
KMS key behind bakery/cloud's facade. Ed25519 and ECDSA on P-256 (SHA-256) and P-384 (SHA-384)
keys; ECDSA signatures are DER, as KMS returns them and as other DSSE tools write them.

Verification trusts one public key, given by the caller: a key id in the envelope is only a hint
(to say "signed by another key" rather than "bad signature"), never a key to check with.

Why not securesystemslib's `dsse.Envelope`: DSSE is PAE plus base64, a few lines over
`cryptography` (already a dependency); securesystemslib's verification reports a failure as
"threshold not met" where bakery must say which of tampered payload, bad signature or wrong key it
was, and its AWS signer calls boto3 itself, which bakery keeps to bakery/cloud.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bakery.errors import CloudError, ConfigError, VerificationFailed

PrivateKey = Union[Ed25519PrivateKey, ec.EllipticCurvePrivateKey]
PublicKeyType = Union[Ed25519PublicKey, ec.EllipticCurvePublicKey]

#: ECDSA curves bakery signs and verifies with, and the hash each is used with (as KMS pairs them)
CURVES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}
KINDS = "Ed25519, ECDSA P-256 or ECDSA P-384"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public_key: PublicKeyType) -> str:
    """sha256 of the key's SubjectPublicKeyInfo (DER): the same for a PEM file and the KMS key it came from."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _supported(key: Any, where: str) -> None:
    if isinstance(key, (Ed25519PrivateKey, Ed25519PublicKey)):
        return
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if key.curve.name in CURVES:
            return
        raise ConfigError(f"{where}: ECDSA keys on {key.curve.name} are not supported; bakery signs with {KINDS} keys")
    kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "")
    raise ConfigError(f"{where}: {kind or 'this kind of'} keys are not supported; bakery signs with {KINDS} keys")


@dataclass(frozen=True)
class PublicKey:
    """The key a verifier trusts; `where` names it in messages (its file, or the KMS key)."""

    key: PublicKeyType
    where: str

    @property
    def keyid(self) -> str:
        return key_id(self.key)

    def verifies(self, signature: bytes, data: bytes) -> bool:
        try:
            if isinstance(self.key, Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(CURVES[self.key.curve.name]()))
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_der(cls, der: bytes, where: str) -> "PublicKey":
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"{where}: not a public key ({exc})") from None
        _supported(key, where)
        return cls(key, where)  # type: ignore[arg-type]


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{path}: not a PEM file (a {what} as -----BEGIN ...----- text)")
    return data


def load_public_key(path: Path) -> PublicKey:
    """The trusted public key from a PEM file (SubjectPublicKeyInfo: `openssl pkey -pubout` writes it)."""
    data = _read_pem(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(f"{path}: a private key; verification trusts the public half only "
                          "(openssl pkey -in KEY -pubout)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM public key ({' '.join(str(exc).split())})") from None
    _supported(key, str(path))
    return PublicKey(key, str(path))  # type: ignore[arg-type]


class Signer(Protocol):
    """What signs a DSSE envelope: a key id (a hint for verifiers) and a signature over bytes."""

    @property
    def keyid(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


class KeySigner:
    """A private key held locally, read from a PEM file (PKCS#8, or SEC1 for EC)."""

    def __init__(self, private_key: PrivateKey, where: str):
        _supported(private_key, where)
        self.private_key = private_key
        self.where = where
        self.public_key = PublicKey(private_key.public_key(), where)
        self.keyid = self.public_key.keyid

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, Ed25519PrivateKey):
            return self.private_key.sign(data)
        return self.private_key.sign(data, ec.ECDSA(CURVES[self.private_key.curve.name]()))


def load_signing_key(path: Path) -> KeySigner:
    """A signer from a PEM private key file; a missing, unreadable, encrypted or wrong kind of key is one line."""
    data = _read_pem(path, "signing key")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"{path}: a public key; signing needs the private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying a passphrase is needed
        raise ConfigError(f"{path}: the signing key is encrypted with a passphrase; give bakery an unencrypted "
                          "key file (0600) or a KMS key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM private key ({' '.join(str(exc).split())})") from None
    return KeySigner(key, str(path))  # type: ignore[arg-type]


class KmsKeys(Protocol):
    """The part of bakery/cloud's facade a KMS signer needs (bakery.cloud.kms.KmsAPI)."""

    def kms_public_key(self, key_id: str) -> bytes: ...

    def kms_sign(self, key_id: str, message: bytes, algorithm: str, *, digest: bool) -> bytes: ...


#: KMS signs at most this many bytes as they are; past it, their digest (MessageType DIGEST)
KMS_RAW_LIMIT = 4096


class KmsSigner:
    """An asymmetric KMS key (KeyUsage SIGN_VERIFY, ECC_NIST_P256 or ECC_NIST_P384): the private
    key never leaves KMS. Each signature is checked against the key's public half before it is
    used, so an endpoint that signs something else (moto hashes a DIGEST message again) is an error
    here, not an envelope that fails every verification later."""

    def __init__(self, kms: KmsKeys, kms_key_id: str):
        self.kms = kms
        self.kms_key_id = kms_key_id
        self.public_key = PublicKey.from_der(kms.kms_public_key(kms_key_id), f"KMS key {kms_key_id}")
        if isinstance(self.public_key.key, Ed25519PublicKey):  # KMS has no Ed25519 keys; from_der allows them
            raise ConfigError(f"KMS key {kms_key_id}: not an ECC_NIST_P256 or ECC_NIST_P384 key")
        self.hash = CURVES[self.public_key.key.curve.name]
        self.algorithm = f"ECDSA_SHA_{self.hash.digest_size * 8}"
        self.keyid = self.public_key.keyid

    def sign(self, data: bytes) -> bytes:
        if len(data) <= KMS_RAW_LIMIT:
            signature = self.kms.kms_sign(self.kms_key_id, data, self.algorithm, digest=False)
        else:
            digest = hashlib.new(self.hash.name, data).digest()
            signature = self.kms.kms_sign(self.kms_key_id, digest, self.algorithm, digest=True)
        if not self.public_key.verifies(signature, data):
            raise CloudError(f"KMS key {self.kms_key_id}: the signature KMS returned ({self.algorithm}, "
                             f"{'RAW' if len(data) <= KMS_RAW_LIMIT else 'DIGEST'}) does not verify with the key's "
                             "own public key; the endpoint does not sign as AWS KMS does")
        return signature


# ---- envelopes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    @property
    def payload_sha256(self) -> str:
        """The statement's digest: what the image is tagged with and the evidence store is keyed by."""
        return hashlib.sha256(self.payload).hexdigest()

    def to_json(self) -> dict:
        return {"payloadType": self.payload_type, "payload": base64.b64encode(self.payload).decode(),
                "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in self.signatures]}

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode() + b"\n"

    @classmethod
    def parse(cls, data: bytes | str | dict, where: str = "envelope") -> "Envelope":
        """An envelope from its JSON; anything else fails verification in one line."""

        def bad(problem: str) -> VerificationFailed:
            return VerificationFailed(f"{where}: not a DSSE envelope: {problem}")

        if not isinstance(data, dict):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError) as exc:
                raise bad(f"not JSON ({' '.join(str(exc).split())})") from None
        if not isinstance(data, dict):
            raise bad("the document is not an object")
        for key in ("payloadType", "payload"):
            if not isinstance(data.get(key), str):
                raise bad(f"{key} is missing or not a string")
        signatures = data.get("signatures")
        if not isinstance(signatures, list) or not signatures:
            raise bad("it carries no signatures")
        parsed = []
        for i, item in enumerate(signatures):
            if not isinstance(item, dict) or not isinstance(item.get("sig"), str) \
                    or not isinstance(item.get("keyid", ""), str):
                raise bad(f"signatures[{i}] is not an object with a sig (and a keyid)")
            parsed.append(Signature(item.get("keyid", ""), _b64(item["sig"], lambda p: bad(f"signatures[{i}].sig {p}"))))
        return cls(data["payloadType"], _b64(data["payload"], lambda p: bad(f"payload {p}")), tuple(parsed))


def _b64(text: str, bad) -> bytes:
    """Standard or URL-safe base64, padded or not: DSSE allows either on input."""
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad("is not base64") from None


def sign(payload_type: str, payload: bytes, signer: Signer) -> Envelope:
    return Envelope(payload_type, payload, (Signature(signer.keyid, signer.sign(pae(payload_type, payload))),))


def verify_signature(envelope: Envelope, trusted: PublicKey, *, payload_sha256: str | None = None,
                     where: str = "envelope") -> Signature:
    """The signature the trusted key made over this envelope's payload; otherwise one line saying
    which failure it is. With `payload_sha256` (the digest recorded where the statement was stored,
    e.g. on the image) a changed payload is told apart from a changed signature."""
    if payload_sha256 is not None and envelope.payload_sha256 != payload_sha256.lower():
        raise VerificationFailed(f"{where}: tampered payload: its sha256 is {envelope.payload_sha256}, the statement "
                                 f"recorded was {payload_sha256.lower()}")
    signed = pae(envelope.payload_type, envelope.payload)
    for signature in envelope.signatures:
        if trusted.verifies(signature.sig, signed):
            return signature
    ours = [s for s in envelope.signatures if not s.keyid or s.keyid == trusted.keyid]
    if not ours:
        named = ", ".join(s.keyid[:16] for s in envelope.signatures)
        raise VerificationFailed(f"{where}: wrong key: signed by key {named}, not by the trusted key "
                                 f"{trusted.keyid[:16]} ({trusted.where})")
    if payload_sha256 is not None:
        raise VerificationFailed(f"{where}: bad signature: the payload is the one recorded, but its signature does not "
                                 f"verify with the trusted key {trusted.keyid[:16]} ({trusted.where})")
    raise VerificationFailed(f"{where}: bad signature: it does not verify over this payload with the trusted key "
                             f"{trusted.keyid[:16]} ({trusted.where}): the payload or the signature was altered")
