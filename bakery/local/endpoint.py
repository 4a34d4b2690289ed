"""Starting and stopping the local cloud's endpoint process (server.py) on 127.0.0.1, on demand.

It runs detached, so images and instances outlive a single `invoke` command. moto keeps
state in memory only; the layer store is the durable record of images. Each start
hands moto the store's images through MOTO_AMIS_PATH, so AMI ids, names, owners and
tags survive `local.down` / `local.up` and a reboot.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bakery.local.errors import LocalCloudError
from bakery.local.procs import alive, starttime

DEFAULT_PORT = 4599
# The endpoint's own paths beside the AWS APIs (served by control.py)
HEALTH_PATH = "/bakery/health"
STATUS_PATH = "/bakery/status"  # every instance as EC2 and the host see it (invoke local.status)


@dataclass(frozen=True)
class EndpointState:
    pid: int
    starttime: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Endpoint:
    def __init__(self, data_dir: Path):
        self.dir = data_dir / "endpoint"
        self.state_file = self.dir / "endpoint.json"
        self.port_file = self.dir / "port"  # outlives the process: the URL stays the same across down/up
        self.snapshot_file = self.dir / "state.pickle"  # moto's state (persist.py), written by the process
        self.log_file = self.dir / "endpoint.log"
        self.amis_file = self.dir / "amis.json"

    def state(self) -> EndpointState | None:
        try:
            raw = json.loads(self.state_file.read_text())
            state = EndpointState(int(raw["pid"]), int(raw["starttime"]), int(raw["port"]))
        except (OSError, ValueError, KeyError):
            return None
        return state if alive(state.pid, state.starttime) else None

    def running_url(self) -> str | None:
        state = self.state()
        return state.url if state and self._healthy(state.url) else None

    def up(self, images: list[dict]) -> str:
        """Start the server (if it is not running) with `images` preloaded; return its URL."""
        url = self.running_url()
        if url:
            return url
        self.dir.mkdir(parents=True, exist_ok=True)
        self.amis_file.write_text(json.dumps(images, indent=1) + "\n")
        preferred = self._last_port()
        for _ in range(3):
            url = self._start(_pick_port(preferred))
            if url:
                return url
            preferred = 0  # another process took the port between the probe and the bind: any free one
        raise LocalCloudError(f"local EC2 endpoint did not start; see {self.log_file}")

    def _start(self, port: int) -> str | None:
        """Start the process on `port`; its URL once healthy, None when it exited first (the port
        was taken meanwhile)."""
        env = {**os.environ, "MOTO_AMIS_PATH": str(self.amis_file), "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bakery.local.server", "--data-dir", str(self.dir.parent),
                                     "--port", str(port)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                    start_new_session=True)  # outlives this command, ignores its Ctrl-C
        state = EndpointState(proc.pid, starttime(proc.pid), port)
        self.port_file.write_text(f"{port}\n")
        self.state_file.write_text(json.dumps({"pid": state.pid, "starttime": state.starttime, "port": port}) + "\n")
        deadline = time.monotonic() + 30
        while not self._healthy(state.url):
            if proc.poll() is not None:
                self.state_file.unlink(missing_ok=True)
                return None
            if time.monotonic() > deadline:
                self.down()
                raise LocalCloudError(f"local EC2 endpoint did not start on {state.url}; see {self.log_file}")
            time.sleep(0.05)
        return state.url

    def down(self) -> bool:
        """Stop the server; True if one was running."""
        state = self.state()
        if state is None:
            self.state_file.unlink(missing_ok=True)
            return False
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(state.pid, state.starttime):
            if time.monotonic() > deadline:
                os.kill(state.pid, signal.SIGKILL)
                deadline += 5
            try:
                os.waitpid(state.pid, os.WNOHANG)  # our own child when started by this process
            except ChildProcessError:
                pass
            time.sleep(0.05)
        self.state_file.unlink(missing_ok=True)
        return True

    def forget_state(self) -> None:
        """The next start begins with an empty EC2 (images still come from the layer store)."""
        self.snapshot_file.unlink(missing_ok=True)

    def _last_port(self) -> int:
        try:
            return int(self.port_file.read_text())
        except (OSError, ValueError):
            return DEFAULT_PORT


    def _healthy(self, url: str) -> bool:
        """Our endpoint answers at `url`. Another data dir's endpoint may answer there as well: two
        local clouds on one machine (a second data dir, tests) can race for the same free port, and
        the loser must not take the winner's EC2 for its own."""
        try:
            with urllib.request.urlopen(f"{url}{HEALTH_PATH}", timeout=2) as answer:
                return answer.read() == health_answer(self.dir.parent)
        except OSError:
            return False


def health_answer(data_dir: Path) -> bytes:
    """What the endpoint of `data_dir` answers on HEALTH_PATH: which local cloud it is."""
    return f"ok {Path(data_dir).resolve()}\n".encode()


def _pick_port(preferred: int) -> int:
    """The same port as last time when free (a stable URL for clients' configuration), else any free
    one. Probed as the server binds it (SO_REUSEADDR): the last endpoint's closed connections may
    still be in TIME_WAIT, which does not keep the server from listening."""
    for port in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise LocalCloudError("no free TCP port on 127.0.0.1 for the local EC2 endpoint")
