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
    subnet_id: str | None = None  # of the interface these addresses are on

    @classmethod
    def of(cls, instance: dict) -> "Machine":
        """From a DescribeInstances / RunInstances record."""
        return cls(instance["InstanceId"], instance.get("PrivateIpAddress"), instance.get("PublicIpAddress"),
                   instance.get("SubnetId"))

    @classmethod
    def at_interface(cls, instance: dict, device_index: int) -> "Machine | None":
        """The instance as reached at its interface `device_index` (its addresses, its subnet); None
        when no interface is attached there (a hot standby before it takes over)."""
        for eni in instance.get("NetworkInterfaces", []):
            if eni.get("Attachment", {}).get("DeviceIndex") == device_index:
                return cls(instance["InstanceId"], eni.get("PrivateIpAddress"),
                           eni.get("Association", {}).get("PublicIp"), eni.get("SubnetId"))
        return None


@dataclass(frozen=True)
class Bastion:
    host: str
    port: int
    user: str
    key_file: str | None


@dataclass(frozen=True)
class Login:
    """How to log in to an instance over SSH: its user, the private key, its pinned host keys."""

    user: str
    key_file: str
    host_keys: tuple[str, ...]  # "ssh-ed25519 AAAA..." lines, from the instance's console
    port: int = 22
    bastion: Bastion | None = None


@dataclass(frozen=True)
class Vantage:
    """Where a connection starts instead of where bakery runs: another instance, so the connection
    has that instance's place in the network (its subnet, its security groups, its ENI's address).
    `login` is asked only by a dial that has to log in there to start from it (where addresses
    are routed, an SSH hop); the local cloud opens the socket in the instance's namespace."""

    machine: Machine
    login: Callable[[], Login] | None = None


#: a Route's vantage for a check made from outside the instance at no declared place: on a cloud
#: with routed addresses, where bakery runs; on the local cloud, the internet for a public address
#: and a host on the target's own subnet, in no security group, for a private one
OUTSIDE = "outside"


@dataclass(frozen=True)
class Route:
    """Which of the instance's addresses to use, where routed addresses exist, and how to get there."""

    address: Literal["public_ip", "private_ip", "host"] = "private_ip"
    host: str | None = None            # address "host": this host (a port forward) instead of the instance's
    proxy_command: str | None = None   # ssh -W style, %h %p %r expanded
    bastion: Bastion | None = None
    user: str = ""                     # %r in a proxy command
    builder: bool = False              # a bake's builder or smoke instance: the settings' tunnel reaches it
    #: None: the way bakery reaches its own machines (its SSH, which on the local cloud starts
    #: inside the instance); OUTSIDE or a Vantage: across the network, through its rules
    vantage: Vantage | Literal["outside"] | None = None


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
    #: whether starting a connection at a Vantage means logging in there (its `login` is needed)
    logs_in_at_vantages: bool

    def __call__(self, machine: Machine, port: int, route: Route = Route(), *, ssh: bool = False) -> Opener:
        """How to reach `port` of `machine` (`ssh`: the port is the instance's SSH port)."""

    def shell_prefix(self, machine: Machine) -> tuple[str, str]:
        """(command prefix, host) that let a person reach the instance from this machine's shell."""


