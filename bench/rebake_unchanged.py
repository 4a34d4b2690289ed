#!/usr/bin/env python3
"""Unchanged rebake: `invoke bake --recipe X` when an image with the same inputs exists.

One real bake first (moto server + a real sshd as the builder, tests/support.py), then
alternating runs of three commands, each a fresh process in the same environment:
`python -c pass` (interpreter start-up), `python -m invoke --list` (start-up plus invoke
and tasks.py) and `python -m invoke bake --recipe bench --json` (the skip). Every skip must
report the first bake's image, and no instance may appear in moto after the first bake
(no builder launched: no RunInstances). "Work beyond start-up" is the bake's median
minus each reference's median.

    python3 bench/rebake_unchanged.py [--runs 7] [--json out.json] [--profile out.txt]

--profile also runs one skip under pyinstrument (installed in the venv) and writes its
text report, for what remains.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

TARGET_S = 0.5
REFERENCES = {"python -c pass": ["-c", "pass"], "invoke --list": ["-m", "invoke", "--list"]}
BAKE = ["-m", "invoke", "bake", "--recipe", "bench", "--json"]


def timed(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc


def instance_count(ec2) -> int:
    return sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--profile", type=Path, help="profile one skip with pyinstrument; text report here")
    args = ap.parse_args()

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    moto = MotoServer()
    host = None
    try:
        with tempfile.TemporaryDirectory(prefix="bakery-bench-") as tmp:
            work = Path(tmp)
            ec2 = moto.client()
            seed = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]
            ec2.create_image(InstanceId=seed["InstanceId"], Name="test-debian-12-amd64-20260101")
            ec2.terminate_instances(InstanceIds=[seed["InstanceId"]])
            host = FakeBuilderHost(moto, work / "builder")
            write_recipe(work / "recipes", "bench", recipe_text(host.port, "  - name: hi\n    shell: echo hi\n"))
            env = {**os.environ, "INVOKE_BAKERY_ENDPOINT_URL": moto.url,
                   "INVOKE_BAKERY_RECIPES_DIR": str(work / "recipes"), "INVOKE_BAKERY_STATE_DIR": str(work / "state"),
                   "INVOKE_BAKERY_CLOUD": "aws"}
            env.pop("AWS_PROFILE", None)

            first_wall, proc = timed(BAKE, env)
            first = json.loads(proc.stdout)
            if first["skipped"]:
                raise SystemExit("the first bake skipped: the moto server is not fresh")
            instances = instance_count(ec2)

            walls: dict[str, list[float]] = {name: [] for name in [*REFERENCES, "invoke bake (skip)"]}
            inside: list[float] = []
            for i in range(args.runs):
                for name, argv in REFERENCES.items():
                    walls[name].append(timed(argv, env)[0])
                wall, proc = timed(BAKE, env)
                manifest = json.loads(proc.stdout)
                if not manifest["skipped"] or manifest["ami_id"] != first["ami_id"]:
                    raise SystemExit(f"run {i + 1}: expected a skip to {first['ami_id']}, got {manifest}")
                walls["invoke bake (skip)"].append(wall)
                inside.append(manifest["seconds"])
                print(f"run {i + 1}/{args.runs}: " + "  ".join(f"{k} {v[-1]:.3f}s" for k, v in walls.items()),
                      file=sys.stderr)
            if instance_count(ec2) != instances or len(host.served) != 1:
                raise SystemExit("a skipped bake launched an instance")

            if args.profile:
                subprocess.run([sys.executable, "-m", "pyinstrument", "--show-all", "-o", str(args.profile), *BAKE],
                               cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    finally:
        if host:
            host.close()
        stop_process(moto.proc)

    med = {name: statistics.median(v) for name, v in walls.items()}
    bake = med["invoke bake (skip)"]
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
        "runs": args.runs, "first_bake_wall_s": round(first_wall, 3),
        "wall_s": {k: [round(x, 3) for x in v] for k, v in walls.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "beyond_python_s": round(bake - med["python -c pass"], 3),
        "beyond_invoke_list_s": round(bake - med["invoke --list"], 3),
        "bake_own_seconds_median": round(statistics.median(inside), 3),
        "ratio_bake_over_invoke_list": round(bake / med["invoke --list"], 2),
        "no_run_instances": True,
    }
    print(f"\nunchanged rebake, {args.runs} alternating runs, {result['machine']}, {result['date']}")
    print(f"  {'':24}{'median':>9}   runs")
    for name, values in walls.items():
        print(f"  {name:24}{med[name]:>8.3f}s   " + " ".join(f"{x:.3f}" for x in values))
    print(f"  work beyond python start-up: {result['beyond_python_s']:.3f}s; beyond invoke --list: "
          f"{result['beyond_invoke_list_s']:.3f}s (target < {TARGET_S}s); bake/list ratio "
          f"{result['ratio_bake_over_invoke_list']:.2f}")
    print(f"  bakery's own clock (Bake() to skip, manifest.seconds): {result['bake_own_seconds_median']:.3f}s; "
          "no instance launched")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
