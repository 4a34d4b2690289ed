"""A sandbox is a local "EC2 instance": systemd booted on overlayfs over image layers.

Shape: a named netns ``bakery-<name>`` (only ``lo``; bakery/local/vpcnet.py wires the VPC's
interfaces into it from outside, and the local cloud's instances reach beyond their VPC only as its
gateways allow, through the cloud's internet namespace: internet.py; a sandbox started on its own,
outside any VPC, may get ``egress``: a slirp4netns NAT of its own that cannot reach the host's loopback),
and in it ``systemd-nspawn --boot`` on the overlay of the image's layers, started from a private
mount namespace: the instance's PID 1 is the image's own systemd, so cloud-init runs through its
systemd units, sshd and every unit enabled in the image start as they do on an EC2 instance, and
stop is a clean poweroff. Nothing is routed to the host: the host talks to the
sandbox through sockets created inside its netns (``connect``) or through ``nsenter`` (``exec``).

The host is left as it was: nspawn registers with no machined (``--register=no --keep-unit``),
keeps its lock and propagation dirs on a private tmpfs, touches neither the host's network nor
its resolv.conf, timezone or journal, and runs the instance in a cgroup of its own
(``bakery-<name>`` under the caller's, removed at stop) so instances never share one.

Where cloud-init finds its instance data: a local cloud instance has no seed, and its cloud-init
uses the Ec2 datasource of the base image's config, as on Debian's AMIs: the endpoint's metadata
service answers through the ENIs wired before boot (``before_boot``; imds.py). A sandbox started
on its own (tests, a machine without an endpoint) is given ``meta_data``: a NoCloud seed (user
data + meta-data with ``public-keys``) is written into the upper dir with a config that selects
NoCloud, so cloud-init installs the key pair and any ``ssh_keys`` host key all the same.
All processes are detached from the caller; state (upper/work/merged, pids/, logs/) lives in
``state_dir/<name>/`` so another process can ``attach`` and stop it.

Not done here, on purpose: ``/usr/sbin/policy-rc.d`` (bakes may write it so package postinsts
do not start daemons, and remove it before capture) and deprovisioning (``cloud-init clean``,
host keys, apt lists) are the caller's job. The sandbox is not a security boundary: root inside
keeps the capabilities nspawn grants a container, plus CAP_NET_ADMIN (its own interfaces, as on EC2).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from bakery.local.errors import LocalCloudError
from bakery.local.layers import TAR_XATTR_ARGS
from bakery.local.netns import start_slirp, tcp_connect, wait_slirp
from bakery.local.procs import alive as _alive
from bakery.local.procs import starttime as _starttime

NETNS_DIR = Path("/run/netns")
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_ENV = (f"PATH={SANDBOX_PATH}", "HOME=/root", "LANG=C.UTF-8", "TERM=dumb")
#: slirp4netns's DNS forwarder: a sandbox's with ``egress`` (the local cloud's instances ask their
#: VPC's resolver, which answers whatever way out the VPC has)
SLIRP_NAMESERVER = "10.0.2.3"
#: how long stop() lets systemd power off cleanly before it kills the machine
STOP_TIMEOUT = 10.0
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SEED_DIR = "var/lib/cloud/seed/nocloud"
#: with a seed, this config (read after the base's 99-lsbx.cfg) makes cloud-init use it
_SEED_CFG = "etc/cloud/cloud.cfg.d/99-zz-bakery-seed.cfg"
_SEED_CFG_TEXT = "# Written by bakery: this sandbox was started with a NoCloud seed\ndatasource_list: [ NoCloud, None ]\n"
#: Left out of captured layers: the launcher's seed and the config selecting it (instance data,
#: EC2 serves it from IMDS; user data may hold a host key), and what identifies the machine that
#: wrote the disk rather than the image (systemd makes them afresh on an instance's first boot):
#: its machine id, its journal, its random seed and credential secret.
_CAPTURE_EXCLUDES = (
    f"./{_SEED_DIR}/user-data", f"./{_SEED_DIR}/meta-data", f"./{_SEED_CFG}",
    "./etc/machine-id", "./var/lib/dbus/machine-id", "./var/log/journal/*",
    "./var/lib/systemd/random-seed", "./var/lib/systemd/credential.secret",
)  # fmt: skip
#: cloud-init's stages in its status.json -> the names boot_status() reports
_CLOUD_INIT_STAGES = (("init-local", "init-local"), ("init", "init"), ("modules-config", "config"),
                      ("modules-final", "final"))

# Started as the launcher, inside the instance's netns, in a private mount namespace; execs nspawn.
# $1 state dir, $2 overlay lowerdir string, $3 hostname, $4 machine name,
# then the cgroup dirs (made by the caller) this process moves into before nspawn starts.
_INIT_SCRIPT = r"""
set -eu
D=$1 LOWER=$2 HOST=$3 NAME=$4
shift 4
PATH=/usr/sbin:/usr/bin:/sbin:/bin
# drop other sandboxes' netns bind mounts copied into this mount ns, or they would pin those netns;
# nspawn joins this process's own netns (/proc/self/ns/net)
umount -l /run/netns 2>/dev/null || true
# nspawn keeps locks and mount propagation dirs in /run/systemd/nspawn: on a private tmpfs
if [ -d /run/systemd ]; then mount -t tmpfs -o mode=0755,size=1m tmpfs /run/systemd
else mount -t tmpfs -o mode=0755,size=1m tmpfs /run; fi
for cg in "$@"; do echo $$ > "$cg/cgroup.procs"; done
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$D/upper,workdir=$D/work" "$D/merged"
# a bind mount, so the launcher's DNS setting never ends up in a captured layer
set -- "--bind=$D/resolv.conf:/etc/resolv.conf"
# --register=no --keep-unit: no machined, no scope (the host may not run systemd); the rest keeps
# nspawn off the host's network, resolv.conf, timezone and journal
exec systemd-nspawn --quiet --directory="$D/merged" --boot --machine="$NAME" --hostname="$HOST" \
  --register=no --keep-unit --network-namespace-path=/proc/self/ns/net --capability=CAP_NET_ADMIN \
  --resolv-conf=off --timezone=off --link-journal=no --console=read-only "$@"
