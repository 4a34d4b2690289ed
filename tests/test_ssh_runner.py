"""The persistent step runner of SSHConnector, against a real OpenSSH sshd.

The sshd is `FakeBuilderHost`'s (private mount and pid namespace, its own /tmp), started for
a builder instance launched in moto; the sudo path runs in a local-cloud sandbox as `admin`
(tests/local/test_ssh_runner_sudo.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from bakery.errors import RemoteError
from bakery.remote import keys, ssh
from bakery.remote.dial import Machine, Route, TcpDial
from bakery.remote.ssh import ConnectionLost, SSHConnector, Target
from tests.support import FakeBuilderHost

# The runner's pid as /proc shows it: the step's parent is `timeout`, whose parent is the runner.
# (FakeBuilderHost's sshd has its own pid namespace but the host's /proc: these are host pids.)
RUNNER_PID = "read -r _ _ _ t _ </proc/self/stat; read -r _ _ _ r _ </proc/$t/stat; echo $r"


class Builder:
    """A builder instance in moto and the real sshd FakeBuilderHost starts for it."""

    def __init__(self, moto_server, scratch: Path):
        self.login, self.host_key = keys.generate("test"), keys.generate("test-host")
        self.host = FakeBuilderHost(moto_server, scratch)
        ec2 = moto_server.client()
        name = f"runner-test-{scratch.name}"
        ec2.import_key_pair(KeyName=name, PublicKeyMaterial=self.login.public_openssh.encode())
        user_data = "#cloud-config\n" + yaml.safe_dump({"ssh_keys": {"ed25519_private": self.host_key.private_openssh}})
        ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1, KeyName=name, UserData=user_data,
                          TagSpecifications=[{"ResourceType": "instance",
                                              "Tags": [{"Key": "bakery:role", "Value": "builder"}]}])
        self.open: list[SSHConnector] = []

    def connect(self) -> SSHConnector:
        conn = SSHConnector(Target(opener=TcpDial()(Machine("test"), self.host.port, Route("host", "127.0.0.1")), user="root",
                                   login_key=self.login.paramiko_key(), host_key=self.host_key.public_openssh,
                                   label="test builder"))
        conn.connect(timeout=20)
        self.open.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.open:
            conn.close()
        self.host.close()


@pytest.fixture(scope="module")
def builder(moto_server, tmp_path_factory):
    b = Builder(moto_server, tmp_path_factory.mktemp("runner-builder"))
    yield b
    b.close()


@pytest.fixture
def conn(builder):
    c = builder.connect()
    yield c
    c.close()


def run(conn, script: str, *, env=None, timeout: float = 30, sudo: bool = False):
    lines: list[str] = []
    res = conn.run(script, env=env or {}, timeout=timeout, sudo=sudo, on_output=lines.append)
    return res, lines


def test_many_steps_share_one_runner_and_keep_their_own_output_and_status(conn):
    pids = set()
    for i in range(30):
        res, lines = run(conn, f"echo step {i}; {RUNNER_PID}; exit {i % 3}", timeout=30)
        assert (res.exit_status, res.timed_out) == (i % 3, False)
        assert lines[0] == f"step {i}"
        pids.add(lines[1])
    assert len(pids) == 1


def test_the_runner_sizes_requests_in_bytes_under_a_utf8_locale():
    # bash's `read -N` counts characters of the locale; the runner must count bytes.
    body = "#!/bin/sh -e\nprintf '%s\\n' \"$GREETING\" 'héllo ✓'\n".encode()
    cmd = ssh._step_command({"GREETING": "grüß"}, 10).encode()
    request = b"%d %d\n%s%s" % (len(cmd), len(body), cmd, body)
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", ssh.RUNNER, "bakery-runner", "n0nce"],
                          input=request * 2, env={**os.environ, "LC_ALL": "C.UTF-8"}, capture_output=True, timeout=30)
    assert done.stdout.decode() == "\nn0nce ready\n" + "\nn0nce go\ngrüß\nhéllo ✓\n\nn0nce 0\n" * 2


def test_files_a_step_creates_get_the_logins_usual_modes(conn, builder):
    # the sshd here runs with umask 022, as sshd does by default: the step's files are 0644, not 0600
    res, lines = run(conn, "mkdir -p /srv/modes && touch /srv/modes/f && stat -c %a /srv/modes/f")
    assert res.exit_status == 0 and lines == ["644"]
    res, lines = run(conn, "echo data > /srv/modes/g; stat -c %a /srv/modes/g", timeout=10)
    assert lines == ["644"]


def test_without_bash_steps_get_the_same_modes(conn, monkeypatch):
    monkeypatch.setattr(ssh, "RUNNER_SHELL", "no-such-shell-for-bakery")
    assert run(conn, "mkdir -p /srv/modes2 && touch /srv/modes2/f && stat -c %a /srv/modes2/f")[1] == ["644"]


def test_the_last_line_without_a_newline_is_still_a_line(conn):
    assert run(conn, "printf 'a\\nb'")[1] == ["a", "b"]
    assert run(conn, "printf 'a\\n\\n'")[1] == ["a", ""]  # an empty last line is output, not the frame
    assert run(conn, "printf ''")[1] == []
    assert run(conn, "echo next")[1] == ["next"]  # nothing of the previous step leaks in


def test_output_that_looks_like_a_frame_is_output(conn):
    fake = "0123456789abcdef0123456789abcdef 0"
    res, lines = run(conn, f"printf '\\n{fake}\\n{fake[:32]} ready\\n'; exit 7")
    assert res.exit_status == 7
    assert lines == ["", fake, f"{fake[:32]} ready"]


def test_stdout_and_stderr_arrive_interleaved_in_order(conn):
    assert run(conn, "echo out; echo err >&2; echo out2")[1] == ["out", "err", "out2"]


def test_binary_output_is_decoded_line_by_line_with_replacement(conn, tmp_path):
    data = bytes(range(256)) * 16 + b"\r\n\xff\xfe tail"
    (tmp_path / "blob").write_bytes(data)
    conn.put(tmp_path / "blob", "/tmp/blob", mode=None, owner=None, sudo=False)
    _, lines = run(conn, "cat /tmp/blob")
    assert lines == [part.decode("utf-8", "replace").rstrip("\r") for part in data.split(b"\n")]


def test_large_output_streams_completely(conn):
    res, lines = run(conn, "seq 1 300000", timeout=60)
    assert res.exit_status == 0
    assert len(lines) == 300000 and lines[0] == "1" and lines[-1] == "300000"


def test_a_step_reading_stdin_gets_eof_and_cannot_swallow_the_next_request(conn):
    res, lines = run(conn, "cat; read x || echo eof")
    assert (res.exit_status, lines) == (0, ["eof"])
    assert run(conn, "echo after")[1] == ["after"]


def test_env_values_with_quotes_newlines_and_dollars_arrive_verbatim(conn):
    env = {"A": "it's \"quoted\" $HOME `id` \\n", "B": "line1\nline2\n", "EMPTY": ""}
    res, lines = run(conn, "printf '[%s]' \"$A\" \"$B\" \"$EMPTY\"; echo", env=env)
    assert lines == ["[it's \"quoted\" $HOME `id` \\n][line1", "line2", "][]"]
    # names bash keeps for itself still reach the step (through env(1))
    assert run(conn, "echo $UID", env={"UID": "4242"})[1] == ["4242"]
    assert run(conn, "echo ${A-unset}")[1] == ["unset"]  # env is per step


def test_the_default_shell_is_sh_with_errexit_and_a_shebang_is_honoured(conn):
    res, lines = run(conn, "echo before; false; echo after")
    assert (res.exit_status, lines) == (1, ["before"])
    res, lines = run(conn, "#!/bin/bash\necho ${BASH_VERSION:+bash}; [[ x == x ]] && echo ok; exit 5")
    assert (res.exit_status, lines) == (5, ["bash", "ok"])
    res, lines = run(conn, "#!/bin/sh\nfalse; echo no errexit without -e")
    assert lines == ["no errexit without -e"]


def test_a_step_past_its_timeout_is_killed_and_the_runner_carries_on(conn):
    before = run(conn, RUNNER_PID)[1]
    res, lines = run(conn, "echo started; sleep 30", timeout=1)
    assert res.timed_out and res.exit_status == 124 and res.seconds < 5
    assert lines == ["started"]
    assert run(conn, RUNNER_PID)[1] == before


def test_a_stuck_runner_is_abandoned_at_the_local_deadline_and_the_next_step_gets_a_fresh_one(conn, monkeypatch):
    monkeypatch.setattr(ssh, "DEADLINE_GRACE", 1.0)
    old = run(conn, RUNNER_PID)[1][0]
    os.kill(int(old), signal.SIGSTOP)
    try:
        res, _ = run(conn, "echo lost", timeout=1)
        assert res.timed_out and res.exit_status == -1 and res.seconds < 5
        res, lines = run(conn, RUNNER_PID)
        assert res.exit_status == 0 and lines[0] != old
    finally:
        os.kill(int(old), signal.SIGCONT)  # it reads EOF on its abandoned channel and exits


def test_a_runner_killed_mid_step_fails_that_step_and_the_next_gets_a_fresh_one(conn):
    seen = []

    def kill_runner(line):
        seen.append(line)
        os.kill(int(line), signal.SIGKILL)
    res = conn.run(f"{RUNNER_PID}; sleep 2", env={}, timeout=30, sudo=False, on_output=kill_runner)
    assert (res.exit_status, res.timed_out) == (-1, False)  # no status: it ended with its runner
    res, lines = run(conn, RUNNER_PID)
    assert res.exit_status == 0 and lines[0] != seen[0]
    os.kill(int(lines[0]), signal.SIGKILL)  # between steps, too
    assert run(conn, "echo fresh")[1] == ["fresh"]


def test_an_exception_mid_step_leaves_no_half_read_output_for_the_next_step(conn):
    def interrupted(line):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        conn.run("echo first; sleep 0.3; echo second; exit 3", env={}, timeout=30, sudo=False, on_output=interrupted)
    res, lines = run(conn, "echo next")
    assert (res.exit_status, lines) == (0, ["next"])


def test_a_step_that_removes_the_runner_dir_does_not_break_the_next(conn):
    assert run(conn, "rm -rf /tmp/bakery-*")[0].exit_status == 0  # as the image hygiene does
    assert run(conn, "echo still here")[1] == ["still here"]


def test_uploads_between_steps_use_the_same_runner(conn, tmp_path):
    (tmp_path / "f.txt").write_text("file\n")
    (tmp_path / "d/sub").mkdir(parents=True)
    (tmp_path / "d/sub/x").write_text("x\n")
    pid = run(conn, RUNNER_PID)[1]
    conn.put(tmp_path / "f.txt", "/srv/f.txt", mode="0640", owner=None, sudo=False)
    assert run(conn, "cat /srv/f.txt; stat -c %a /srv/f.txt")[1] == ["file", "640"]
    conn.put(tmp_path / "d", "/srv/d", mode=None, owner=None, sudo=False)
    assert run(conn, "cat /srv/d/sub/x")[1] == ["x"]
    assert run(conn, RUNNER_PID)[1] == pid


def test_close_ends_the_runner_and_removes_its_files(builder):
    conn = builder.connect()
    pid = run(conn, RUNNER_PID)[1][0]
    own = run(conn, 'dirname "$0"')[1][0]  # a step is the runner's step file: $0 names its directory
    assert own.startswith("/tmp/bakery-run.") and run(conn, f"test -d {own} && echo there")[1] == ["there"]
    conn.close()
    other = builder.connect()
    assert run(other, f"test -e /proc/{pid} && echo alive || echo gone")[1] == ["gone"]
    assert run(other, f"test -e {own} && echo left || echo removed")[1] == ["removed"]
    other.close()


def test_without_bash_every_step_is_one_exec(conn, monkeypatch):
    monkeypatch.setattr(ssh, "RUNNER_SHELL", "no-such-shell-for-bakery")
    for i in range(3):
        res, lines = run(conn, f"echo step {i}; exit {i}", env={"V": "v'1"})
        assert (res.exit_status, lines) == (i, [f"step {i}"])
    assert run(conn, "echo $V", env={"V": "x y"})[1] == ["x y"]
    assert run(conn, "sleep 30", timeout=1)[0].timed_out


def test_a_connection_dropped_mid_step_is_connection_lost(builder):
    conn = builder.connect()
    assert run(conn, "echo up")[1] == ["up"]
    threading.Timer(0.5, builder.host.kill_sessions).start()  # the connection's own sshd process dies
    started = time.monotonic()
    with pytest.raises(ConnectionLost):
        run(conn, "sleep 30", timeout=60)
    assert time.monotonic() - started < 10
    conn.close()


def test_an_uploaded_tree_keeps_bytes_modes_empty_dirs_and_symlinks(conn, builder, tmp_path):
    src = tmp_path / "tree"
    (src / "bin").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "big.bin").write_bytes(os.urandom(700 * 1024))  # larger than one send
    for i in range(50):
        (src / f"small-{i}.txt").write_bytes(os.urandom(i * 37))
    (src / "bin/tool").write_text("#!/bin/sh\necho tool\n")
    (src / "bin/tool").chmod(0o755)
    (src / "link").symlink_to("bin/tool")
    conn.put(src, "/srv/tree", mode=None, owner=None, sudo=False)
    copy = builder.host.fs / "srv/tree"
    for path in src.rglob("*"):
        twin = copy / path.relative_to(src)
        if path.is_symlink():
            assert twin.is_symlink() and os.readlink(twin) == os.readlink(path)
        elif path.is_file():
            assert twin.read_bytes() == path.read_bytes()
            assert twin.stat().st_mode == path.stat().st_mode
        else:
            assert twin.is_dir()
    assert run(conn, "/srv/tree/link")[1] == ["tool"]


def test_an_unknown_owner_fails_the_upload_with_chowns_message_and_lands_nothing(conn, builder, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_text("f\n")
    for source, dest in ((tmp_path / "d", "/srv/owned-tree"), (tmp_path / "d/f", "/srv/owned-file")):
        with pytest.raises(RemoteError, match="upload of .* failed: chown: invalid user: 'nosuchuser'"):
            conn.put(source, dest, mode=None, owner="nosuchuser", sudo=False)
        assert not (builder.host.fs / dest.lstrip("/")).exists()


def test_a_tree_lands_through_a_link_to_a_directory_and_never_through_a_link_to_a_file(conn, builder, tmp_path):
    """As on merged /usr (/lib -> usr/lib): the link stays, the files land where it points; a link
    where the upload brings a file is replaced, not written through."""
    run(conn, "mkdir -p /srv/root/usr/lib && ln -s usr/lib /srv/root/lib && echo keep > /srv/victim"
              " && ln -s /srv/victim /srv/root/conf")
    (tmp_path / "t/lib").mkdir(parents=True)
    (tmp_path / "t/lib/mod.so").write_text("so\n")
    (tmp_path / "t/conf").write_text("new\n")
    conn.put(tmp_path / "t", "/srv/root", mode=None, owner=None, sudo=False)
    root = builder.host.fs / "srv/root"
    assert os.readlink(root / "lib") == "usr/lib" and (root / "usr/lib/mod.so").read_text() == "so\n"
    assert not (root / "conf").is_symlink() and (root / "conf").read_text() == "new\n"
    assert (builder.host.fs / "srv/victim").read_text() == "keep\n"


def test_an_upload_the_builder_refuses_is_an_upload_error_not_a_lost_connection(conn, tmp_path):
    (tmp_path / "big").write_bytes(os.urandom(8 << 20))  # more than the channel window: the refusal comes mid-send
    run(conn, "echo > /srv/plainfile")
    with pytest.raises(RemoteError, match="upload of .*big failed: .*(Not a directory|File exists)") as err:
        conn.put(tmp_path / "big", "/srv/plainfile/big", mode=None, owner=None, sudo=False)
    assert not isinstance(err.value, ConnectionLost)
    assert run(conn, "echo still connected")[1] == ["still connected"]


def test_a_port_that_never_sends_its_banner_costs_no_more_than_the_wait_has_left(monkeypatch):
    import socket

    from bakery.errors import WaitTimeout

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) and never says a word
    asked = []
    real = ssh.paramiko.Transport.start_client

    def start_client(self, event=None, timeout=None):
        asked.append((self.banner_timeout, timeout))
        return real(self, event=event, timeout=timeout)
    monkeypatch.setattr(ssh.paramiko.Transport, "start_client", start_client)
    login, host = keys.generate("t"), keys.generate("h")
    conn = SSHConnector(Target(opener=TcpDial()(Machine("silent"), silent.getsockname()[1], Route("host", "127.0.0.1")), user="root",
                               login_key=login.paramiko_key(), host_key=host.public_openssh, label="silent"))
    try:
        with pytest.raises(WaitTimeout, match="SSH on silent"):
            conn.connect(timeout=1.5)
    finally:
        conn.close()
        silent.close()
    assert asked and all(banner <= 1.5 and total <= 1.5 for banner, total in asked)
