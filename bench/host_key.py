#!/usr/bin/env python3
"""What pinning the builder's host key from its console costs (issue 18 item 5): one small recipe
on the local cloud, baked through the command line with `--force` in two ways alternating in the
same invocation:

  injected  `builder.host_key: injected` (the default): a key generated here travels in the
            builder's user data; SSH is tried as soon as the builder runs
  console   `builder.host_key: console`: the builder makes its own keys; bakery reads them from
            its console output (GetConsoleOutput) before the first connection: nothing secret in
            the user data

Reported: the median bake (the manifest's `seconds`) of each, the difference, and the stages that
differ (reading the console; SSH; cloud-init, which a console-pinned bake has mostly waited for
already, since cloud-init prints the keys as its first boot ends).

    python3 bench/host_key.py [--runs 5] [--json out.json]   # root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.localcloud import bake_json, private_local_cloud  # noqa: E402

RECIPE = """\
source:
  filter: {{name: "debian-12-amd64-*", owners: ["136693071363"]}}
builder:
  ssh: {{user: admin, timeout: 60}}
  host_key: {mode}
steps:
  - {{name: write marker, shell: echo baked > /etc/bakery-marker}}
"""
STAGES = ("wait for builder to run", "read host key from console", "wait for SSH", "wait for cloud-init")


def run_bake(env: dict, recipes: Path, mode: str) -> tuple[float, dict]:
    (recipes / "hk.yaml").write_text(RECIPE.format(mode=mode))
    return bake_json(env, "hk", "--force", timeout=600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="bakes of each kind (alternating)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {"injected": [], "console": []}
    with private_local_cloud("bakery-bench-hostkey-") as (work, env):
        recipes = work / "recipes"
        recipes.mkdir()
        env["INVOKE_BAKERY_RECIPES_DIR"] = str(recipes)
        run_bake(env, recipes, "injected")  # warm: the endpoint up, the base image made
        for i in range(args.runs):
            for mode in ("injected", "console"):
                wall, manifest = run_bake(env, recipes, mode)
                stages = {name: manifest["stages"].get(name) for name in STAGES}
                if (stages["read host key from console"] is None) != (mode == "injected"):
                    raise SystemExit(f"run {i + 1} {mode}: stages {manifest['stages']}")
                runs[mode].append({"wall_s": round(wall, 3), "bake_s": manifest["seconds"], "stages_s": stages})
                print(f"run {i + 1}/{args.runs} {mode:8} bake {manifest['seconds']:6.2f}s "
                      f"({', '.join(f'{k} {v:.2f}s' for k, v in stages.items() if v is not None)})", file=sys.stderr)

    def med(mode: str, pick) -> float:
        return round(statistics.median(pick(r) for r in runs[mode]), 3)

    bake = {mode: med(mode, lambda r: r["bake_s"]) for mode in runs}
    stages = {mode: {name: med(mode, lambda r, n=name: r["stages_s"][n] or 0.0) for name in STAGES} for mode in runs}
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "runs": args.runs,
              "median_bake_s": bake, "extra_s": round(bake["console"] - bake["injected"], 3),
              "ratio_console_over_injected": round(bake["console"] / bake["injected"], 3),
              "median_stages_s": stages, "runs_detail": runs}
    print(f"\nbuilder host key, {args.runs} alternating bakes, {result['machine']}, {result['date']}:")
    for mode in runs:
        print(f"  {mode:8} bake {bake[mode]:6.2f}s  " + ", ".join(f"{k} {v:.2f}s" for k, v in stages[mode].items()))
    print(f"  pinning from the console adds {result['extra_s']:+.2f}s ({result['ratio_console_over_injected']:.2f} x)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
