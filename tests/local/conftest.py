"""Fixtures for the local-cloud tests: the real base image, layer store and sandboxes.

The base image is built once per machine (~30 s) into ``$BAKERY_DATA_DIR`` or /var/lib/bakery
and reused; sandboxes get random names (netns names are host-global and other test runs may be
going on) and are always destroyed, also when a test fails.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from bakery.config.settings import default_data_dir
from bakery.local.base import ensure_base_image, load_base_metadata, share_base
from bakery.local.cloud import LocalCloud
from bakery.local.layers import LayerStore
from bakery.local.prereqs import check_prerequisites
from bakery.local.sandbox import Sandbox
from bakery.remote.keys import KeyPair, generate


def new_keypair() -> KeyPair:
    return generate("bakery-test")


def public_key(pair: KeyPair) -> paramiko.Ed25519Key:
    return paramiko.Ed25519Key(data=base64.b64decode(pair.public_openssh.split()[1]))


def wait_for_ssh(box: Sandbox, user: KeyPair, host: KeyPair, timeout: float = 60.0) -> paramiko.SSHClient:
    """Connect as root with the pinned host key, retrying until sshd listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = box.connect(22, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or not box.is_running():
                raise AssertionError(f"sshd never came up in {box.name}:\n{box.boot_log()}") from None
            time.sleep(0.02)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(box.name, "ssh-ed25519", public_key(host))
    client.connect(
        box.name, username="root", pkey=user.paramiko_key(), sock=sock,
        look_for_keys=False, allow_agent=False, timeout=10,
    )  # fmt: skip
    return client


def wait_for_boot(box: Sandbox, timeout: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while "done" not in box.boot_status():
        assert box.is_running(), box.boot_log()
        assert time.monotonic() < deadline, f"cloud-init did not finish:\n{box.boot_log()}"
        time.sleep(0.02)
    return box.boot_status()


@pytest.fixture(scope="session")
def local_base() -> Path:
    problems = check_prerequisites()
    if problems:
        pytest.skip("local cloud unavailable: " + "; ".join(problems))
    return ensure_base_image(default_data_dir(), log=lambda msg: None)


@pytest.fixture(scope="session")
def local_base_id(local_base: Path) -> str:
    return str(load_base_metadata(local_base)["id"])


@pytest.fixture
def local_store(tmp_path: Path, local_base: Path, local_base_id: str) -> LayerStore:
    store = LayerStore(tmp_path / "layers")
    store.add_base(local_base_id, local_base, load_base_metadata(local_base))
    return store


@pytest.fixture
def local_state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "instances"
    path.mkdir()
    return path


StartFn = Callable[..., Sandbox]


@pytest.fixture
def local_sandboxes(local_state_dir: Path) -> Iterator[StartFn]:
    """``start(lowers, **kwargs)``: a sandbox with a unique name, destroyed after the test."""
    started: list[Sandbox] = []

    def start(lowers: list[Path], **kwargs: object) -> Sandbox:
        name = f"t-{secrets.token_hex(4)}"
        kwargs.setdefault("meta_data", {})
        kwargs.setdefault("user_data", b"#cloud-config\n")
        kwargs.setdefault("egress", False)
        box = Sandbox.start(name, lowers, local_state_dir, **kwargs)  # type: ignore[arg-type]
        started.append(box)
        return box

    yield start
    for box in started:
        box.destroy()


@pytest.fixture
def local_keys() -> tuple[KeyPair, KeyPair]:
    """(user key pair, pinned ed25519 host key)."""
    return new_keypair(), new_keypair()


@pytest.fixture
def local_ssh() -> Iterator[Callable[..., paramiko.SSHClient]]:
    """``ssh(box, user_key, host_key)``: root SSH client with the host key pinned; closed after the test."""
    clients: list[paramiko.SSHClient] = []

    def ssh(box: Sandbox, user: KeyPair, host: KeyPair, timeout: float = 60.0) -> paramiko.SSHClient:
        client = wait_for_ssh(box, user, host, timeout)
        clients.append(client)
        return client

    yield ssh
    for client in clients:
        client.close()


@pytest.fixture
def local_boot_wait() -> Callable[..., dict[str, int]]:
    """``wait(box)``: block until all cloud-init stages ran; returns the per-stage exit codes."""
    return wait_for_boot


def sandbox_recipe(*steps: str) -> str:
    """A recipe on the local cloud's Debian base, baked as `admin`, with these steps (YAML flow maps)."""
    lines = "".join(f"  - {step}\n" for step in steps)
    return ('source:\n  filter: {name: "debian-12-amd64-*", owners: ["136693071363"]}\n'
            f"builder:\n  ssh: {{user: admin, timeout: 60}}\nsteps:\n{lines}")


#: a TCP server (for ``python -c``: address, port, name) that answers each client with its name and
#: the address the client came from, e.g. in the internet namespace or an instance's
WHO = ("import socket, sys\n"
       "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
       "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print('ready', flush=True)\n"
       "while True:\n"
       "    c, peer = s.accept(); c.sendall(f'{sys.argv[3]} {peer[0]}'.encode()); c.close()\n")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """A private local cloud (own data dir and endpoint) sharing the machine's cached base image."""
    data = tmp_path_factory.mktemp("localcloud")
    share_base(data, default_data_dir())
    cloud = LocalCloud(data)
    cloud.up(log=lambda line: print(line, file=sys.stderr))
    yield cloud
    before = netns_names()
    try:
        cloud.down(purge=True)
    finally:
        cloud.endpoint.down()  # even when an instance would not go: never leave an endpoint behind
        cloud.internet.teardown()  # nor its internet namespace and slirp
    assert not any(n.startswith("bakery-i-") and (data / "instances" / n[7:]).exists() for n in before)
    assert cloud.internet.netns not in netns_names()
