"""Host prerequisites for the local cloud, reported up front instead of failing mid-bake, and
installed by `bakery local.install` (scripts/install.sh calls it too).

Everything here needs root (mounts, namespaces, ``ip netns``) and a handful of Debian packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
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


#: what `local.install` installs: every package above, and the OpenSSH client (`bakery ssh`)
PACKAGES: tuple[str, ...] = tuple(sorted({*REQUIRED_COMMANDS.values(), "openssh-client"}))
#: how to run a command as root: sudo's secure_path drops a virtualenv's bin, so give the full path
AS_ROOT = 're-run it as root (sudo -E "$(command -v bakery)" ..., or sudo -E .venv/bin/invoke ... in a checkout)'


def _overlay_available(filesystems: Path = Path("/proc/filesystems")) -> bool:
    try:
        lines = filesystems.read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[-1:] == ["overlay"] for line in lines)


def check_prerequisites(commands: bool = True) -> list[str]:
    """Return one human message per missing prerequisite (empty list = ready); `commands=False`
    leaves out the missing commands (`local.install --check` names their packages instead)."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(f"the local cloud needs root (mounts, namespaces, ip netns): {AS_ROOT}")
    missing: dict[str, list[str]] = {}
    for command, package in REQUIRED_COMMANDS.items():
        if commands and shutil.which(command) is None:
            missing.setdefault(package, []).append(command)
    for package, names in missing.items():
        listed = ", ".join(f"`{c}`" for c in names)
        problems.append(f"missing command {listed}: `bakery local.install` installs it (apt-get install -y {package})")
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


def missing_packages(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """The packages dpkg does not have installed (all of them where there is no dpkg)."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages],
                         capture_output=True, text=True).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def install(log: Callable[[str], None], *, check_only: bool = False) -> list[str]:
    """Install the missing packages with apt-get (and load overlayfs), then check the host again.
    Returns what was (or, with `check_only`, would be) installed; raises LocalCloudError with every
    problem left."""
    missing = missing_packages()
    if missing and not check_only:
        if os.geteuid() != 0:
            raise LocalCloudError(f"local.install: installing {' '.join(missing)} needs root: {AS_ROOT}")
        if shutil.which("apt-get") is None:
            raise LocalCloudError(f"local.install: no apt-get (Debian 12 or Ubuntu): install "
                                  f"{' '.join(missing)} with this system's package manager")
        _apt_install(missing, log)
    if not check_only and not _overlay_available() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "overlay"], capture_output=True)
    problems = check_prerequisites(commands=not check_only)
    if check_only and missing:
        problems.insert(0, f"missing packages {' '.join(missing)}: `bakery local.install` installs them")
    if problems:
        raise LocalCloudError("local cloud not ready: " + "; ".join(problems))
    return missing


def _apt_install(packages: list[str], log: Callable[[str], None]) -> None:
    """apt-get install, with the package lists as they are first: scripts/install.sh has just
    updated them, and an update costs seconds. Lists that do not know a package (a new machine,
    old lists) are updated once, then the install is tried again."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        log(f"$ {' '.join(argv)}")
        return subprocess.run(argv, env=env, capture_output=True, text=True)

    if run(install).returncode == 0:
        return
    for argv in (["apt-get", "update", "-q"], install):
        done = run(argv)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LocalCloudError(f"local.install: {' '.join(argv[:2])} failed ({done.returncode}): {last}")
