#!/usr/bin/env python3
"""A local instance's boot and footprint: RunInstances to sshd's banner, and memory once idle.

Instances of the Debian base image (what every baked image stacks on) are launched one after
another on a private local cloud with plain boto3, as any client would; each is timed from the
RunInstances call to the first SSH banner read through its network namespace. Once all of them
have finished booting (cloud-init done, systemd's start-up over) and sat idle, each one's memory is
the proportional set size (PSS: shared pages split between their users) of every process in its
cgroup plus any helper process of its own (slirp4netns). (Not the cgroup's memory counters: the
memory controller is cgroup v1 here, outside the hierarchies an instance's cgroup is made in.)

The reference, in the same invocation: the host's own sshd started in a fresh network namespace
(no init, no cloud-init, nothing else), timed to its banner the same way, and its PSS. So the
ratios say what a whole machine costs over the one daemon a bake needs.

Needs root; uses its own data dir and endpoint (sharing the cached base image) and removes every
instance and namespace it made.

    python3 bench/instance_boot.py [--runs 5] [--idle 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakery.config.settings import default_data_dir  # noqa: E402
from bakery.local.base import share_base  # noqa: E402
from bakery.local.cloud import LocalCloud  # noqa: E402
from bakery.local.netns import run_in  # noqa: E402
from bakery.local.sandbox import Sandbox  # noqa: E402

MiB = 1024 * 1024


def banner_after(t0: float, connect, timeout: float = 60.0) -> float:
    """Seconds from t0 until connect() yields a socket that sends an SSH banner."""
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        try:
            sock = connect()
        except OSError:
            time.sleep(0.01)
            continue
        try:
            sock.settimeout(5)
            if sock.recv(64).startswith(b"SSH-"):
                return time.monotonic() - t0
        except OSError:
            pass
        finally:
            sock.close()
        time.sleep(0.01)
    raise TimeoutError("no SSH banner")


def pss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue  # gone meanwhile
    return total


def cgroup_pids(cg: Path) -> list[int]:
    return [int(p) for f in cg.rglob("cgroup.procs") for p in f.read_text().split()]


def instance_memory(box: Sandbox) -> tuple[int, int]:
    """(PSS of its processes, how many), in bytes."""
    cgroup = Path((box.dir / "pids" / "cgroups").read_text().split()[0])
    pids = cgroup_pids(cgroup)
    helper = box.dir / "pids" / "slirp"
    if helper.exists():
        pids.append(int(helper.read_text().split()[0]))
    return pss(pids), len(pids)


def bare_sshd(tmp: Path) -> tuple[float, int]:
    """(seconds to banner, PSS) of the host's sshd alone in a fresh network namespace."""
    ns = f"bench-sshd-{os.getpid()}"
    key = tmp / "hostkey"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        Path("/run/sshd").mkdir(exist_ok=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null",
                                 "-h", str(key), "-p", "22", "-o", "ListenAddress=127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        took = banner_after(t0, lambda: run_in(ns, lambda: socket.create_connection(("127.0.0.1", 22), 1)))
        time.sleep(0.5)
        return took, pss([proc.pid])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle before memory is read")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import boto3

    boots, memory, procs, bare_boots, bare_pss = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bakery-boot-") as tmp:
        tmp = Path(tmp)
        share_base(tmp / "data", default_data_dir())  # the machine's cached base image
        cloud = LocalCloud(tmp / "data")
        try:
            url = cloud.up(log=lambda line: print(line, file=sys.stderr))
            image = cloud.ensure_base(log=lambda line: None)
            ec2 = boto3.client("ec2", endpoint_url=url, region_name="us-east-1", aws_access_key_id="local",
                               aws_secret_access_key="local")
            ids = []
            for i in range(args.runs):
                t0 = time.monotonic()
                iid = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1,
                                        MaxCount=1)["Instances"][0]["InstanceId"]
                ids.append(iid)
                boots.append(banner_after(t0, lambda: cloud.connect(iid, 22, 1)))
                took, mem = bare_sshd(tmp)
                bare_boots.append(took)
                bare_pss.append(mem)
                print(f"run {i + 1}/{args.runs}: instance {boots[-1]:.2f}s to sshd, bare sshd {took:.3f}s",
                      file=sys.stderr)
            for iid in ids:
                box = Sandbox.attach(iid, cloud.instances_dir)
                deadline = time.monotonic() + 120
                while "done" not in box.boot_status():
                    assert time.monotonic() < deadline, f"{iid} did not finish booting:\n{box.boot_log()}"
                    time.sleep(0.1)
            time.sleep(args.idle)
            for iid in ids:
                p, n = instance_memory(Sandbox.attach(iid, cloud.instances_dir))
                memory.append(p)
                procs.append(n)
            ec2.terminate_instances(InstanceIds=ids)
            ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={"Delay": 0.5, "MaxAttempts": 120})
        finally:
            cloud.down(purge=True)
            cloud.endpoint.down()

    boot, bare = statistics.median(boots), statistics.median(bare_boots)
    mem, ref = statistics.median(memory), statistics.median(bare_pss)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "runs": args.runs, "idle_s": args.idle,
              "boot_to_sshd_s": [round(x, 3) for x in boots], "bare_sshd_s": [round(x, 4) for x in bare_boots],
              "boot_to_sshd_median_s": round(boot, 3), "bare_sshd_median_s": round(bare, 4),
              "ratio_boot_over_bare_sshd": round(boot / bare, 1),
              "idle_pss_mib": [round(x / MiB, 1) for x in memory],
              "idle_processes": procs, "idle_pss_median_mib": round(mem / MiB, 1),
              "bare_sshd_pss_median_mib": round(ref / MiB, 1), "ratio_pss_over_bare_sshd": round(mem / ref, 1)}
    print(f"\nDebian base instance, local cloud, {args.runs} runs (medians)")
    print(f"  RunInstances -> sshd banner   {boot:8.2f} s   (bare sshd in a netns {bare:.3f} s)")
    print(f"  idle PSS                      {mem / MiB:8.1f} MiB ({statistics.median(procs)} processes; "
          f"bare sshd {ref / MiB:.1f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
