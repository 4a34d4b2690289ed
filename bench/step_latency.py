#!/usr/bin/env python3
"""Per-step latency: bakery's SSH connector against OpenSSH with a ControlMaster connection.

Both run N trivial steps (`echo step $i`) on the same private sshd on 127.0.0.1 (own host
key, own authorized key, root's ~/.bashrc masked in a private mount namespace so neither
pays a slow shell start-up). OpenSSH: one `ssh -S ctl host cmd` per step over an
established master. bakery: one `SSHConnector.run` per step over its one connection
(what a recipe's shell step costs: one request to its persistent runner, which the first
step of each run starts). Runs alternate; medians of per-step times and the ratio.
The sshd and ControlMaster helpers here serve bench/upload_throughput.py too.

    python3 bench/step_latency.py [--steps 50] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakery.remote import keys  # noqa: E402
from bakery.remote.dial import Machine, Route, TcpDial  # noqa: E402
from bakery.remote.ssh import SSHConnector, Target  # noqa: E402
from tests.support import start_private_sshd, stop_process  # noqa: E402

@dataclass
class Server:
    """The private sshd, and how each client reaches it as root."""
    work: Path
    port: int
    login: keys.KeyPair
    host: keys.KeyPair

    def options(self, port_flag: str = "-p") -> list[str]:
        """OpenSSH client options (ssh takes -p, scp and sftp -P)."""
        return ["-i", str(self.work / "id"), port_flag, str(self.port), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.work}/known_hosts", "-o", "StrictHostKeyChecking=yes"]

    def connector(self) -> SSHConnector:
        conn = SSHConnector(Target(opener=TcpDial()(Machine("bench"), self.port, Route("host", "127.0.0.1")), user="root",
                                   login_key=self.login.paramiko_key(),
                                   host_key=self.host.public_openssh, label="bench"))
        conn.connect(timeout=10)
        return conn


@contextlib.contextmanager
def private_sshd(prefix: str):
    """A private sshd on 127.0.0.1 with fresh keys in a 0700 scratch dir, stopped by PID at exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o700)
        login, host = keys.generate("bench"), keys.generate("bench-host")
        login.write_private(work, "id")
        host.write_private(work, "host_key")
        (work / "authorized_keys").write_text(login.public_openssh + "\n")
        sshd, port = start_private_sshd(work)
        (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host.public_openssh}\n")
        try:
            yield Server(work, port, login, host)
        finally:
            sshd.kill()
            stop_process(sshd)


@contextlib.contextmanager
def control_master(server: Server):
    """An established OpenSSH master connection; yields the options (for ssh, scp or sftp) that reuse it."""
    reuse = ["-o", f"ControlPath={server.work}/ctl", "-o", "ControlMaster=no"]
    subprocess.run(["ssh", *server.options(), "-M", "-S", f"{server.work}/ctl", "-f", "-N", "root@127.0.0.1"],
                   check=True)
    try:
        yield reuse
    finally:
        subprocess.run(["ssh", *server.options(), *reuse, "-O", "exit", "root@127.0.0.1"], stderr=subprocess.DEVNULL)


def openssh(server: Server, steps: int) -> list[float]:
    times = []
    with control_master(server) as reuse:
        mux = server.options() + reuse
        for i in range(steps):
            t0 = time.perf_counter()
            subprocess.run(["ssh", *mux, "root@127.0.0.1", f"echo step {i}"], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
    return times


def bakery(server: Server, steps: int) -> list[float]:
    conn = server.connector()
    times = []
    try:
        for i in range(steps):
            t0 = time.perf_counter()
            res = conn.run(f"echo step {i}", env={}, timeout=60, sudo=False, on_output=lambda line: None)
            assert res.exit_status == 0
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    ours, theirs = [], []
    with private_sshd("bakery-steps-") as server:
        for _ in range(args.runs):
            theirs += openssh(server, args.steps)
            ours += bakery(server, args.steps)
    o, b = statistics.median(theirs) * 1000, statistics.median(ours) * 1000
    print(f"{args.steps} steps x {args.runs} alternating runs, same sshd on 127.0.0.1")
    print(f"  OpenSSH ControlMaster, one `ssh -S` per step: {o:.1f} ms median per step")
    print(f"  bakery SSHConnector.run per step:            {b:.1f} ms median per step")
    print(f"  ratio bakery/OpenSSH: {b / o:.2f}  (issue 8 target: <= 0.5)")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "steps": args.steps, "runs": args.runs,
            "openssh_ms_per_step": round(o, 2), "bakery_ms_per_step": round(b, 2),
            "ratio_bakery_over_openssh": round(b / o, 3)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
