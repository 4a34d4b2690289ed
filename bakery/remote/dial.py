"""How bakery reaches a TCP port of an instance: the one seam that knows where machines live.

A `Dial` is chosen once, from the settings, by `bakery.cloud.connect.open_cloud`: on AWS (or any
endpoint whose instances have routed addresses) a TCP connection to the instance's address,
directly or through the hop a recipe names (a ProxyCommand, a bastion); on the local cloud a
socket opened inside the instance's network namespace. SSH, health checks and the smoke test are
handed a Dial and never ask which cloud they are on; a third way to reach machines (a Session
Manager tunnel, a server-side local cloud) is a third Dial, and nothing else changes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

from bakery.errors import RemoteError


@dataclass(frozen=True)
class Machine:
    """What a dial needs to know about an instance."""

    instance_id: str
    private_ip: str | None = None
    public_ip: str | None = None

    @classmethod
    def of(cls, instance: dict) -> "Machine":
        """From a DescribeInstances / RunInstances record."""
        return cls(instance["InstanceId"], instance.get("PrivateIpAddress"), instance.get("PublicIpAddress"))


@dataclass(frozen=True)
class Bastion:
    host: str
    port: int
    user: str
    key_file: str | None


@dataclass(frozen=True)
class Route:
    """Which of the instance's addresses to use, where routed addresses exist, and how to get there."""

    address: Literal["public_ip", "private_ip", "host"] = "private_ip"
    host: str | None = None            # address "host": this host (a port forward) instead of the instance's
    proxy_command: str | None = None   # ssh -W style, %h %p %r expanded
    bastion: Bastion | None = None
    user: str = ""                     # %r in a proxy command
    builder: bool = False              # a bake's builder or smoke instance: the settings' tunnel reaches it


class Opener:
    """Opens connections to one port of one instance. `where` names it in messages ('' when the
    instance has no address of its own to name); `host` is the name a protocol on top should use
    (an HTTP Host header)."""

    def __init__(self, where: str, host: str, open: Callable[[float], Any], close: Callable[[], None] = lambda: None):
        self.where = where
        self.host = host
        self._open = open
        self._close = close

    def open(self, timeout: float) -> Any:
        """A socket (or socket-like channel) connected to the port; OSError when nothing answers yet."""
        return self._open(timeout)

    def close(self) -> None:
        self._close()


class Dial(Protocol):
    def __call__(self, machine: Machine, port: int, route: Route = Route(), *, ssh: bool = False) -> Opener:
        """How to reach `port` of `machine` (`ssh`: the port is the instance's SSH port)."""

    def shell_prefix(self, machine: Machine) -> tuple[str, str]:
        """(command prefix, host) that let a person reach the instance from this machine's shell."""


class TcpDial:
    """Routed addresses: connect to the instance's address, or through the route's hop.

    `tunnel_host` and `tunnel_ssh_port` (the settings `ssh_host`, `ssh_port`) reach a bake's
    builders and smoke instances at one address instead of their own: a tunnel, or the tests'
    stand-in sshd. A launched fleet is always reached at its own addresses."""

    def __init__(self, tunnel_host: str | None = None, tunnel_ssh_port: int | None = None):
        self.tunnel_host = tunnel_host
        self.tunnel_ssh_port = tunnel_ssh_port

    def __call__(self, machine: Machine, port: int, route: Route = Route(), *, ssh: bool = False) -> Opener:
        tunnel = route.builder and self.tunnel_host
        host = self.tunnel_host if tunnel else self._address(machine, route)
        if ssh and route.builder and self.tunnel_ssh_port:
            port = self.tunnel_ssh_port
        where = f"{host}:{port}"
        if route.proxy_command:
            return Opener(where, host, lambda timeout: _proxy(route, host, port))
        if route.bastion:
            hop = _BastionHop(route.bastion, host, port)
            return Opener(where, host, hop.open, hop.close)
        return Opener(where, host, lambda timeout: _tcp(host, port, timeout))

    def shell_prefix(self, machine: Machine) -> tuple[str, str]:
        return "", machine.private_ip or machine.public_ip or machine.instance_id

    @staticmethod
    def _address(machine: Machine, route: Route) -> str:
        if route.address == "host":
            return route.host or ""
        address = machine.public_ip if route.address == "public_ip" else machine.private_ip
        if not address:
            hint = " (use interface: private_ip, or a subnet that maps public IPs)" if route.builder else ""
            raise RemoteError(f"{machine.instance_id} has no {route.address.replace('_', ' ')} to reach{hint}")
        return address


def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _proxy(route: Route, host: str, port: int):
    import paramiko

    cmd = route.proxy_command.replace("%h", host).replace("%p", str(port)).replace("%r", route.user)
    return paramiko.ProxyCommand(cmd)


class _BastionHop:
    """A direct-tcpip channel through one long-lived SSH connection to the bastion."""

    def __init__(self, bastion: Bastion, host: str, port: int):
        self.bastion, self.host, self.port = bastion, host, port
        self._client = None

    def open(self, timeout: float):
        import paramiko

        b = self.bastion
        if self._client is None:
            client = paramiko.SSHClient()
            client.load_system_host_keys()  # a bastion is long-lived: it must be in known_hosts
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(b.host, port=b.port, username=b.user, key_filename=b.key_file, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout)
            self._client = client
        return self._client.get_transport().open_channel("direct-tcpip", (self.host, self.port), ("127.0.0.1", 0),
                                                        timeout=timeout)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
