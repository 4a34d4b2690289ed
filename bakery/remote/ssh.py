"""SSH connector (paramiko): one connection per bake, one persistent runner for the steps.

Why not Packer's way: Packer opens several SSH sessions per shell step (upload the
script, chmod, run, rm) and never checks the host key. Here the first step starts a
small bash loop on one session channel (`RUNNER`) and every step is one framed request
on it: no channel open, no sshd session, no login shell per step, two processes on the
builder (`timeout` and the script's interpreter). An upload is one streamed `tar`,
and the server must present the host key we generated for it, or we refuse.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import paramiko

from bakery.waits import Backoff, wait_for
from bakery.errors import RemoteError
from bakery.signals import check_cancelled
from bakery.remote.connector import OutputSink, RunResult
from bakery.remote.dial import Opener
from bakery.remote.keys import fingerprint
from bakery.render.upload import Entry, entries, unpack_command, write_tar

# paramiko logs every failed handshake attempt at ERROR while we are still retrying; keep
# that out of the user's terminal (it reaches the root logger's handlers under --debug).
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CHUNK = 256 * 1024
WINDOW = 16 * 1024 * 1024
# How long past a step's timeout we wait for it locally: the remote `timeout -k 10s` must have
# ended it by then, so the builder or the runner is stuck and the runner is abandoned.
DEADLINE_GRACE = 15.0
RUNNER_SHELL = "bash"  # without it (or when sudo refuses it) steps fall back to one exec each
STEP = " while running a step"
# What we offer, fastest first as measured with paramiko (bench/upload_throughput.py): AES-GCM
# needs no separate MAC pass. No CBC, 3DES, SHA-1 or MD5 (OpenSSH's own defaults dropped them).
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512")

# The remote half of the runner, started once per connection (and once more under `sudo -n`
# for sudo steps when we are not root). Request: "<len cmd> <len script>\n<cmd><script>", in
# bytes; `cmd` runs the step file: env prefix assignments, `timeout`, stdin from /dev/null
# (so `apt-get` cannot swallow the next request). Reply: the step's output, then the frame
# "\n<nonce> <status>\n"; its leading newline ends the output's last line, so the frame
# always stands on a line of its own and the reader drops exactly that newline. A "go" frame
# before the step starts tells a runner that died before it took the step (safe to resend)
# from one that died in it.
RUNNER = r"""trap '' PIPE
exec 2>&1
_bk_n=$1
_bk_T=$(command -v timeout) || exit 127
# mktemp makes the dir 0700 whatever the umask: steps keep the login's umask, so the files
# they write into the image get the usual modes (0644, not 0600)
_bk_new() { _bk_d=$(mktemp -d /tmp/bakery-run.XXXXXXXX) && _bk_f=$_bk_d/step && : >"$_bk_f" && chmod 700 "$_bk_f"; }
_bk_new || exit 125
trap 'rm -rf "$_bk_d"' EXIT
_bk_read() { local LC_ALL=C; IFS= read -r -N "$1" "$2"; }
printf '\n%s ready\n' "$_bk_n"
while read -r _bk_nc _bk_ns && _bk_read "$_bk_nc" _bk_c && _bk_read "$_bk_ns" _bk_s; do
  if { [[ -O $_bk_d && ! -L $_bk_d && -x $_bk_f ]] || _bk_new; } && printf '%s' "$_bk_s" >"$_bk_f"; then
    printf '\n%s go\n' "$_bk_n"
    eval "$_bk_c"; _bk_rc=$?
  else
    _bk_rc=125
  fi
  printf '\n%s %d\n' "$_bk_n" "$_bk_rc"
