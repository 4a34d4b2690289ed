"""The VPC's link-local services, as EC2 offers them to every instance, served by the endpoint process
in each VPC's namespace (the router's side of the fabric, never inside an instance):

    169.254.169.254   the instance metadata service           imds.py
    169.254.169.253   the VPC's DNS resolver                  resolver.py
    169.254.169.250   the AWS APIs (interface VPC endpoints)  privatelink.py

Every ENI routes these addresses through its subnet's router (vpcnet.py), so they answer before an
instance's init runs and from every subnet. This module keeps one listener of each service per VPC
namespace and makes it again when the namespace is made again under the same name (a VPC torn down
and rebuilt while the endpoint runs): a socket keeps the namespace it was made in.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Protocol

from bakery.local.errors import LocalCloudError
from bakery.local.netns import NETNS_DIR, add_address

log = logging.getLogger("bakery.local")

METADATA_IP = "169.254.169.254"
RESOLVER_IP = "169.254.169.253"
API_IP = "169.254.169.250"
SERVICE_IPS = (METADATA_IP, RESOLVER_IP, API_IP)


class Listener(Protocol):
    def alive(self) -> bool: ...
    def close(self) -> None: ...


class PerVpc:
    """One listener of a service in every VPC namespace. ``open(vpc_id, netns)`` makes one (its
    address is already on the namespace's loopback) and returns it running."""

    def __init__(self, what: str, address: str, open: Callable[[str, str], Listener]):  # noqa: A002
        self.what = what
        self.address = address
        self._open = open
        self._listeners: dict[str, tuple[str, int | None, Listener]] = {}  # vpc -> (netns, its inode, listener)
        self._lock = threading.Lock()

    def serve(self, vpc_id: str, netns: str) -> None:
        """Answer in the VPC's namespace (again if it was made anew or the listener died)."""
        with self._lock:
            current = self._listeners.get(vpc_id)
            inode = _inode(netns)
            if current is not None and current[:2] == (netns, inode) and inode is not None and current[2].alive():
                return
            if current is not None:
                current[2].close()
                del self._listeners[vpc_id]
            add_address(netns, f"{self.address}/32")
            self._listeners[vpc_id] = (netns, inode, self._open(vpc_id, netns))

    def sync(self, vpcs: dict[str, str]) -> None:
        """Serve exactly these VPCs (vpc id -> namespace); a failure is logged, the others go on."""
        for vpc_id in self.serving() - set(vpcs):
            self.close(vpc_id)
        for vpc_id, netns in vpcs.items():
            try:
                self.serve(vpc_id, netns)
            except (LocalCloudError, OSError) as exc:
                log.error("the %s in %s: %s", self.what, netns, getattr(exc, "message", exc))

    def close(self, vpc_id: str) -> None:
        with self._lock:
            entry = self._listeners.pop(vpc_id, None)
        if entry is not None:
            entry[2].close()

    def serving(self) -> set[str]:
        with self._lock:
            return set(self._listeners)

    def close_all(self) -> None:
        for vpc_id in list(self.serving()):
            self.close(vpc_id)


def tcp_listener(address: str, port: int) -> socket.socket:
    """A listening TCP socket (call it inside the namespace: netns.run_in)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(128)
    return sock


def _inode(netns: str) -> int | None:
    """A namespace deleted and made again under the same name has another inode."""
    try:
        return os.stat(NETNS_DIR / netns).st_ino
    except OSError:
        return None
