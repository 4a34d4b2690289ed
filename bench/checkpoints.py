#!/usr/bin/env python3
"""What a checkpoint saves while iterating on a recipe: the shipped `db` recipe on the local cloud,
its last step changed before every bake, baked through the command line in two ways alternating
in the same invocation:

  full     `invoke bake --recipe db --no-cache`: every step runs (postgresql installed again)
  resumed  `invoke bake --recipe db`: the builder starts from the checkpoint kept after step 1
           (bakery/bake/checkpoints.py) and only the changed last step runs

The change is what an engineer iterating on the image does: an edit of the tuning file the last
step uploads (a new line each time), so every bake has new inputs and no bake is skipped. Each
run is checked: the full bake ran every step and resumed from nothing; the resumed one names its
checkpoint and ran only the last step. `base` (the layer below) is baked once before the runs
and found unchanged by every run (both kinds pay that lookup). Target (issue 17): a resumed
bake takes at most 25 % of a full one. The ratio is of the bake's own clock (the manifest's
`seconds`, as row 12 measures a bake), which leaves out what both kinds pay alike and neither
bake does: the command's start and the lookup of `base`; the ratio of the commands' wall times
is reported beside it.

    python3 bench/checkpoints.py [--runs 3] [--json out.json]  # root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.localcloud import bake_json, private_local_cloud  # noqa: E402

TARGET = 0.25
TUNING = Path("recipes/files/db/10-tuning.conf")


def run_bake(env: dict, *flags: str) -> tuple[float, dict]:
    return bake_json(env, "db", *flags)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="bakes of each kind (alternating)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {"full": [], "resumed": []}
    with private_local_cloud("bakery-bench-checkpoints-") as (work, env):
        project = work / "project"
        for part in ("recipes", "envs", "userdata"):
            shutil.copytree(ROOT / part, project / part)
        shutil.copy(ROOT / "invoke.yaml", project / "invoke.yaml")
        env["INVOKE_BAKERY_PROJECT_DIR"] = str(project)
        env.pop("INVOKE_BAKERY_CHECKPOINT_AFTER", None)
        tuning = project / TUNING
        original = tuning.read_text()
        edits = 0

        def change_last_step() -> None:
            nonlocal edits
            edits += 1
            tuning.write_text(original + f"# bench edit {edits}\nlog_autovacuum_min_duration = {edits}s\n")

        _, first = run_bake(env)  # base and db, keeping db's checkpoint; brings the local cloud up
        if not first["checkpoints"]:
            raise SystemExit(f"the first bake kept no checkpoint: {first['steps']}")
        for i in range(args.runs):
            for kind, flags in (("full", ("--no-cache",)), ("resumed", ())):
                change_last_step()
                wall, manifest = run_bake(env, *flags)
                statuses = [s["status"] for s in manifest["steps"]]
                resumed = manifest["resumed_from"]
                if kind == "full" and (resumed or statuses != ["ok"] * len(statuses)):
                    raise SystemExit(f"run {i + 1} full: resumed {resumed}, steps {statuses}")
                if kind == "resumed" and (not resumed or statuses[:-1] != ["cached"] * (len(statuses) - 1)
                                          or statuses[-1] != "ok"):
                    raise SystemExit(f"run {i + 1} resumed: resumed {resumed}, steps {statuses}")
                runs[kind].append({"wall_s": round(wall, 3), "bake_s": manifest["seconds"],
                                   "steps": {s["name"]: [s["status"], s["seconds"]] for s in manifest["steps"]},
                                   "stages_s": manifest["stages"], "resumed_from": resumed, "ami": manifest["ami_id"]})
                print(f"run {i + 1}/{args.runs} {kind:8} wall {wall:6.2f}s bake {manifest['seconds']:6.2f}s "
                      f"steps {statuses}", file=sys.stderr)

    def med(kind: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[kind]), 3)

    ratio = round(med("resumed", "bake_s") / med("full", "bake_s"), 3)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "runs": args.runs, "recipe": "db",
        "median_wall_s": {"full": med("full", "wall_s"), "resumed": med("resumed", "wall_s")},
        "median_bake_s": {"full": med("full", "bake_s"), "resumed": med("resumed", "bake_s")},
        "ratio_resumed_over_full": ratio,
        "ratio_wall": round(med("resumed", "wall_s") / med("full", "wall_s"), 3),
        "target": TARGET, "runs_detail": runs,
    }
    print(f"\nchanging the last step of the shipped `db` recipe, {args.runs} alternating runs, {result['machine']}, "
          f"{result['date']}")
    print(f"  full bake (--no-cache)    {result['median_wall_s']['full']:6.2f}s wall, "
          f"{result['median_bake_s']['full']:6.2f}s bake")
    print(f"  resumed from checkpoint   {result['median_wall_s']['resumed']:6.2f}s wall, "
          f"{result['median_bake_s']['resumed']:6.2f}s bake")
    print(f"  ratio of the bakes {ratio:.3f} (target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}); "
          f"of the commands' wall times {result['ratio_wall']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
