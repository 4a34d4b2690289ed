"""The Debian base rootfs every local instance stacks its layers on (the "source AMI").

Built once per host with ``mmdebstrap`` (~30 s) and cached under the data dir; later calls return
the cached directory. The build runs in a temporary directory that is renamed into place, under a
file lock, so a crash never leaves a half-built base and two processes never build it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bakery.local.errors import LocalCloudError
from bakery.local.tls import make_ca

SUITE = "bookworm"
#: systemd-sysv and dbus: instances boot systemd as PID 1 (systemd-nspawn --boot), which runs
#: cloud-init's own units, sshd and whatever a recipe enables, as on Debian's AMIs
#: python3-certifi: Debian's answers with the system store, where the local cloud's CA is; without
#: it the AWS CLI a recipe installs trusts only its own bundle and cannot reach the APIs (privatelink.py)
PACKAGES = ("systemd-sysv", "dbus", "openssh-server", "cloud-init", "ca-certificates", "python3-certifi",
            "iproute2", "curl", "sudo")
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
CLOUD_CFG_NAME = "99-lsbx.cfg"
#: cloud-init config for an instance whose network the local cloud wires from outside.
CLOUD_CFG = """\
# Written by bakery: cloud-init inside a bakery local instance (the local cloud owns networking).
# As on Debian's AMIs: the instance metadata service at 169.254.169.254. (No comment after the list:
# ds-identify's parser would take it for part of the list and disable cloud-init.)
datasource_list: [ Ec2, None ]
datasource_pkg_list: [ bakery_cloudinit ]   # its Ec2 is cloud-init's, knowing the platform is AWS
datasource:
  Ec2:
    strict_id: false                 # a container has no EC2 DMI to identify the platform by
    metadata_urls: [ "http://169.254.169.254" ]   # no IPv6 endpoint or instance-data name here
    max_wait: 120                    # cloud-init's default on EC2: a busy host must not make an
    timeout: 10                      # instance fall back to DataSourceNone (random host keys)
network: {config: disabled}          # the local cloud wires the instance's interfaces from outside
resize_rootfs: false
growpart: {mode: "off"}              # avoids the cc_resizefs "/dev/overlay did not exist" warning
locale: C.UTF-8                      # en_US.UTF-8 is not generated; cc_locale would fail
manage_etc_hosts: localhost          # no DNS for instance hostnames here: sudo must resolve its own
disable_root: false                  # the key pair's key also works for root (tests log in as root)
ssh_genkeytypes: [ ed25519, ecdsa ]  # as Amazon Linux 2023: no RSA (its 3072-bit key took 0.2-0.5 s of
                                     # every first boot) and no DSA (OpenSSH 9 refuses it anyway)
system_info:                         # like Debian's official AMIs: log in as `admin`, passwordless sudo
  default_user:
    name: admin
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
"""
#: cloud-init's Ec2 datasource, told the platform is AWS. On EC2 cloud-init finds that in the
#: hypervisor's DMI (a product UUID starting "ec2"); in a container it reads no DMI at all, so it
#: would take the local cloud for an unknown EC2-compatible cloud, which it never asks for an IMDSv2
#: token: an instance that requires tokens (bakery's default) would get no metadata. Everything
#: else (the token, the crawl, user data, keys) is cloud-init's own code.
DATASOURCE_PKG = "usr/lib/python3/dist-packages/bakery_cloudinit"
DATASOURCE_SHIM = '''\
"""Written by bakery: the local cloud's Ec2 datasource (see bakery/local/base.py)."""
from cloudinit import sources
from cloudinit.sources import DataSourceEc2 as ec2


class DataSourceEc2(ec2.DataSourceEc2):
    def _get_cloud_name(self):
        return ec2.CloudNames.AWS  # what EC2's DMI says, which a container cannot read


datasources = [(DataSourceEc2, (sources.DEP_FILESYSTEM, sources.DEP_NETWORK))]


def get_datasource_list(depends):
    return sources.list_from_depends(depends, datasources)