"""

#: Popen objects of processes this process started, so stop() can reap them (no zombies)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _CHILDREN[pid] = proc


def _kill(pid: int, starttime: int, sig: int, wait: float) -> bool:
    """Signal our process (identity-checked) and wait until it is gone; True if it is gone."""
    if _alive(pid, starttime):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while _alive(pid, starttime):
        if pid in _CHILDREN:
            _CHILDREN[pid].poll()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    _reap(pid)
    return True


def _ns_pid(pid: int) -> int:
    """The pid a process has in its own (innermost) pid namespace; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cgroup_parents() -> list[Path]:
    """This process's cgroup directory in the hierarchies systemd uses: the unified (cgroup2)
    one and the legacy ``name=systemd`` one, whichever are mounted."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            own["cgroup2"] = path
        elif "name=systemd" in controllers.split(","):
            own["cgroup"] = path
    parents: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3]
        if fstype not in own or fstype in parents:
            continue
        if fstype == "cgroup" and "name=systemd" not in options.split(","):
            continue
        root, mountpoint = fields[3], fields[4].encode().decode("unicode_escape")
        path = own[fstype]
        if root != "/":  # the mount shows a subtree: our path relative to it (or its top)
            path = path[len(root):] if path.startswith(root + "/") else ""
        parents[fstype] = Path(mountpoint) / path.lstrip("/")
    return list(parents.values())


def _mkdirs_like(upper: Path, rel: str, lowers: list[Path]) -> Path:
    """Create ``upper/rel`` with each component's mode/owner copied from the topmost lower that
    has it: overlayfs shows the upper dir's attributes, so a plain mkdir could change them."""
    current = upper
    rel_parts: list[str] = []
    for part in Path(rel).parts:
        rel_parts.append(part)
        current = current / part
        if current.is_dir():
            continue
        current.mkdir()
        for lower in lowers:
            src = lower.joinpath(*rel_parts)
            if src.is_dir() and not src.is_symlink():
                st = src.stat()
                os.chown(current, st.st_uid, st.st_gid)
                os.chmod(current, st.st_mode & 0o7777)
                break
        else:
            os.chmod(current, 0o755)
    return current