class TcpDial:
    """Routed addresses: connect to the instance's address, or through the route's hop.

    `tunnel_host` and `tunnel_ssh_port` (the settings `ssh_host`, `ssh_port`) reach a bake's
    builders and smoke instances at one address instead of their own: a tunnel, or the tests'
    stand-in sshd. A launched fleet is always reached at its own addresses."""

    logs_in_at_vantages = True

    def __init__(self, tunnel_host: str | None = None, tunnel_ssh_port: int | None = None):
        self.tunnel_host = tunnel_host
        self.tunnel_ssh_port = tunnel_ssh_port

    def __call__(self, machine: Machine, port: int, route: Route = Route(), *, ssh: bool = False) -> Opener:
        tunnel = route.builder and self.tunnel_host
        host = self.tunnel_host if tunnel else address_of(machine, route)
        if ssh and route.builder and self.tunnel_ssh_port:
            port = self.tunnel_ssh_port
        where = f"{host}:{port}"
        if isinstance(route.vantage, Vantage):
            hop = _SshHop.through(route.vantage)
            return Opener(f"{where} from {route.vantage.machine.instance_id}", host,
                          lambda timeout: hop.channel(host, port, timeout), hop.close)
        if route.proxy_command:
            return Opener(where, host, lambda timeout: _proxy(route, host, port))
        if route.bastion:
            hop = _SshHop.bastion(route.bastion)
            return Opener(where, host, lambda timeout: hop.channel(host, port, timeout), hop.close)
        return Opener(where, host, lambda timeout: _tcp(host, port, timeout))

    def shell_prefix(self, machine: Machine) -> tuple[str, str]:
        return "", machine.private_ip or machine.public_ip or machine.instance_id


def address_of(machine: Machine, route: Route) -> str:
    """The instance's address the route names."""
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


class _SshHop:
    """direct-tcpip channels through one long-lived SSH connection (to a bastion, or to a vantage
    instance, itself possibly behind a bastion)."""

    def __init__(self, host: str, port: int, user: str, key_file: str | None, host_keys: tuple[str, ...] | None,
                 via: "_SshHop | None" = None):
        self.host, self.port, self.user, self.key_file = host, port, user, key_file
        self.host_keys = host_keys  # None: the system's known_hosts (a bastion is long-lived)
        self.via = via
        self._client = None

    @classmethod
    def bastion(cls, b: Bastion) -> "_SshHop":
        return cls(b.host, b.port, b.user, b.key_file, None)

    @classmethod
    def through(cls, vantage: Vantage) -> "_SshHop":
        machine = vantage.machine
        if vantage.login is None:
            raise RemoteError(f"{machine.instance_id}: no way to log in to it to start a connection from it")
        login = vantage.login()
        host = machine.private_ip or machine.public_ip
        if not host:
            raise RemoteError(f"{machine.instance_id} has no address to reach it at")
        via = cls.bastion(login.bastion) if login.bastion else None
        return cls(host, login.port, login.user, login.key_file, login.host_keys, via)

    def channel(self, host: str, port: int, timeout: float):
        """A channel to host:port; OSError (so a check retries) while the hop or the port is not there."""
        import paramiko

        try:
            transport = self._connected(timeout)
            return transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
        except paramiko.ChannelException as exc:  # the hop is fine, the port did not answer it
            raise ConnectionRefusedError(f"{host}:{port} from {self.host}: {exc.text}") from None
        except (paramiko.SSHException, EOFError) as exc:
            self.close()  # the next attempt logs in again (the hop may have been booting or rebooted)
            raise ConnectionError(f"ssh {self.user}@{self.host}:{self.port}: {exc}") from None

    def _connected(self, timeout: float):
        import paramiko

        if self._client is None:
            client = paramiko.SSHClient()
            if self.host_keys is None:
                client.load_system_host_keys()
            else:
                name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
                for line in self.host_keys:
                    try:
                        entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{name} {line}")
                    except (paramiko.hostkeys.InvalidHostKey, ValueError):
                        continue  # a garbled console line: the others still pin the host
                    if entry is not None:
                        client.get_host_keys().add(name, entry.key.get_name(), entry.key)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            sock = None
            try:
                sock = self.via.channel(self.host, self.port, timeout) if self.via else None
                client.connect(self.host, port=self.port, username=self.user, key_filename=self.key_file, sock=sock,
                               timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                               look_for_keys=self.key_file is None, allow_agent=self.key_file is None)
            except BaseException:  # a failed login must not leave its transport thread behind
                client.close()
                if sock is not None:
                    sock.close()
                raise
            self._client = client
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            self.close()
            raise ConnectionError(f"ssh {self.user}@{self.host}:{self.port}: the connection closed")
        return transport

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.via is not None:
            self.via.close()
