#!/usr/bin/env python3
"""`invoke rebake --force --jobs 3` against `--jobs 1` on the local cloud, alternating, in the same
invocation: the shipped recipes (base, and web, app, db layered on it) plus two of the test suite's
(tests/local/test_local_cloud.py's recipe, with its uploaded tree), every recipe baked every run.
Target (issue 17): --jobs 3 in at most 0.6 of --jobs 1's time. Each run is checked: every recipe
rebaked, each layer on the base image that run made.

Beside the wall times, the machine's busy CPU time over each run (all processes: bakery, the
endpoint, every sandbox's systemd, cloud-init, apt and dpkg; from /proc/stat) is reported, and
with it the floor no schedule can beat on this machine: the --jobs 3 run's busy CPU time over its
cores. When that floor is near the wall time, the bakes are bound by CPU, not by waiting.

    python3 bench/rebake_jobs.py [--runs 2] [--json out.json]    # root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.localcloud import private_local_cloud  # noqa: E402

TARGET = 0.6
TEST_RECIPE = """\
source:
  filter: {name: "debian-12-amd64-*", owners: ["136693071363"]}
builder:
  ssh: {user: admin, timeout: 60}
steps:
  - name: write marker
    shell: echo "baked by {{ recipe }}" > /etc/bakery-marker && echo "$(id -un) on $(hostname)"
  - name: upload tree
    upload: {source: files/tree, dest: /opt/tree, mode: "0644"}
"""


def cpu_busy_s() -> float:
    """Seconds of CPU the whole machine has been busy (not idle, not waiting on I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_rebake(jobs: int, env: dict) -> tuple[float, list[dict], float]:
    start, busy = time.perf_counter(), cpu_busy_s()
    done = subprocess.run([sys.executable, "-m", "invoke", "rebake", "--force", "--jobs", str(jobs), "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall, busy = time.perf_counter() - start, cpu_busy_s() - busy
    if done.returncode != 0:
        raise SystemExit(f"rebake --jobs {jobs} failed (rc={done.returncode}):\n{done.stderr[-3000:]}")
    rows = json.loads(done.stdout)
    if any(r["decision"] != "rebaked" for r in rows):
        raise SystemExit(f"rebake --jobs {jobs}: not every recipe was rebaked: {rows}")
    return wall, rows, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2, help="runs of each (alternating)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    walls: dict[int, list[float]] = {1: [], 3: []}
    busy: dict[int, list[float]] = {1: [], 3: []}
    with private_local_cloud("bakery-bench-jobs-") as (work, env):
        recipes = work / "recipes"
        shutil.copytree(ROOT / "recipes", recipes)
        for name in ("t1", "t2"):
            (recipes / f"{name}.yaml").write_text(TEST_RECIPE)
        (recipes / "files/tree/sub").mkdir(parents=True)
        (recipes / "files/tree/a.txt").write_text("a\n")
        (recipes / "files/tree/sub/b.txt").write_text("b\n")
        env["INVOKE_BAKERY_RECIPES_DIR"] = str(recipes)
        run_rebake(3, env)  # warm: the endpoint up, apt's lists fetched once, outside the measured runs
        for i in range(args.runs):
            for jobs in (1, 3):
                wall, rows, cpu = run_rebake(jobs, env)
                base = next(r["ami_id"] for r in rows if r["recipe"] == "base")
                layered = {r["recipe"] for r in rows} & {"web", "app", "db"}
                if len(layered) != 3:
                    raise SystemExit(f"run {i + 1}: the shipped tiers were not all baked: {rows}")
                walls[jobs].append(round(wall, 2))
                busy[jobs].append(round(cpu, 2))
                print(f"run {i + 1}/{args.runs} --jobs {jobs}: {wall:.1f}s, CPU busy {cpu:.1f}s "
                      f"({len(rows)} recipes, base {base})", file=sys.stderr)

    one, three = statistics.median(walls[1]), statistics.median(walls[3])
    ratio = round(three / one, 3)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "runs": args.runs,
              "recipes": ["base", "web", "app", "db", "t1", "t2"], "wall_s": {"jobs_1": walls[1], "jobs_3": walls[3]},
              "median_s": {"jobs_1": round(one, 2), "jobs_3": round(three, 2)}, "ratio_jobs3_over_jobs1": ratio,
              "target": TARGET}
    cores = os.cpu_count() or 1
    cpu3 = statistics.median(busy[3])
    result.update({"cpu_busy_s": busy, "median_cpu_busy_s": {"jobs_1": statistics.median(busy[1]), "jobs_3": cpu3},
                   "cpu_floor_s": round(cpu3 / cores, 2), "cpu_floor_ratio": round(cpu3 / cores / one, 3)})
    print(f"\nrebake --force of 6 recipes on the local cloud, {result['machine']}, {result['date']}: "
          f"--jobs 1 {one:.1f}s, --jobs 3 {three:.1f}s: ratio {ratio:.2f} (target <= {TARGET}); "
          f"CPU busy in --jobs 3 {cpu3:.1f}s: on {cores} cores no schedule beats {cpu3 / cores:.1f}s "
          f"({result['cpu_floor_ratio']:.2f} of --jobs 1)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
