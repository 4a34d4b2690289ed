"""Local cloud: EC2-like instances as overlayfs + namespace sandboxes on this host.

A Debian base rootfs (``base``) is the root image; baked images are tar.zst overlay layers
(``layers``) stacked on it; a ``Sandbox`` boots a stack with real cloud-init and a chroot sshd
reachable only through its own network namespace. Root is required (see ``prereqs``).
The sandbox is for hygiene and reproducibility, not a security boundary: root inside it keeps
all capabilities of host root.
"""

from bakery.local.base import default_data_dir, ensure_base_image, load_base_metadata
from bakery.local.errors import LocalCloudError
from bakery.local.layers import LayerStore
from bakery.local.prereqs import check_prerequisites, require
from bakery.local.sandbox import Sandbox

__all__ = [
    "LayerStore",
    "LocalCloudError",
    "Sandbox",
    "check_prerequisites",
    "default_data_dir",
    "ensure_base_image",
    "load_base_metadata",
    "require",
]