class Sandbox:
    """Handle to one sandbox; cheap to create, all truth is in its state dir and /proc."""

    def __init__(self, name: str, dir: Path, pid: int, starttime: int) -> None:
        self.name = name
        self.dir = dir
        self.pid = pid  # host pid of the sandbox's PID 1 (0 once stopped)
        self._starttime = starttime
        self._own: list[int] = []  # host processes this handle started (reaped by stop)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return f"bakery-{self.name}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def merged(self) -> Path:
        return self.dir / "merged"

    def _pidfile(self, role: str) -> Path:
        return self.dir / "pids" / f"{role}.pid"

    def _read_pid(self, role: str) -> tuple[int, int]:
        try:
            pid, starttime = self._pidfile(role).read_text().split()
            return int(pid), int(starttime)
        except (OSError, ValueError):
            return 0, 0

    def _write_pid(self, role: str, pid: int) -> int:
        starttime = _starttime(pid)
        tmp = self._pidfile(role).with_suffix(".tmp")
        tmp.write_text(f"{pid} {starttime}\n")
        os.replace(tmp, self._pidfile(role))
        return starttime

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        name: str,
        lowers: list[Path],
        state_dir: Path,
        *,
        user_data: bytes | None,
        meta_data: dict[str, object] | None,
        egress: bool = True,
        hostname: str | None = None,
        before_boot: Callable[[str], None] | None = None,
        nameserver: str = SLIRP_NAMESERVER,
    ) -> Sandbox:
        """Boot a sandbox and return once its systemd runs (~0.1 s); the caller waits for SSH via
        ``connect``, or for the end of the boot via ``boot_status``.

        ``lowers`` are overlay lower dirs, topmost first (``LayerStore.lowers``). ``meta_data``
        (with ``user_data``) makes a NoCloud seed: it should carry ``public-keys``; ``instance-id``
        and ``local-hostname`` default to the name. Without it cloud-init asks the metadata service.
        ``before_boot(netns)`` runs once the network namespace exists and before anything starts in
        it (wiring the instance's ENIs, so its init finds the network it will have). ``nameserver``
        goes in its resolv.conf: slirp4netns's by default, the VPC's resolver for a VPC instance.
        """
        if meta_data is None and user_data:
            raise LocalCloudError(f"sandbox {name}: user data without meta-data has no seed to go in")
        if not _NAME_RE.match(name):
            raise LocalCloudError(
                f"invalid sandbox name {name!r}: use 1-63 lowercase letters, digits or '-'"
            )
        lowers = [Path(p).resolve() for p in lowers]
        if not lowers:
            raise LocalCloudError(f"sandbox {name}: no image layers given")
        for lower in lowers:
            if not lower.is_dir():
                raise LocalCloudError(f"sandbox {name}: image layer directory missing: {lower}")
            if ":" in str(lower) or "," in str(lower):
                raise LocalCloudError(f"sandbox {name}: layer path must not contain ':' or ',': {lower}")
        d = Path(state_dir).resolve() / name
        if ":" in str(d) or "," in str(d):
            raise LocalCloudError(f"sandbox {name}: state dir must not contain ':' or ',': {d}")
        netns_path = NETNS_DIR / f"bakery-{name}"
        if netns_path.exists():
            raise LocalCloudError(
                f"network namespace for sandbox {name} already exists: remove it with `ip netns del bakery-{name}`"
            )
        host = hostname or str((meta_data or {}).get("local-hostname") or name)

        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            d.mkdir(mode=0o755)  # atomic claim of the name within this state dir
        except FileExistsError:
            raise LocalCloudError(f"sandbox {name} already exists: {d}; destroy it first") from None
        except OSError as exc:
            raise LocalCloudError(f"sandbox {name}: cannot create {d}: {exc.strerror or exc}") from None
        try:
            for sub in ("upper", "work", "merged", "pids", "logs"):
                (d / sub).mkdir(parents=True, mode=0o700 if sub == "pids" else 0o755)
            os.chmod(d / "upper", 0o755)
            if meta_data is not None:
                meta = {"instance-id": name, **meta_data, "local-hostname": host}
                seed = _mkdirs_like(d / "upper", _SEED_DIR, lowers)
                (seed / "meta-data").write_text(json.dumps(meta, indent=1) + "\n")  # JSON is YAML
                ud = seed / "user-data"
                ud.touch(mode=0o600)
                ud.write_bytes(user_data or b"")
                cfg = _mkdirs_like(d / "upper", str(Path(_SEED_CFG).parent), lowers) / Path(_SEED_CFG).name
                cfg.write_text(_SEED_CFG_TEXT)
            (d / "resolv.conf").write_text(f"nameserver {nameserver}\n")
            state = {
                "name": name,
                "netns": f"bakery-{name}",
                "lowers": [str(p) for p in lowers],
                "hostname": host,
                "egress": egress,
                "created": time.time(),
            }
            (d / "sandbox.json").write_text(json.dumps(state, indent=1) + "\n")
        except OSError as exc:
            raise LocalCloudError(
                f"sandbox {name}: cannot write its state dir {d}: {exc.strerror or exc}; "
                f"remove it with `rm -rf {d}` and check the disk"
            ) from None

        box = cls(name, d, 0, 0)
        try:
            _run(["ip", "netns", "add", box.netns], f"sandbox {name}: creating its network namespace")
        except LocalCloudError:
            shutil.rmtree(d, ignore_errors=True)  # nothing ran; the netns may belong to someone else
            raise
        try:
            if before_boot is not None:
                before_boot(box.netns)
            box._launch(lowers, host, egress)
        except BaseException:
            box.stop()  # keeps d/logs for the error message's log path
            raise
        return box

    def _launch(self, lowers: list[Path], host: str, egress: bool) -> None:
        d = self.dir
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        slirp: subprocess.Popen[bytes] | None = None
        ready_r = -1
        if egress:
            slirp, ready_r = start_slirp(str(self.netns_path), d / "logs" / "slirp4netns.log")
            _CHILDREN[slirp.pid] = slirp
            self._own.append(slirp.pid)
            self._write_pid("slirp", slirp.pid)
        cgroups = self._make_cgroups()
        # written at each boot, not kept from the first: a machine resumed after an upgrade of
        # bakery boots with the launcher this version calls
        (d / "init.sh").write_text(_INIT_SCRIPT.lstrip())
        cmd = [
            "nsenter", f"--net={self.netns_path}", "--",
            "unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", str(d / "init.sh"),
            str(d), ":".join(str(p) for p in lowers), host, self.name,
            *[str(c) for c in cgroups],
        ]  # fmt: skip
        with open(d / "logs" / "console.log", "ab") as log:
            # nsenter and unshare exec: this process becomes systemd-nspawn
            launcher = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env
            )
        _CHILDREN[launcher.pid] = launcher
        self._own.append(launcher.pid)
        self._write_pid("launcher", launcher.pid)
        try:
            self.pid, self._starttime = self._find_init(launcher)
            if slirp is not None and not wait_slirp(slirp, ready_r):
                log = self.dir / "logs" / "slirp4netns.log"
                raise LocalCloudError(f"sandbox {self.name}: slirp4netns egress did not come up: {self._tail(log)}")
        finally:
            if ready_r >= 0:
                os.close(ready_r)

    def _find_init(self, launcher: subprocess.Popen[bytes]) -> tuple[int, int]:
        """The instance's PID 1 is the launcher's (nspawn's) child that is PID 1 of its own pid
        namespace; it counts as started once it is the image's systemd (filesystems in place)."""
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        deadline = time.monotonic() + 10
        pid = 0
        while time.monotonic() < deadline:
            if not pid:
                try:
                    kids = children.read_text().split()
                except OSError:
                    kids = []
                pid = next((int(k) for k in kids if _ns_pid(int(k)) == 1), 0)
            if pid and _comm(pid) == "systemd":
                return pid, self._write_pid("init", pid)
            if launcher.poll() is not None:
                break
            time.sleep(0.002)
        log = self.dir / "logs" / "console.log"
        raise LocalCloudError(f"sandbox {self.name} failed to boot: {self._tail(log)} (log: {log})")

    # -- cgroups -------------------------------------------------------------------------------
    def _make_cgroups(self) -> list[Path]:
        """A cgroup of its own (``bakery-<name>`` under the caller's) in each hierarchy nspawn
        uses, so two instances' systemd never manage one tree; recorded for stop() to remove."""
        found = []
        for path in _cgroup_parents():
            cg = path / f"bakery-{self.name}"
            try:
                cg.mkdir(exist_ok=True)
            except OSError as exc:
                raise LocalCloudError(f"sandbox {self.name}: cannot create its cgroup {cg}: {exc.strerror or exc}") from None
            found.append(cg)
        (self.dir / "pids" / "cgroups").write_text("".join(f"{c}\n" for c in found))
        return found

    def _remove_cgroups(self) -> list[str]:
        """rmdir the instance's cgroups (deepest first); returns those still busy."""
        record = self.dir / "pids" / "cgroups"
        try:
            tops = [Path(line) for line in record.read_text().splitlines() if line.strip()]
        except OSError:
            return []
        busy = []
        for top in tops:
            if not top.name.startswith("bakery-") or not top.is_dir():
                continue
            dirs = sorted((Path(root) for root, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
            for cg in dirs:
                for _ in range(200):  # the kernel frees a cgroup a moment after its last process
                    try:
                        cg.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.005)
                else:
                    busy.append(str(cg))
        if not busy:
            record.unlink(missing_ok=True)
        return busy

    @classmethod
    def resume(cls, name: str, state_dir: Path, before_boot: Callable[[str], None] | None = None,
               egress: bool | None = None) -> Sandbox:
        """Boot a stopped sandbox again (StartInstances, a reboot): the same disk (upper dir), seed
        and hostname; cloud-init sees the same instance id and runs only its per-boot modules.
        ``before_boot`` as for ``start``; ``egress`` as for ``start`` (default: as it was started)."""
        box = cls.attach(name, state_dir)
        if box.is_running():
            return box
        state = json.loads((box.dir / "sandbox.json").read_text())
        lowers = [Path(p) for p in state["lowers"]]
        missing = [str(p) for p in lowers if not p.is_dir()]
        if missing:
            raise LocalCloudError(f"sandbox {name}: image layer directory missing: {missing[0]}")
        box.stop()  # leftovers of a machine that died without stop(): its netns, stray processes
        _run(["ip", "netns", "add", box.netns], f"sandbox {name}: creating its network namespace")
        try:
            if before_boot is not None:
                before_boot(box.netns)
            box._launch(lowers, state["hostname"], state["egress"] if egress is None else egress)
        except BaseException:
            box.stop()
            raise
        return box

    @classmethod
    def attach(cls, name: str, state_dir: Path) -> Sandbox:
        """Re-open a sandbox another process started, from its state dir."""
        d = Path(state_dir).resolve() / name
        if not (d / "sandbox.json").is_file():
            raise LocalCloudError(f"no sandbox {name} in {Path(state_dir)} (missing {d / 'sandbox.json'})")
        box = cls(name, d, 0, 0)
        box.pid, box._starttime = box._read_pid("init")
        return box

    def is_running(self) -> bool:
        return _alive(self.pid, self._starttime)

    def _inside(self, rel: str) -> Path:
        """A path in the running instance's own mount namespace (its /run is a tmpfs there)."""
        return Path(f"/proc/{self.pid}/root") / rel

    def boot_status(self) -> dict[str, int]:
        """This boot's steps so far, 0 for success: ``setup`` (the image's systemd is PID 1),
        cloud-init's stages as its units finish them (``init-local``, ``init``, ``config``,
        ``final``: 1 if the stage reported errors), ``sshd`` (listening), then ``system`` and
        ``done`` once cloud-init has finished and systemd's start-up is over: ``system`` 0 for
        ``running``, 1 otherwise (``degraded``: ``failed_units()`` names them); ``done`` 0 when
        both cloud-init and systemd are clean. Empty when the machine is not running."""
        if not self.is_running():
            return {}
        status = {"setup": 0}
        has_cloud_init = (self._inside("usr/bin/cloud-init")).exists() and not any(
            self._inside(p).exists() for p in ("run/cloud-init/disabled", "etc/cloud/cloud-init.disabled"))
        errors = 0
        if has_cloud_init:
            try:
                v1 = json.loads(self._inside("run/cloud-init/status.json").read_text()).get("v1", {})
            except (OSError, ValueError):
                v1 = {}
            for stage, name in _CLOUD_INIT_STAGES:
                record = v1.get(stage) or {}
                if record.get("finished"):
                    status[name] = 1 if record.get("errors") else 0
            try:
                result = json.loads(self._inside("run/cloud-init/result.json").read_text()).get("v1", {})
            except (OSError, ValueError):
                result = None
            if result is None:
                return self._with_sshd(status)
            errors = 1 if result.get("errors") else 0
        state = self.system_state()
        if state in ("initializing", "starting", ""):
            return self._with_sshd(status)
        status["system"] = 0 if state == "running" else 1
        status["done"] = max(errors, status["system"])
        return self._with_sshd(status, final=True)

    def _with_sshd(self, status: dict[str, int], final: bool = False) -> dict[str, int]:
        if self._inside("run/sshd.pid").exists():
            status["sshd"] = 0
        elif final and self._inside("usr/sbin/sshd").exists():
            status["sshd"] = 1
        return status

    def system_state(self) -> str:
        """``systemctl is-system-running`` inside ('' when it cannot be asked)."""
        try:
            return self.exec(["systemctl", "is-system-running"], timeout=10).stdout.strip()
        except LocalCloudError:
            return ""

    def failed_units(self) -> list[str]:
        """Units systemd inside reports as failed."""
        try:
            out = self.exec(["systemctl", "list-units", "--failed", "--plain", "--no-legend"], timeout=10).stdout
        except LocalCloudError:
            return []
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def boot_log(self) -> str:
        """For error messages: the machine's console (``console_output``: systemd's boot and
        cloud-init's output) and, while it runs, the status of its failed units."""
        parts = []
        console = self.console_output()
        if console.strip():
            parts.append(f"--- console ({self.dir / 'logs' / 'console.log'}) ---\n{console}")
        if self.is_running():
            failed = self.failed_units()
            if failed:
                try:
                    detail = self.exec(["systemctl", "status", "--no-pager", "--lines=10", *failed], timeout=10).stdout
                except LocalCloudError:  # it stopped meanwhile
                    detail = ""
                parts.append(f"--- failed units: {' '.join(failed)} ---\n{detail}")
        return "\n".join(parts)

    def console_output(self) -> str:
        """What the machine wrote to its console, every boot, as EC2's console output has it:
        systemd's start-up and shutdown, cloud-init's output (its units write to the console too)
        with the host key fingerprints; colour codes removed."""
        try:
            return _ANSI_RE.sub("", (self.dir / "logs" / "console.log").read_text(errors="replace"))
        except OSError:
            return ""

    @staticmethod
    def _tail(path: Path, lines: int = 3) -> str:
        try:
            text = _ANSI_RE.sub("", path.read_text(errors="replace")).strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    # -- access --------------------------------------------------------------------------------
    def connect(self, port: int, timeout: float = 5.0) -> socket.socket:
        """TCP socket connected to 127.0.0.1:``port`` inside the sandbox netns (for paramiko
        ``sock=`` or health checks). Connection failures raise OSError so callers can retry."""
        if not self.netns_path.exists():
            raise LocalCloudError(f"sandbox {self.name} is not running (no network namespace {self.netns_path})")

        return tcp_connect(self.netns, "127.0.0.1", port, timeout)

    def exec(self, argv: list[str], timeout: float, *, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as root inside the sandbox (its PID 1's namespaces and root, clean env)."""
        if not self.is_running():
            raise LocalCloudError(f"sandbox {self.name} is not running; start it before running {argv[:1]}")
        cmd = [
            "nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--",
            "/usr/bin/env", "-i", *SANDBOX_ENV, *argv,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # one process group: a timeout kills the command inside too
            text=True,
            errors="replace",
        )
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise LocalCloudError(
                f"command {' '.join(argv)!r} timed out after {timeout:g} s in sandbox {self.name}"
            ) from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    # -- teardown ------------------------------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the machine down cleanly (systemd powers off: units stop, ExecStop runs, disks are
        synced), waiting at most ``timeout`` s; then kill what is left (PID 1 takes its whole pid
        namespace and mounts with it), slirp4netns, its cgroups and the netns. Idempotent; keeps
        the upper dir for ``capture_layer``."""
        init_pid, init_start = self._read_pid("init")
        if self.pid and not init_pid:
            init_pid, init_start = self.pid, self._starttime
        problems: list[str] = []
        if _alive(init_pid, init_start) and _comm(init_pid) == "systemd":
            _kill(init_pid, init_start, signal.SIGRTMIN + 4, wait=timeout)  # systemd: poweroff
        if not _kill(init_pid, init_start, signal.SIGKILL, wait=10):
            problems.append(f"PID 1 ({init_pid}) did not exit")
        for role in ("launcher", "unshare"):  # nspawn exits by itself once its machine is down
            lpid, lstart = self._read_pid(role)
            if (not _kill(lpid, lstart, 0, wait=2) and not _kill(lpid, lstart, signal.SIGTERM, wait=2)
                    and not _kill(lpid, lstart, signal.SIGKILL, wait=3)):
                problems.append(f"launcher {lpid} did not exit")
        spid, sstart = self._read_pid("slirp")
        if not _kill(spid, sstart, signal.SIGTERM, wait=2) and not _kill(spid, sstart, signal.SIGKILL, wait=3):
            problems.append(f"slirp4netns {spid} did not exit")
        if problems:
            raise LocalCloudError(f"sandbox {self.name} did not stop: {'; '.join(problems)}")
        busy = self._remove_cgroups()
        if busy:
            raise LocalCloudError(f"sandbox {self.name} did not stop: its cgroup {busy[0]} still has processes")
        for role in ("init", "launcher", "unshare", "slirp"):
            self._pidfile(role).unlink(missing_ok=True)
        for pid in self._own:  # also when another process already stopped it: no zombies
            _reap(pid)
        self._own = [pid for pid in self._own if pid in _CHILDREN]
        self.pid, self._starttime = 0, 0
        if self.netns_path.exists():
            try:
                _run(["ip", "netns", "del", self.netns], f"sandbox {self.name}: deleting its network namespace")
            except LocalCloudError:
                if self.netns_path.exists():  # else another process stopping it at the same time won
                    raise
        for mountpoint in self._host_mounts():  # normally none: sandbox mounts live in its own ns
            _run(["umount", "-l", mountpoint], f"sandbox {self.name}: unmounting {mountpoint}")

    def _host_mounts(self) -> list[str]:
        prefix = str(self.dir) + "/"
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mountpoint = line.split()[4].encode().decode("unicode_escape")
            if mountpoint.startswith(prefix) or mountpoint == str(self.dir):
                found.append(mountpoint)
        return sorted(found, key=len, reverse=True)

    def capture_layer(self, dest: Path, *, running_ok: bool = False) -> Path:
        """Write the upper dir as tar.zst to ``dest`` (atomically), normally after ``stop()``;
        ``running_ok`` takes it as it is at this moment (EC2's CreateImage with NoReboot).

        Keeps whiteouts and ``trusted.overlay.*``/``security.capability`` xattrs; leaves out the
        launcher's NoCloud seed and the machine's own identity (machine id, journal, random seed:
        ``_CAPTURE_EXCLUDES``). Deprovisioning before capture is the caller's job.
        """
        dest = Path(dest)
        if self.is_running() and not running_ok:
            raise LocalCloudError(f"sandbox {self.name} is still running; stop it before capturing {dest}")
        if not self.upper.is_dir():
            raise LocalCloudError(f"sandbox {self.name} has no upper dir to capture: {self.upper}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        tar_cmd = [
            "tar", *TAR_XATTR_ARGS, "--anchored", *[f"--exclude={p}" for p in _CAPTURE_EXCLUDES],
            "-C", str(self.upper), "-cf", "-", ".",
        ]  # fmt: skip
        zstd_cmd = ["zstd", "-q", "-T0", "-3", "-f", "-o", str(tmp)]
        try:
            tar = subprocess.Popen(tar_cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert tar.stdout is not None
            zstd = subprocess.run(zstd_cmd, stdin=tar.stdout, capture_output=True, text=True)
            tar.stdout.close()
            tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
            tar.wait()
            if tar.returncode != 0 or zstd.returncode != 0:
                detail = (tar_err or zstd.stderr).strip().splitlines()[:1]
                raise LocalCloudError(
                    f"capturing sandbox {self.name} to {dest} failed: {' '.join(detail) or 'unknown error'}; "
                    f"command: {' '.join(tar_cmd)} | {' '.join(zstd_cmd)}"
                )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def destroy(self) -> None:
        """stop() and delete the sandbox's state dir (upper dir included)."""
        self.stop()
        try:
            shutil.rmtree(self.dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalCloudError(f"sandbox {self.name}: cannot delete {self.dir}: {exc}; remove it with `rm -rf {self.dir}`") from None


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[:1]
        raise LocalCloudError(f"{what} failed: {' '.join(detail)} (command: {' '.join(cmd)})")
