#!/usr/bin/env python3
"""Bake overhead: bakery against Packer 1.6.6 amazon-ebs, same workload, same machine.

Workload (the Packer harness's default): N shell steps (`echo step $i`) plus one
file upload of M MiB. Runs alternate (Packer, bakery, Packer, bakery, ...) so both
see the same machine load; the table gives medians and the ratio bakery/Packer.

Packer runs through ../shared/bench/packer/run.sh (its own moto server and a
private sshd on loopback; clean shell, no physical-limit pass). bakery runs
`python -m invoke bake --force` against a fresh moto server and a real sshd that
becomes the builder (tests/support.py). Both wall times include process start-up.

    python3 bench/bake_vs_packer.py [--runs 3] [--steps 20] [--mb 50]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import FakeBuilderHost, MotoServer, recipe_text, stop_process, write_recipe  # noqa: E402

os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
PACKER_HARNESS = ROOT.parent / "shared" / "bench" / "packer" / "run.sh"


def packer_run(steps: int, mb: int, out: Path) -> float:
    proc = subprocess.run([str(PACKER_HARNESS), "-P", "-r", "1", "-n", str(steps), "-m", str(mb), "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    match = re.search(r"MEDIAN packer build wall time: ([\d.]+) s", proc.stdout)
    if proc.returncode != 0 or not match:
        raise SystemExit(f"packer harness failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return float(match.group(1))


def bakery_run(steps: int, mb: int, work: Path) -> tuple[float, dict]:
    moto = MotoServer()
    host = None
    try:
        ec2 = moto.client()
        seed = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        ec2.create_image(InstanceId=seed, Name="test-debian-12-amd64-20260101")
        ec2.terminate_instances(InstanceIds=[seed])
        host = FakeBuilderHost(moto, work / "builder")
        recipes = work / "recipes"
        payload = recipes / "files" / "payload.bin"
        payload.parent.mkdir(parents=True, exist_ok=True)
        payload.write_bytes(os.urandom(mb * 1024 * 1024))
        body = "".join(f"  - name: step {i}\n    shell: echo step {i}\n" for i in range(1, steps + 1))
        body += "  - name: upload\n    upload: {source: files/payload.bin, dest: /srv/uploaded.bin}\n"
        write_recipe(recipes, "bench", recipe_text(host.port, body))
        env = {**os.environ, "INVOKE_BAKERY_ENDPOINT_URL": moto.url, "INVOKE_BAKERY_RECIPES_DIR": str(recipes),
               "INVOKE_BAKERY_STATE_DIR": str(work / "state"), "INVOKE_BAKERY_CLOUD": "aws",
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "invoke", "bake", "--recipe", "bench", "--force", "--json"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"bakery bake failed:\n{proc.stderr[-3000:]}")
        uploaded = host.fs / "srv" / "uploaded.bin"
        if hashlib.sha256(uploaded.read_bytes()).digest() != hashlib.sha256(payload.read_bytes()).digest():
            raise SystemExit("bakery: uploaded file differs")
        return wall, json.loads(proc.stdout)
    finally:
        if host:
            host.close()
        stop_process(moto.proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not PACKER_HARNESS.exists():
        raise SystemExit(f"Packer harness not found at {PACKER_HARNESS}")

    packer, bakery, last = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
        for i in range(args.runs):
            packer.append(packer_run(args.steps, args.mb, Path(tmp) / f"packer{i}"))
            wall, last = bakery_run(args.steps, args.mb, Path(tmp) / f"bakery{i}")
            bakery.append(wall)
            print(f"run {i + 1}/{args.runs}: packer {packer[-1]:.3f}s  bakery {bakery[-1]:.3f}s", file=sys.stderr)

    pm, bm = statistics.median(packer), statistics.median(bakery)
    steps = [s["seconds"] for s in last["steps"]]
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
        "workload": f"{args.steps} shell steps + {args.mb} MiB upload",
        "runs": args.runs, "packer_wall_s": packer, "bakery_wall_s": [round(b, 3) for b in bakery],
        "packer_median_s": pm, "bakery_median_s": round(bm, 3), "ratio_bakery_over_packer": round(bm / pm, 3),
        "bakery_last_run_stage_s": last.get("stages", {}),
        "bakery_last_run_shell_step_median_s": statistics.median(steps[:-1]) if len(steps) > 1 else None,
        "bakery_last_run_upload_s": steps[-1] if steps else None,
    }
    print(f"\n{result['workload']}, {args.runs} alternating runs, {result['machine']}, {result['date']}")
    print(f"  {'':28}{'median':>10}   runs")
    print(f"  {'packer build (wall)':28}{pm:>9.3f}s   " + " ".join(f"{x:.3f}" for x in packer))
    print(f"  {'invoke bake (wall)':28}{bm:>9.3f}s   " + " ".join(f"{x:.3f}" for x in bakery))
    print(f"  ratio bakery/packer: {bm / pm:.2f}  (target for issue 8: <= 0.33)")
    print(f"  bakery last run: shell step median {result['bakery_last_run_shell_step_median_s']:.3f}s, "
          f"upload {result['bakery_last_run_upload_s']}s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
