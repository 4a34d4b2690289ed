"""The tests' own moto server (tests/moto_serve.py) ends with the process that started it: a test
run killed mid-way (Ctrl-C twice, SIGKILL, a crashed helper script) leaves no server behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.support import ROOT

STARTER = ("import os, sys; from tests.support import MotoServer; server = MotoServer(); "
           "print(server.proc.pid, flush=True); os._exit(1)")  # gone without stopping it


def test_a_moto_server_ends_when_the_process_that_started_it_is_killed():
    started = subprocess.run([sys.executable, "-c", STARTER], cwd=ROOT, capture_output=True, text=True, timeout=60)
    pid = int(started.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)
    assert not alive, f"moto server {pid} outlived the process that started it"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