done
"""
# Names bash refuses or drops as prefix assignments; a step using one gets its env through env(1).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BASH_OWN = {"UID", "EUID", "PPID", "SHELLOPTS", "GROUPS", "FUNCNAME", "_", "DIRSTACK", "PIPESTATUS"}


class ConnectionLost(RemoteError):
    """The SSH connection itself failed (as opposed to a command or upload that failed on it)."""


class HostKeyMismatch(RemoteError):
    """The server is not the machine we launched: never retried."""


@dataclass(frozen=True)
class Target:
    opener: Opener       # how to reach the SSH port (bakery.remote.dial): TCP, a hop, or a namespace
    user: str
    login_key: "paramiko.PKey"
    host_key: str  # the only acceptable server key, "ssh-ed25519 AAAA..."
    label: str     # for messages: "builder i-0abc (127.0.0.1:2222)"


class SSHConnector:
    def __init__(self, target: Target):
        self.target = target
        self.transport: paramiko.Transport | None = None
        self._runners: dict[bool, _Runner] = {}  # keyed by "runs under sudo"
        self._no_runner: set[bool] = set()       # runners that could not start: those steps exec
        self.attempts = 0

    # ---- connect ------------------------------------------------------------------------

    def connect(self, timeout: float) -> None:
        t = self.target
        last_error = ["no attempt yet"]
        deadline = time.monotonic() + timeout

        def attempt():
            self.attempts += 1
            try:
                # each attempt gets at most 10 s, and never more than the wait has left: a port that
                # accepts but never sends its banner must not outlive the recipe's ssh.timeout
                self.transport = self._handshake(max(0.5, min(10.0, deadline - time.monotonic())))
                return True
            except HostKeyMismatch:
                raise
            except (OSError, EOFError, paramiko.SSHException) as exc:
                last_error[0] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._drop()
                return None

        wait_for(attempt, what=f"SSH on {t.label}", timeout=timeout,
                 backoff=Backoff(initial=0.05, factor=1.6, max_interval=0.9), hint=lambda: last_error[0])

    def _handshake(self, timeout: float) -> paramiko.Transport:
        t = self.target
        sock = self.target.opener.open(timeout)
        transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=32768)
        try:
            transport.banner_timeout = timeout
            transport.handshake_timeout = timeout
            options = transport.get_security_options()
            # Ask only for the key type we pinned, so the server cannot offer another one.
            options.key_types = [t.host_key.split()[0]]
            options.ciphers = [c for c in CIPHERS if c in options.ciphers]
            options.digests = [m for m in MACS if m in options.digests]
            transport.start_client(timeout=timeout)
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

    def _alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    def _lost(self, doing: str, exc: BaseException | None = None) -> ConnectionLost:
        why = f" ({exc or type(exc).__name__})" if exc is not None else ""
        return ConnectionLost(f"{self.target.label}: SSH connection lost{doing}{why}")

    def _exec(self, command: str) -> paramiko.Channel:
        if not self._alive():
            raise self._lost("")
        try:
            chan = self.transport.open_session(timeout=30)
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            return chan
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost("", exc) from exc

    def run(self, script: str, *, env: Mapping[str, str], timeout: float, sudo: bool,
            on_output: OutputSink) -> RunResult:
        """A step on the persistent runner (one per sudo-ness, started by the first step that
        needs it); one exec per step where the builder has no bash or sudo refuses the runner."""
        if not script.startswith("#!"):
            script = "#!/bin/sh -e\n" + script
        body = script.encode()
        secs = max(1, int(round(timeout)))
        start = time.monotonic()
        deadline = start + timeout + DEADLINE_GRACE
        via_sudo = bool(self._sudo(sudo))
        status = None
        if via_sudo not in self._no_runner and b"\0" not in body:  # bash's read drops NUL bytes
            status, late = self._run_on_runner(via_sudo, body, env, secs, on_output, deadline)
        if status is None:
            status, late = self._run_exec(body, env, secs, self._sudo(sudo), on_output, deadline)
        timed_out = late or status == 124 or (status == 137 and time.monotonic() - start >= timeout)
        return RunResult(exit_status=status, timed_out=timed_out, seconds=time.monotonic() - start)

    def _run_on_runner(self, via_sudo: bool, body: bytes, env: Mapping[str, str], secs: int, on_output: OutputSink,
                       deadline: float) -> tuple[int | None, bool]:
        """(status, late), or (None, False) when no runner could start: the caller then execs."""
        cmd = _step_command(env, secs).encode()
        request = b"%d %d\n%s%s" % (len(cmd), len(body), cmd, body)
        for last_try in (False, True):
            runner = self._runners.get(via_sudo)
            if runner is None or runner.chan.closed or runner.chan.eof_received:
                nonce = secrets.token_hex(16)  # no step's output can end a step early by guessing it
                runner = self._runners[via_sudo] = _Runner(self._exec(_runner_command(via_sudo, nonce)), nonce)
            try:
                # Sent before the runner says it is ready: the first step costs no extra round trip.
                runner.chan.sendall(request)
                if not runner.ready:
                    runner.ready = self._frame(runner, lambda line: None, deadline) == b"ready"
                    if not runner.ready:  # no bash, sudo refused it, or a builder stuck before it started
                        self._abandon(via_sudo)
                        if time.monotonic() > deadline:
                            return -1, True
                        self._no_runner.add(via_sudo)
                        return None, False
                frame = self._frame(runner, on_output, deadline)
                if frame == b"go":
                    frame = self._frame(runner, on_output, deadline)
                elif frame == b"" and not last_try:  # it died before taking the step: resend to a fresh one
                    self._abandon(via_sudo)
                    continue
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._abandon(via_sudo)
                if not self._alive():
                    raise self._lost(STEP, exc) from exc
                if not last_try:  # its channel closed under our request: the step never started
                    continue
                return -1, False
            except BaseException:  # lost connection, Ctrl-C: the stream is mid-step, so no later step may use it
                self._abandon(via_sudo)
                raise
            break
        if frame is None:  # local deadline passed: the step may still run; a fresh runner takes the next
            self._abandon(via_sudo)
            return -1, True
        if frame.isdigit():
            return int(frame), False
        # The runner went away mid-step (killed): its exit status if any, and a fresh runner next time.
        chan = runner.chan
        self._abandon(via_sudo)
        return (chan.exit_status if chan.exit_status_ready() else -1), False

    def _frame(self, runner: "_Runner", on_output: OutputSink, deadline: float) -> bytes | None:
        """Stream lines up to the runner's next frame and return what the frame says (a status or
        b"ready"); b"" if the runner's channel ended without one, None if the deadline passed."""
        chan = runner.chan
        chan.settimeout(0.5)
        while True:
            frame = runner.parse(on_output)
            if frame is not None:
                return frame
            if time.monotonic() > deadline:
                return None
            try:
                data = chan.recv(1 << 20)
            except socket.timeout:
                data = None
                check_cancelled()  # a parallel rebake's worker, cancelled mid-step
            if not data and not self._alive():
                raise self._lost(STEP)
            if data == b"":
                runner.flush(on_output)
                end = time.monotonic() + 1  # sshd may send the exit status just after the EOF
                while not chan.exit_status_ready() and not chan.closed and time.monotonic() < end:
                    time.sleep(0.01)
                return b""
            if data:
                runner.pending += data

    def _abandon(self, via_sudo: bool) -> None:
        runner = self._runners.pop(via_sudo, None)
        if runner is not None:
            runner.chan.close()

    def _run_exec(self, body: bytes, env: Mapping[str, str], secs: int, prefix: str, on_output: OutputSink,
                  deadline: float) -> tuple[int, bool]:
        """One exec per step: stdin carries the script into a private temp file that runs
        with stdin from /dev/null (so `apt-get` cannot swallow the script), under `timeout`."""
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        command = (
            'f=$(mktemp /tmp/bakery-step.XXXXXXXX) || exit 125; cat > "$f" && chmod 700 "$f" || exit 125; '
            f'{prefix}env {envs} timeout -k 10s {secs}s "$f" </dev/null; rc=$?; rm -f "$f"; exit $rc'
        )
        chan = self._exec(command)
        try:
            chan.sendall(body)
            chan.shutdown_write()
            return self._drain(chan, on_output, deadline, STEP)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(STEP, exc) from exc
        finally:
            chan.close()

    def _drain(self, chan: paramiko.Channel, on_output: OutputSink, deadline: float, doing: str) -> tuple[int, bool]:
        """Stream output line by line; a local deadline backs up the remote `timeout`. A channel
        that ends because the connection died is ConnectionLost, not a command's failure."""
        chan.settimeout(0.5)
        pending = b""
        while True:
            try:
                data = chan.recv(65536)
            except socket.timeout:
                if time.monotonic() > deadline:
                    return -1, True
                if not self._alive():
                    raise self._lost(doing)
                check_cancelled()
                continue
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                on_output(line.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            on_output(pending.decode("utf-8", "replace"))
        while not chan.status_event.wait(0.5):  # set by the exit status, or when the channel closes
            if time.monotonic() > deadline:
                return -1, True
            if not self._alive():
                raise self._lost(doing)
        if not self._alive():  # the channel was closed under us, with no exit status
            raise self._lost(doing)
        return chan.recv_exit_status(), False

    def _sudo(self, sudo: bool) -> str:
        return "sudo -n " if sudo and self.target.user != "root" else ""

    # ---- put ----------------------------------------------------------------------------

    def put(self, local: Path, dest: str, *, mode: str | None, owner: str | None, sudo: bool,
            dir_mode: str | None = None) -> None:
        """What the upload carries and how it lands: bakery/render/upload.py."""
        items = entries(local, mode, dir_mode, f"upload of {local}")
        inner = unpack_command(dest, tree=local.is_dir(), owner=owner)
        self._stream(local, items, owner, self._sudo(sudo) + "sh -c " + shlex.quote(inner))

    def _stream(self, local: Path, items: list[Entry], owner: str | None, command: str) -> None:
        chan = self._exec(command)
        out: list[str] = []
        doing = f" during upload of {local}"
        try:
            try:
                with _ChannelWriter(chan) as writer:
                    write_tar(writer, items, owner)
                chan.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException) as exc:
                if not self._alive():
                    raise self._lost(doing, exc) from exc
                # The command stopped reading (no space, not a directory): its output says why.
            status, _ = self._drain(chan, out.append, time.monotonic() + 600, doing)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(doing, exc) from exc
        finally:
            chan.close()
        if status != 0:
            detail = out[-1] if out else f"exit status {status}"
            raise RemoteError(f"{self.target.label}: upload of {local} failed: {detail}")

    # ---- get ----------------------------------------------------------------------------

    def get(self, source: str, local_dir: Path, *, sudo: bool, timeout: float) -> list[Path]:
        """Copy `source` (a file or a directory, an absolute path on the machine) into `local_dir`
        as tar carries it: its name there, modes kept. What lands is checked as it is unpacked
        (tarfile's `data` filter: nothing outside `local_dir`, no devices, no links leading out).
        Returns the top-level paths that landed."""
        import posixpath
        import tarfile

        parent, name = posixpath.split(source.rstrip("/"))
        command = f"{self._sudo(sudo)}tar -C {shlex.quote(parent or '/')} -cf - -- {shlex.quote(name)}"
        if not self._alive():
            raise self._lost("")
        doing = f" during download of {source}"
        try:
            chan = self.transport.open_session(timeout=30)
            chan.settimeout(timeout)
            chan.exec_command(command)  # stderr apart: the stream on stdout is the archive alone
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(doing, exc) from exc
        local_dir.mkdir(parents=True, exist_ok=True)
        landed: list[Path] = []
        try:
            with chan.makefile("rb") as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    archive.extract(member, local_dir, filter="data")
                    top = local_dir / member.name.split("/")[0]
                    if top not in landed:
                        landed.append(top)
        except tarfile.TarError as exc:  # a member the filter refuses, or no archive at all (tar failed)
            refused = str(exc)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            if not self._alive():
                raise self._lost(doing, exc) from exc
            raise RemoteError(f"{self.target.label}: download of {source} failed: {exc}") from exc
        else:
            refused = None
        if refused and chan.exit_status_ready() is False and not chan.eof_received:
            chan.close()  # a member refused mid-stream: stop the sender rather than drain it
            raise RemoteError(f"{self.target.label}: download of {source} failed: {refused}")
        try:
            status = chan.recv_exit_status()
            errors = chan.makefile_stderr("rb").read().decode(errors="replace").strip().splitlines()
        finally:
            chan.close()
        if status != 0 or refused or not landed:
            detail = errors[0] if status != 0 and errors else refused or f"exit status {status}"  # tar says why first
            raise RemoteError(f"{self.target.label}: download of {source} failed: {detail}")
        return landed

    def close(self) -> None:
        for via_sudo in list(self._runners):
            runner = self._runners.pop(via_sudo)
            try:  # EOF ends the loop; its EXIT trap removes the step dir
                runner.chan.shutdown_write()
                end = time.monotonic() + 2
                while not runner.chan.exit_status_ready() and not runner.chan.closed and time.monotonic() < end:
                    time.sleep(0.002)
            except (OSError, EOFError, paramiko.SSHException):
                pass
            runner.chan.close()
        self._drop()
        self.target.opener.close()

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def _runner_command(via_sudo: bool, nonce: str) -> str:
    return f"exec {'sudo -n ' if via_sudo else ''}{RUNNER_SHELL} --noprofile --norc -c {shlex.quote(RUNNER)} bakery-runner {nonce}"


