"""Host prerequisites for the local cloud, reported up front instead of failing mid-bake.

Everything here needs root (mounts, namespaces, ``ip netns``) and a handful of Debian packages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bakery.local.errors import LocalCloudError

#: command -> Debian package that provides it
REQUIRED_COMMANDS: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "slirp4netns": "slirp4netns",
    "zstd": "zstd",
    "tar": "tar",
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "systemd-nspawn": "systemd-container",  # boots each instance's systemd
    "nft": "nftables",  # enforces security groups, ACLs and the source/dest check
}


def _overlay_available(filesystems: Path = Path("/proc/filesystems")) -> bool:
    try:
        lines = filesystems.read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[-1:] == ["overlay"] for line in lines)


def check_prerequisites() -> list[str]:
    """Return one human message per missing prerequisite (empty list = ready)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(
            "the local cloud needs root (mounts, namespaces, ip netns): re-run the command with `sudo -E`"
        )
    missing: dict[str, list[str]] = {}
    for command, package in REQUIRED_COMMANDS.items():
        if shutil.which(command) is None:
            missing.setdefault(package, []).append(command)
    for package, commands in missing.items():
        names = ", ".join(f"`{c}`" for c in commands)
        problems.append(f"missing command {names}: install it with `apt-get install -y {package}`")
    if not _overlay_available():
        problems.append(
            "overlayfs is not available in this kernel: load it with "
            "`apt-get install -y kmod && modprobe overlay`"
        )
    return problems


def require() -> None:
    """Raise LocalCloudError listing every missing prerequisite, or return if the host is ready."""
    problems = check_prerequisites()
    if problems:
        raise LocalCloudError("local cloud prerequisites missing: " + "; ".join(problems))
