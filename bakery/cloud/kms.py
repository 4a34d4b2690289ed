"""KMS: asymmetric signing keys, for signed provenance (bakery/evidence/dsse.py KmsSigner): the
public half of a key and a signature made inside KMS; and which key encrypts EBS volumes by
default, and whether a key is AWS-managed (another account can never use one). A mixin of the
EC2 facade."""

from __future__ import annotations

from bakery.config.patterns import AWS_EBS_KEY, aws_managed_alias
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

    def ebs_default_key(self) -> str:
        """The key EBS encrypts with when a request names none, in this region: the account's
        AWS-managed `alias/aws/ebs` unless ModifyEbsDefaultKmsKeyId set another. An endpoint
        without the call (moto) has never been told another: the AWS-managed one."""
        try:
            return self.call("get-ebs-default-kms-key-id", self.client.get_ebs_default_kms_key_id)["KmsKeyId"]
        except CloudError as exc:
            if self.unsupported(exc):
                return AWS_EBS_KEY
            raise

    def aws_managed_key(self, key_id: str) -> bool:
        """Whether `key_id` (an id, alias or ARN of either) is a key AWS manages, which only its
        own account can use."""
        if aws_managed_alias(key_id):
            return True
        try:
            meta = self.call(f"kms describe-key {key_id}", self.kms.describe_key, KeyId=key_id)["KeyMetadata"]
        except CloudError as exc:
            if "NotFound" in self.code_of(exc):
                return False  # not this account's to look at: the copy or share says what is wrong
            raise
        return meta.get("KeyManager") == "AWS"