def _step_command(env: Mapping[str, str], secs: int) -> str:
    run = f'"$_bk_T" -k 10s {secs}s "$_bk_f" </dev/null'
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    if all(_NAME.match(k) and k not in _BASH_OWN and not k.startswith("BASH") for k in env):
        return f"{assigns} {run}" if assigns else run
    return f"env {assigns} {run}"


class _Runner:
    """Our end of one runner channel: splits its stream into output lines and frames."""

    def __init__(self, chan: paramiko.Channel, nonce: str):
        self.chan = chan
        self.mark = nonce.encode() + b" "
        self.ready = False
        self.pending = b""  # received, not yet split into lines
        self.held = False   # an empty line that may be the frame's own leading newline

    def parse(self, on_output: OutputSink) -> bytes | None:
        """Emit complete lines; at a frame line return what follows the nonce."""
        if b"\n" not in self.pending:
            return None
        lines = self.pending.split(b"\n")
        self.pending = lines.pop()
        for i, line in enumerate(lines):
            if line.startswith(self.mark):
                # Anything after the frame is a background job's late output: the next step shows it.
                self.pending = b"\n".join([*lines[i + 1:], self.pending])
                self.held = False
                return line[len(self.mark):]
            if self.held:
                on_output("")
            self.held = not line
            if line:
                on_output(line.decode("utf-8", "replace").rstrip("\r"))
        return None

    def flush(self, on_output: OutputSink) -> None:
        """The channel ended without a frame: whatever is left is output."""
        if self.held:
            on_output("")
        if self.pending:
            on_output(self.pending.decode("utf-8", "replace"))
        self.pending, self.held = b"", False


class _ChannelWriter:
    """A write-only file object on a channel that gathers small writes (tar headers, small
    files) into large sends, and sends without the copy per packet Channel.sendall makes of
    what is left of a bytes object."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan
        self.buf = bytearray()
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.offset += len(data)
        if not self.buf and len(data) >= CHUNK:
            self.chan.sendall(memoryview(data))
            return len(data)
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.flush()
        return len(data)

    def tell(self) -> int:  # TarFile in "w" mode keeps its own offset from this
        return self.offset

    def flush(self) -> None:
        if self.buf:
            self.chan.sendall(memoryview(self.buf))
            del self.buf[:]

    def __enter__(self) -> "_ChannelWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.flush()
