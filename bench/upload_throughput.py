#!/usr/bin/env python3
"""Upload throughput: bakery's SSHConnector.put against OpenSSH's scp and sftp on the same sshd.

Two payloads: one random file (50 MiB) and a tree of small files (2,000 files of 1-8 KiB in
20 directories, random sizes and bytes). OpenSSH: `scp` (OpenSSH 9 speaks SFTP underneath)
and `sftp -b` (batch mode), each through an established ControlMaster connection, so neither
pays a handshake; bakery: `SSHConnector.put` on its established connection (what an upload
step costs). Sources and copies live on tmpfs (/dev/shm) by default: the disk is shared with
other tenants and creating 2,000 files on it swings by seconds, which is not what is measured
here (`--dir` puts them elsewhere). Every copy is compared byte for byte with its source and
removed; runs alternate; medians, MiB/s and ratios.

    python3 bench/upload_throughput.py [--runs 5] [--mb 50] [--files 2000] [--dir /dev/shm]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_latency import control_master, private_sshd  # noqa: E402


def make_payloads(work: Path, mb: int, files: int) -> tuple[Path, Path]:
    big = work / "big.bin"
    with big.open("wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    tree = work / "tree"
    rng = random.Random(8)
    for i in range(files):
        path = tree / f"d{i % 20:02d}" / f"f{i:04d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randint(1024, 8192)))
    return big, tree


def same(src: Path, copy: Path) -> bool:
    if src.is_file():
        return copy.is_file() and filecmp.cmp(src, copy, shallow=False)
    cmp = filecmp.dircmp(src, copy)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(src, copy, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(same(src / d, copy / d) for d in cmp.common_dirs)


def timed(upload, src: Path, dest: Path) -> float:
    t0 = time.perf_counter()
    upload(src, dest)
    seconds = time.perf_counter() - t0
    if not same(src, dest):
        raise SystemExit(f"{dest} differs from {src}")
    shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--dir", default="/dev/shm", help="where sources and copies go")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    with private_sshd("bakery-upload-") as server, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        data = Path(tmp)
        big, tree = make_payloads(data, args.mb, args.files)
        conn = server.connector()
        with control_master(server) as reuse:
            tools = uploaders(server.options("-P") + reuse, conn)
            for run in range(args.runs):
                for payload in (big, tree):
                    for tool, upload in tools.items():
                        dest = data / f"dest-{tool}-{run}"
                        times.setdefault((payload.name, tool), []).append(timed(upload, payload, dest))
        conn.close()
        tree_bytes = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    report(times, args, big_bytes=args.mb << 20, tree_bytes=tree_bytes)


def uploaders(options: list[str], conn) -> dict:
    def scp(src: Path, dest: Path) -> None:
        subprocess.run(["scp", "-q", *options, *(["-r"] if src.is_dir() else []), str(src), f"root@127.0.0.1:{dest}"],
                       check=True)

    def sftp(src: Path, dest: Path) -> None:
        batch = f"put {'-r ' if src.is_dir() else ''}{src} {dest}\n"
        subprocess.run(["sftp", "-q", *options, "-b", "-", "root@127.0.0.1"], input=batch.encode(), check=True,
                       stdout=subprocess.DEVNULL)

    def bakery(src: Path, dest: Path) -> None:
        conn.put(src, str(dest), mode=None, owner=None, sudo=False)

    return {"scp": scp, "sftp": sftp, "bakery": bakery}


def report(times: dict[tuple[str, str], list[float]], args, big_bytes: int, tree_bytes: int) -> None:
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"{args.runs} alternating runs, same sshd on 127.0.0.1, OpenSSH through a ControlMaster, files in {args.dir}")
    for payload, label, size in (("big.bin", f"{args.mb} MiB file", big_bytes),
                                 ("tree", f"{args.files} small files ({tree_bytes / 2**20:.1f} MiB)", tree_bytes)):
        print(f"  {label}:")
        for tool in ("scp", "sftp", "bakery"):
            s = med[(payload, tool)]
            runs = ", ".join(f"{t:.3f}" for t in times[(payload, tool)])
            print(f"    {tool:7s} {s:7.3f} s  {size / 2**20 / s:7.1f} MiB/s   ({runs})")
    best = min(med[("big.bin", "scp")], med[("big.bin", "sftp")])
    print(f"  big file: bakery throughput / best OpenSSH: {best / med[('big.bin', 'bakery')]:.2f}  (target >= 0.8)")
    print(f"  small files: bakery time / scp time: {med[('tree', 'bakery')] / med[('tree', 'scp')]:.2f}  "
          f"(target < 1), / sftp time: {med[('tree', 'bakery')] / med[('tree', 'sftp')]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "runs": args.runs,
            "median_s": {f"{payload} {tool}": round(s, 4) for (payload, tool), s in med.items()},
            "big_throughput_ratio_bakery_over_best_openssh": round(best / med[("big.bin", "bakery")], 3),
            "small_files_ratio_bakery_over_scp": round(med[("tree", "bakery")] / med[("tree", "scp")], 3)},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
