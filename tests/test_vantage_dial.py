"""A check made from another instance where addresses are routed (AWS): the dial logs in to that
instance over SSH, with the environment's key and the instance's pinned host keys, and connects
from there. Here the vantage is a real OpenSSH sshd on 127.0.0.1 (tests.support's private sshd)
and the target an HTTP server on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest

from bakery.config.environment import HealthCheck
from bakery.errors import WaitTimeout
from bakery.remote.dial import Bastion, Login, Machine, Route, TcpDial, Vantage
from bakery.remote.health import check_until
from bakery.remote.keys import generate
from tests.support import free_port, start_private_sshd, stop_process

class Sshd:
    """A private sshd (tests.support) that root logs in to with a fresh key."""

    def __init__(self, scratch: Path):
        self.host, user = generate("vantage-host"), generate("vantage-user")
        self.host.write_private(scratch, "host_key")
        (scratch / "authorized_keys").write_text(user.public_openssh + "\n")
        user.write_private(scratch, "user_key")
        self.key_file = scratch / "user_key"
        self.proc, self.port = start_private_sshd(scratch)

    def login(self, host_keys: tuple[str, ...] | None = None, bastion: Bastion | None = None) -> Login:
        return Login("root", str(self.key_file), host_keys or (self.host.public_openssh,), port=self.port,
                     bastion=bastion)


@pytest.fixture
def sshd(tmp_path):
    servers = []

    def start() -> Sshd:
        scratch = tmp_path / f"sshd{len(servers)}"
        scratch.mkdir(mode=0o700)
        servers.append(Sshd(scratch))
        return servers[-1]
    yield start
    for server in servers:
        server.proc.kill()  # unshare passes on no SIGTERM; its --kill-child takes sshd with it
        stop_process(server.proc)


@pytest.fixture
def web():
    """An HTTP server on 127.0.0.1 answering /health."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


CHECK = HealthCheck(type="http", path="/health", port=80)


def check_from(vantage: Vantage, port: int, seconds: float) -> None:
    opener = TcpDial()(Machine("i-target", "127.0.0.1"), port, Route(vantage=vantage))
    try:
        check_until(opener, "i-target", CHECK.model_copy(update={"port": port}), time.monotonic() + seconds)
    finally:
        opener.close()


def test_a_check_from_another_instance_logs_in_there_and_connects_from_it(sshd, web):
    server = sshd()
    check_from(Vantage(Machine("i-vantage", "127.0.0.1"), login=server.login), web, seconds=20)


def test_the_vantage_is_reached_through_the_environments_bastion(sshd, web, tmp_path, monkeypatch):
    bastion, vantage = sshd(), sshd()
    hop = Bastion("127.0.0.1", bastion.port, "root", str(bastion.key_file))
    # the bastion is long-lived: its host key comes from known_hosts, as for `invoke ssh`'s ProxyJump
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir(mode=0o700)
    (tmp_path / ".ssh/known_hosts").write_text(f"[127.0.0.1]:{bastion.port} {bastion.host.public_openssh}\n")
    check_from(Vantage(Machine("i-vantage", "127.0.0.1"), login=lambda: vantage.login(bastion=hop)), web, seconds=20)


def test_a_vantage_with_another_host_key_is_never_logged_in_to(sshd, web):
    server = sshd()
    impostor = (generate("other").public_openssh,)
    with pytest.raises(WaitTimeout) as caught:
        check_from(Vantage(Machine("i-vantage", "127.0.0.1"), login=lambda: server.login(host_keys=impostor)), web,
                   seconds=3)
    assert "i-target" in caught.value.message and "ssh root@127.0.0.1" in caught.value.message


def test_a_port_the_vantage_cannot_reach_fails_the_check_naming_it(sshd):
    server = sshd()
    closed = free_port()
    with pytest.raises(WaitTimeout) as caught:
        check_from(Vantage(Machine("i-vantage", "127.0.0.1"), login=server.login), closed, seconds=3)
    assert f"127.0.0.1:{closed} from 127.0.0.1" in caught.value.message
