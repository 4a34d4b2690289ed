"""Per-build ed25519 keys: the login key pair and the builder's pinned host key.

Both are generated here, so the private login key never travels through the EC2 API
(import_key_pair sends only the public half) and the host key is known before the
builder boots: no trust-on-first-use. (With `builder.host_key: console` the host key is the
builder's own, read from its console output instead: a `HostKey`, public half only.)
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # PEM-like "-----BEGIN OPENSSH PRIVATE KEY-----" text
    public_openssh: str   # "ssh-ed25519 AAAA... comment"

    def fingerprint(self) -> str:
        return fingerprint(self.public_openssh)

    def paramiko_key(self):
        import io

        import paramiko
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))

    def write_private(self, directory: Path, name: str) -> Path:
        """Write the private key 0600 inside a 0700 directory (for ssh -i and debugging)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.private_openssh)
        return path


@dataclass(frozen=True)
class HostKey:
    """A host's public key only: one read from its console (cloud-init made the private half there)."""
    public_openssh: str

    def fingerprint(self) -> str:
        return fingerprint(self.public_openssh)


def generate(comment: str) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private_openssh=private, public_openssh=f"{public} {comment}")


def fingerprint(public_openssh: str) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key line."""
    blob = base64.b64decode(public_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
