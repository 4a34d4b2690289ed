"""Doing one thing inside a network namespace from the host, without moving the calling thread.

setns(CLONE_NEWNET) is per thread: a short-lived thread enters the namespace, makes its socket
(connected or listening) and exits; the socket stays in that namespace. The caller stays on the
host. This is how bakery reaches an instance's port and how the endpoint serves an instance's
metadata at 169.254.169.254 from its own process.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from pathlib import Path
from typing import Callable, TypeVar

from bakery.local.errors import LocalCloudError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
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


def add_address(netns: str, cidr: str, dev: str = "lo") -> None:
    """Give an interface of the namespace an address (already there is fine)."""
    out = subprocess.run(["ip", "-n", netns, "addr", "add", cidr, "dev", dev], capture_output=True, text=True)
    if out.returncode != 0 and "File exists" not in out.stderr:
        raise LocalCloudError(f"adding {cidr} to {dev} in {netns}: {out.stderr.strip()}")
