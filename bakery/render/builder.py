"""User data for a builder instance: hand it the host key we pinned.

cloud-init's `ssh_keys` installs our pre-generated ed25519 host key, so the first key
sshd ever presents is one we already trust. The key lives only as long as the builder:
hygiene deletes it before the snapshot and the builder is terminated afterwards.
"""

from __future__ import annotations

import yaml

from bakery.remote.keys import KeyPair


def builder_user_data(host_key: KeyPair) -> str:
    config = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": host_key.private_openssh, "ed25519_public": host_key.public_openssh},
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)
