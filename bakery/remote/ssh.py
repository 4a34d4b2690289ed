"""SSH connector (paramiko): one connection per bake, one channel per step.

Why not Packer's way: Packer opens several SSH sessions per shell step (upload the
script, chmod, run, rm) and never checks the host key. Here each step is a single
exec whose stdin carries the script, uploads are one streamed `cat`/`tar`, and the
server must present the host key we generated for it, or we refuse.
"""

from __future__ import annotations

import logging
import shlex
import socket
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import paramiko

from bakery.cloud.waits import Backoff, wait_for
from bakery.errors import RemoteError
from bakery.remote.connector import OutputSink, RunResult
from bakery.remote.keys import fingerprint

# paramiko logs every failed handshake attempt at ERROR while we are still retrying; keep
# that out of the user's terminal (it reaches the root logger's handlers under --debug).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CHUNK = 256 * 1024
WINDOW = 16 * 1024 * 1024
SocketFactory = Callable[[float], socket.socket]


class ConnectionLost(RemoteError):
    """The SSH connection itself failed (as opposed to a command or upload that failed on it)."""


class HostKeyMismatch(RemoteError):
    """The server is not the machine we launched: never retried."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    login_key: "paramiko.PKey"
    host_key: str  # the only acceptable server key, "ssh-ed25519 AAAA..."
    label: str     # for messages: "builder i-0abc (127.0.0.1:2222)"
    sock_factory: SocketFactory | None = None
    proxy_command: str | None = None
    bastion: "Bastion | None" = None


@dataclass(frozen=True)
class Bastion:
    host: str
    port: int
    user: str
    key_file: str | None


class SSHConnector:
    def __init__(self, target: Target):
        self.target = target
        self.transport: paramiko.Transport | None = None
        self._bastion: paramiko.SSHClient | None = None
        self.attempts = 0

    # ---- connect ------------------------------------------------------------------------

    def connect(self, timeout: float) -> None:
        t = self.target
        last_error = ["no attempt yet"]

        def attempt():
            self.attempts += 1
            try:
                self.transport = self._handshake()
                return True
            except HostKeyMismatch:
                raise
            except (OSError, EOFError, paramiko.SSHException) as exc:
                last_error[0] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._drop()
                return None

        wait_for(attempt, what=f"SSH on {t.label}", timeout=timeout,
                 backoff=Backoff(initial=0.05, factor=1.6, max_interval=2.0), hint=lambda: last_error[0])

    def _socket(self, timeout: float):
        t = self.target
        if t.sock_factory:
            return t.sock_factory(timeout)
        if t.proxy_command:
            cmd = t.proxy_command.replace("%h", t.host).replace("%p", str(t.port)).replace("%r", t.user)
            return paramiko.ProxyCommand(cmd)
        if t.bastion:
            return self._bastion_channel(timeout)
        sock = socket.create_connection((t.host, t.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _bastion_channel(self, timeout: float):
        b, t = self.target.bastion, self.target
        if self._bastion is None:
            client = paramiko.SSHClient()
            client.load_system_host_keys()  # a bastion is long-lived: it must be in known_hosts
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(b.host, port=b.port, username=b.user, key_filename=b.key_file, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout)
            self._bastion = client
        return self._bastion.get_transport().open_channel("direct-tcpip", (t.host, t.port), ("127.0.0.1", 0),
                                                         timeout=timeout)

    def _handshake(self) -> paramiko.Transport:
        t = self.target
        sock = self._socket(10.0)
        transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=32768)
        try:
            transport.banner_timeout = 10
            transport.handshake_timeout = 10
            # Ask only for the key type we pinned, so the server cannot offer another one.
            transport.get_security_options().key_types = [t.host_key.split()[0]]
            transport.start_client(timeout=10)
            presented = transport.get_remote_server_key()
            got = f"{presented.get_name()} {presented.get_base64()}"
            if got.split()[:2] != t.host_key.split()[:2]:
                raise HostKeyMismatch(
                    f"{t.label}: SSH host key mismatch: expected {fingerprint(t.host_key)}, "
                    f"server presented {fingerprint(got)}; refusing to connect (possible man in the middle)")
            transport.auth_publickey(t.user, t.login_key)
            if not transport.is_authenticated():
                raise paramiko.AuthenticationException("public key not accepted yet")
            transport.set_keepalive(30)
            return transport
        except BaseException:
            transport.close()
            raise

    # ---- run ----------------------------------------------------------------------------

    def _exec(self, command: str) -> paramiko.Channel:
        if self.transport is None or not self.transport.is_active():
            raise ConnectionLost(f"{self.target.label}: SSH connection lost")
        try:
            chan = self.transport.open_session(timeout=30)
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            return chan
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectionLost(f"{self.target.label}: SSH connection lost ({exc or type(exc).__name__})") from exc

    def run(self, script: str, *, env: Mapping[str, str], timeout: float, sudo: bool,
            on_output: OutputSink) -> RunResult:
        """One exec per step: stdin carries the script into a private temp file that runs
        with stdin from /dev/null (so `apt-get` cannot swallow the script), under `timeout`."""
        if not script.startswith("#!"):
            script = "#!/bin/sh -e\n" + script
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        prefix = self._sudo(sudo)
        secs = max(1, int(round(timeout)))
        command = (
            'umask 077; f=$(mktemp /tmp/bakery-step.XXXXXXXX) || exit 125; cat > "$f" && chmod 700 "$f" || exit 125; '
            f'{prefix}env {envs} timeout -k 10s {secs}s "$f" </dev/null; rc=$?; rm -f "$f"; exit $rc'
        )
        start = time.monotonic()
        chan = self._exec(command)
        try:
            chan.sendall(script.encode())
            chan.shutdown_write()
            status, late = self._drain(chan, on_output, deadline=start + timeout + 15)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionLost(f"{self.target.label}: SSH connection lost while running a step ({exc or type(exc).__name__})") from exc
        finally:
            chan.close()
        timed_out = late or status == 124 or (status == 137 and time.monotonic() - start >= timeout)
        return RunResult(exit_status=status, timed_out=timed_out, seconds=time.monotonic() - start)

    def _drain(self, chan: paramiko.Channel, on_output: OutputSink, deadline: float) -> tuple[int, bool]:
        """Stream output line by line; a local deadline backs up the remote `timeout`."""
        chan.settimeout(0.5)
        pending = b""
        while True:
            try:
                data = chan.recv(65536)
            except socket.timeout:
                if time.monotonic() > deadline:
                    return -1, True
                if not self.transport.is_active():
                    raise ConnectionLost(f"{self.target.label}: SSH connection lost while running a step")
                continue
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_output(line.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            on_output(pending.decode("utf-8", "replace"))
        while not chan.exit_status_ready():
            if time.monotonic() > deadline:
                return -1, True
            if not self.transport.is_active():
                raise ConnectionLost(f"{self.target.label}: SSH connection lost while running a step")
            time.sleep(0.01)
        return chan.recv_exit_status(), False

    def _sudo(self, sudo: bool) -> str:
        return "sudo -n " if sudo and self.target.user != "root" else ""

    # ---- put ----------------------------------------------------------------------------

    def put(self, local: Path, dest: str, *, mode: str | None, owner: str | None, sudo: bool) -> None:
        q = shlex.quote(dest)
        if local.is_dir():
            fix = ""
            if owner:
                fix += f" && chown -R {shlex.quote(owner)} {q}"
            if mode:
                fix += f" && find {q} -type f -exec chmod {mode} {{}} +"
            inner = f"mkdir -p {q} && tar -x --no-same-owner -C {q}{fix}"
            self._stream(local, self._sudo(sudo) + "sh -c " + shlex.quote(inner), tar=True)
        else:
            tmp = shlex.quote(dest + ".bakery-part")
            fix = (f" && chmod {mode} {tmp}" if mode else "") + (f" && chown {shlex.quote(owner)} {tmp}" if owner else "")
            inner = f"mkdir -p $(dirname {q}) && cat > {tmp}{fix} && mv -f {tmp} {q}"
            self._stream(local, self._sudo(sudo) + "sh -c " + shlex.quote(inner), tar=False)

    def _stream(self, local: Path, command: str, tar: bool) -> None:
        chan = self._exec(command)
        out: list[str] = []
        try:
            if tar:
                with tarfile.open(fileobj=_ChannelWriter(chan), mode="w|", format=tarfile.PAX_FORMAT,
                                  bufsize=CHUNK) as archive:
                    for path in sorted(local.rglob("*")):
                        archive.add(path, arcname=str(path.relative_to(local)), recursive=False)
            else:
                with local.open("rb") as fh:
                    while block := fh.read(CHUNK):
                        chan.sendall(block)
            chan.shutdown_write()
            status, _ = self._drain(chan, out.append, deadline=time.monotonic() + 600)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionLost(f"{self.target.label}: SSH connection lost during upload of {local} ({exc or type(exc).__name__})") from exc
        finally:
            chan.close()
        if status != 0:
            detail = out[-1] if out else f"exit status {status}"
            raise RemoteError(f"{self.target.label}: upload of {local} failed: {detail}")

    def close(self) -> None:
        self._drop()
        if self._bastion is not None:
            self._bastion.close()
            self._bastion = None

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _ChannelWriter:
    """Just enough of a file object for tarfile's stream mode."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def write(self, data: bytes) -> int:
        self.chan.sendall(data)
        return len(data)

    def close(self) -> None:
        pass