'''
#: the CA the image trusts, made with it and kept next to its rootfs (key readable by root only)
CA_DIR = "ca"
CA_FILE = "bakery-local-cloud.crt"
#: run on the host after the install; "$1" is the rootfs being built
CUSTOMIZE_HOOKS = (
    f'upload {{cfg}} /etc/cloud/cloud.cfg.d/{CLOUD_CFG_NAME}',
    f'mkdir -p "$1/{DATASOURCE_PKG}" && : > "$1/{DATASOURCE_PKG}/__init__.py"',
    f'upload {{shim}} /{DATASOURCE_PKG}/DataSourceEc2.py',
    f'upload {{ca}} /usr/local/share/ca-certificates/{CA_FILE}',  # the AWS APIs' certificates (tls.py)
    'chroot "$1" update-ca-certificates',
    'rm -f "$1"/etc/ssh/ssh_host_*',  # cloud-init cc_ssh generates per-instance host keys
    'rm -f "$1/etc/resolv.conf" && : > "$1/etc/resolv.conf"',  # mmdebstrap copied the host's
    'rm -f "$1/etc/hostname" && echo localhost > "$1/etc/hostname"',
)
META_NAME = "meta.json"
ROOTFS_NAME = "rootfs"

Log = Callable[[str], None]


def _recipe() -> dict[str, object]:
    return {
        "suite": SUITE,
        "variant": "minbase",
        "packages": list(PACKAGES),
        "mirrors": list(MIRRORS),
        "cloud_cfg": CLOUD_CFG,
        "datasource": DATASOURCE_SHIM,
        "hooks": list(CUSTOMIZE_HOOKS),
        "skip": ["cleanup/apt/lists"],
    }


def _recipe_hash() -> str:
    blob = json.dumps(_recipe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def share_base(data_dir: Path, shared: Path) -> None:
    """Let a private data dir (a test's or a bench's own local cloud) use the base images built
    under ``shared`` instead of building its own."""
    (shared / "base").mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "base").symlink_to(shared / "base")


def base_dir(data_dir: Path) -> Path:
    """Directory holding ``rootfs/`` and ``meta.json`` for the current base recipe."""
    return data_dir / "base" / f"{SUITE}-{_recipe_hash()}"


def base_ca_dir(data_dir: Path) -> Path:
    """The CA the current base image trusts (tls.py): the local endpoint issues its certificates."""
    return base_dir(data_dir) / CA_DIR


def load_base_metadata(rootfs: Path) -> dict[str, object]:
    """Metadata recorded next to a base rootfs (``id``, ``digest``, ``created``, ``packages``...)."""
    path = rootfs.parent / META_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LocalCloudError(
            f"base image metadata unreadable: {path} ({exc}); delete {rootfs.parent} to rebuild it"
        ) from None


def _is_complete(bdir: Path) -> bool:
    return (bdir / META_NAME).is_file() and (bdir / ROOTFS_NAME / "usr/sbin/sshd").exists()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _installed_packages(rootfs: Path) -> dict[str, str]:
    """Parse dpkg's status file: package -> version, installed ones only."""
    packages: dict[str, str] = {}
    text = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            arch = fields.get("Architecture", "")
            name = fields["Package"] if arch in ("", "all", "amd64") else f"{fields['Package']}:{arch}"
            packages[name] = fields.get("Version", "")
    return packages


def _build(target: Path, workdir: Path, log_file: Path) -> None:
    cfg = workdir / CLOUD_CFG_NAME
    cfg.write_text(CLOUD_CFG)
    shim = workdir / "DataSourceEc2.py"
    shim.write_text(DATASOURCE_SHIM)
    ca = make_ca(workdir / CA_DIR)
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(PACKAGES),
        "--skip=cleanup/apt/lists",  # keep apt lists so recipes can apt-get install without update
        *[f"--customize-hook={h.format(cfg=cfg, shim=shim, ca=ca)}" for h in CUSTOMIZE_HOOKS],
        SUITE,
        str(target),
        *MIRRORS,
    ]
    with open(log_file, "wb") as out:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise LocalCloudError(
            f"building the base image failed (mmdebstrap exit {proc.returncode}): "
            f"{' | '.join(tail)}; full log: {log_file}; command: {' '.join(cmd)}"
        )


def ensure_base_image(data_dir: Path, *, log: Log = print) -> Path:
    """Return the base rootfs directory under ``data_dir``, building it first if needed."""
    bdir = base_dir(data_dir)
    if _is_complete(bdir):
        return bdir / ROOTFS_NAME
    if shutil.which("mmdebstrap") is None:
        raise LocalCloudError(
            "cannot build the base image: mmdebstrap is missing; install it with `apt-get install -y mmdebstrap`"
        )
    parent = bdir.parent
    try:
        with _locked(parent / ".lock"):
            return _build_locked(bdir, log)
    except OSError as exc:
        raise LocalCloudError(
            f"cannot build the base image in {parent}: {exc.strerror or exc}; "
            "set BAKERY_DATA_DIR to a writable directory on a local filesystem"
        ) from None


def _build_locked(bdir: Path, log: Log) -> Path:
    """Build ``bdir`` (caller holds the lock): mmdebstrap into a temp dir, then one rename."""
    parent = bdir.parent
    if _is_complete(bdir):  # another process finished it while we waited
        return bdir / ROOTFS_NAME
    for stale in parent.glob(f".tmp-{bdir.name}-*"):  # leftovers of a crashed build (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    if bdir.exists():
        shutil.rmtree(bdir)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{bdir.name}-", dir=parent))
    os.chmod(tmp, 0o755)
    log_file = parent / f"{bdir.name}.build.log"
    log(f"building Debian {SUITE} base image in {bdir} (mmdebstrap, about 30 s, once)")
    started = time.monotonic()
    try:
        _build(tmp / ROOTFS_NAME, tmp, log_file)
        packages = _installed_packages(tmp / ROOTFS_NAME)
        digest_src = json.dumps({"recipe": _recipe(), "packages": packages}, sort_keys=True)
        digest = hashlib.sha256(digest_src.encode()).hexdigest()
        meta = {
            "id": "ami-" + digest[:17],  # registered in the layer store like any other image
            "kind": "base",
            "digest": "sha256:" + digest,
            "recipe_hash": _recipe_hash(),
            "suite": SUITE,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "packages": packages,
        }
        (tmp / CLOUD_CFG_NAME).unlink()
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.rename(tmp, bdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"base image ready in {time.monotonic() - started:.1f} s: {bdir / ROOTFS_NAME}")
    return bdir / ROOTFS_NAME
