"""Doing one thing inside a network namespace from the host, without moving the calling thread.

setns(CLONE_NEWNET) is per thread: a short-lived thread enters the namespace, makes its socket
(connected or listening) and exits; the socket stays in that namespace. The caller stays on the
host. This is how bakery reaches an instance's port and how the endpoint serves an instance's
metadata at 169.254.169.254 from its own process.

The rest runs a tool there (``ip -n``, or nsenter for what follows the calling process's netns:
sysctl, nft), with errors as one line naming the failing command; the VPC fabric (vpcnet.py) and
the internet namespace (internet.py) are made of these.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from bakery.local.errors import LocalCloudError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
#: what `ip` says when the interface or namespace it was asked about is gone (fine when removing)
GONE = ("Cannot find device", "Cannot open network namespace", "No such file or directory")
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def run_in(netns: str, fn: Callable[[], T]) -> T:
    """fn() on a thread inside the named network namespace; its result (a socket keeps the netns)."""
    try:
        fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LocalCloudError(f"network namespace {netns} does not exist") from None
    result: dict[str, object] = {}

    def inside() -> None:
        try:
            if hasattr(os, "setns"):  # Python >= 3.12
                os.setns(fd, CLONE_NEWNET)
            elif _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    try:
        thread = threading.Thread(target=inside, name=f"netns-{netns}", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]


def tcp_connect(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP socket made inside the namespace and connected from there to host:port (so it starts
    from that namespace's addresses and routes); OSError when nothing answers."""

    def dial() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in(netns, dial)


def add_address(netns: str, cidr: str, dev: str = "lo") -> None:
    """Give an interface of the namespace an address (already there is fine)."""
    out = subprocess.run(["ip", "-n", netns, "addr", "add", cidr, "dev", dev], capture_output=True, text=True)
    if out.returncode != 0 and "File exists" not in out.stderr:
        raise LocalCloudError(f"adding {cidr} to {dev} in {netns}: {out.stderr.strip()}")


def ip_argv(ns: str) -> list[str]:
    """``ip`` inside a netns given by name (under /run/netns) or by path (e.g. /proc/<pid>/ns/net)."""
    return ["nsenter", f"--net={ns}", "ip"] if "/" in ns else ["ip", "-n", ns]


def run(argv: list[str], what: str, *, input: str | None = None, ok: tuple[str, ...] = ()) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if proc.returncode == 0:
        return proc.stdout
    err = proc.stderr.strip()
    if ok and any(s in err for s in ok):
        return ""
    failed = " ".join(argv)
    m = re.search(r"Command failed -:(\d+)", err)
    if m and input is not None:  # `ip -batch -` names the failing line
        failed = " ".join(argv[:-2]) + " " + input.splitlines()[int(m.group(1)) - 1]
    raise LocalCloudError(f"{what} failed: {(err.splitlines() or ['?'])[0]} (command: {failed})")


def batch(ns: str, lines: list[str], what: str) -> None:
    """Several ``ip`` commands in one process: an ENI move is a handful of them, each a fork."""
    if lines:
        run([*ip_argv(ns), "-batch", "-"], what, input="\n".join(lines) + "\n")


def path(ns: str) -> str:
    return ns if "/" in ns else str(NETNS_DIR / ns)


def sysctl(ns: str, settings: dict[str, object], what: str) -> None:
    # nsenter, as /proc/sys/net shows the netns of the process that writes it
    run(["nsenter", f"--net={path(ns)}", "sysctl", "-qw", *[f"{k}={v}" for k, v in settings.items()]], what)


def links(ns: str) -> set[str]:
    out = run([*ip_argv(ns), "-j", "link", "show"], f"listing interfaces in {ns}", ok=GONE)
    return {link["ifname"] for link in json.loads(out or "[]")}


def exists(ns: str) -> bool:
    return Path(path(ns)).exists()


def inode(ns: str) -> int | None:
    """The namespace's identity (its nsfs inode): a namespace made anew under the same name has another."""
    try:
        return os.stat(path(ns)).st_ino
    except OSError:
        return None


def load_nft(ns: str, ruleset: str, what: str) -> None:
    """Load an nftables ruleset (text for ``nft -f``, one transaction) into the namespace."""
    nft = shutil.which("nft")
    if nft is None:
        raise LocalCloudError(f"{what} failed: nft is missing (Debian package nftables, which "
                              f"scripts/install.sh installs)")
    run(["nsenter", f"--net={path(ns)}", nft, "-f", "-"], what, input=ruleset)


def start_slirp(ns: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """slirp4netns attached to the namespace as ``tap0`` (user-mode NAT: what leaves through it is
    sent from sockets of the host's own, with no address, route or firewall rule added to the host;
    the host's loopback is out of its reach), detached from the caller; returns it and the read end
    of its ready pipe (for ``wait_slirp``; the caller closes it)."""
    ready_r, ready_w = os.pipe()
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", f"--ready-fd={ready_w}",
                 "--netns-type=path", path(ns), "tap0"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(ready_w,), start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(ready_w)
    return proc, ready_r


def wait_slirp(proc: subprocess.Popen[bytes], ready_r: int, timeout: float = 5.0) -> bool:
    """Whether slirp4netns said it is ready within `timeout` (False once it exited)."""
    deadline = time.monotonic() + timeout
    os.set_blocking(ready_r, False)
    while time.monotonic() < deadline:
        try:
            if os.read(ready_r, 1):
                return True
        except BlockingIOError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False

