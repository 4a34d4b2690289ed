"""User data for the instances a bake starts: hand them the host key we pinned (unless the recipe
pins the key they make themselves, read from their console: `builder.host_key: console`).

cloud-init's `ssh_keys` installs our pre-generated ed25519 host key, so the first key
sshd ever presents is one we already trust. The key lives only as long as the builder:
hygiene deletes it before the snapshot and the builder is terminated afterwards.

A smoke instance gets the same part, followed by the parts of the environment's user data
it is tested with (flattened into one multipart document, the same way a tier's own parts
are packed). The host key is a private key, which the tier's secret lint rightly refuses, so
this part never goes through the templates' renderer.
"""

from __future__ import annotations

from typing import Protocol

import yaml

from bakery.errors import ConfigError
from bakery.render.userdata import CLOUD_CONFIG, MAX_USER_DATA, UserData, multipart

HOST_KEY_PART = "00-bakery-hostkey.yaml"


class KeyPair(Protocol):  # bakery.remote.keys.KeyPair
    private_openssh: str
    public_openssh: str


def builder_user_data(host_key: KeyPair) -> str:
    config = {
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": host_key.private_openssh, "ed25519_public": host_key.public_openssh},
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)


def smoke_user_data(host_key: KeyPair | None, tier: UserData | None, where: str) -> str | None:
    """The host key part, then (when the smoke test names an environment's tier) that tier's parts.
    Without a host key (pinned from the console): the tier's parts alone, or nothing."""
    if host_key is None:
        return tier.text if tier is not None else None
    host_part = builder_user_data(host_key)
    if tier is None:
        return host_part
    text = multipart([(HOST_KEY_PART, CLOUD_CONFIG, host_part), *tier.documents])
    if len(text.encode()) > MAX_USER_DATA:
        raise ConfigError(f"{where}: the smoke instance's user data (the tier's plus the pinned host key) is "
                          f"{len(text.encode())} bytes, over EC2's {MAX_USER_DATA}-byte limit")
    return text
