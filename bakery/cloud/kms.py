"""KMS asymmetric signing keys, for signed provenance (bakery/evidence/dsse.py KmsSigner): the
public half of a key and a signature made inside KMS. A mixin of the EC2 facade."""

from __future__ import annotations

from bakery.errors import CloudError


class KmsAPI:
    """KMS operations of the EC2 facade."""

    @property
    def kms(self):
        return self.service("kms")

    def kms_public_key(self, key_id: str) -> bytes:
        """The key's public half (DER SubjectPublicKeyInfo); a key that cannot sign is an error naming it."""
        resp = self.call(f"kms get-public-key {key_id}", self.kms.get_public_key, KeyId=key_id)
        usage = resp.get("KeyUsage")
        if usage is not None and usage != "SIGN_VERIFY":
            raise CloudError(f"KMS key {key_id} has KeyUsage {usage}; provenance needs a SIGN_VERIFY key "
                             "(ECC_NIST_P256 or ECC_NIST_P384)")
        return resp["PublicKey"]

    def kms_sign(self, key_id: str, message: bytes, algorithm: str, *, digest: bool) -> bytes:
        """A signature over `message` (MessageType RAW, at most 4096 bytes) or over the digest it
        is (DIGEST, made with the algorithm's hash)."""
        return self.call(f"kms sign {key_id}", self.kms.sign, KeyId=key_id, Message=message,
                         MessageType="DIGEST" if digest else "RAW", SigningAlgorithm=algorithm)["Signature"]
