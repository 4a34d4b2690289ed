#!/usr/bin/env python3
"""Start-up: what the front door costs before any work, against bare-interpreter references.

Each command runs as a fresh process from the project directory (no cloud settings, so
nothing can reach an endpoint); runs alternate across the commands and the table gives
medians, the time beyond `python -c pass`, and the ratio to `python -c "import boto3,
paramiko"` (what every command would pay if tasks.py imported the SDKs eagerly);
`python -c "import invoke"` is the floor of any invoke command. One more
run of each under `python -X importtime` lists which heavy modules it loads: boto3,
botocore, paramiko, cryptography, pydantic, jinja2 and yaml must stay out of the commands
that only list or describe tasks.

    python3 bench/startup.py [--runs 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REFERENCES = {"python -c pass": ["-c", "pass"], "import invoke": ["-c", "import invoke"],
              "import boto3, paramiko": ["-c", "import boto3, paramiko"]}
COMMANDS = {
    "invoke --list": ["-m", "invoke", "--list"],
    "invoke --help bake": ["-m", "invoke", "--help", "bake"],
    "invoke bake --help": ["-m", "invoke", "bake", "--help"],
    "invoke --help launch": ["-m", "invoke", "--help", "launch"],
    "invoke launch --help": ["-m", "invoke", "launch", "--help"],
}
HEAVY = ("boto3", "botocore", "paramiko", "cryptography", "pydantic", "jinja2", "yaml", "moto")
HELP_MARK = "Usage: inv[oke]"


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INVOKE_BAKERY_", "AWS_", "BAKERY_")) and k != "PYTHONPROFILEIMPORTTIME"}
    return env


def run(argv: list[str], env: dict, importtime: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), *argv]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, proc


def heavy_imports(stderr: str) -> dict[str, float]:
    """Heavy packages loaded, each with its largest cumulative import time (seconds; a package
    pulled in by another one overlaps it)."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
        if m and m.group(2).split(".")[0] in HEAVY:
            top = m.group(2).split(".")[0]
            found[top] = max(found.get(top, 0.0), int(m.group(1)) / 1e6)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    env = clean_env()
    everything = {**REFERENCES, **COMMANDS}
    walls: dict[str, list[float]] = {name: [] for name in everything}
    last: dict[str, subprocess.CompletedProcess] = {}
    for i in range(args.runs):
        for name, argv in everything.items():
            wall, last[name] = run(argv, env)
            walls[name].append(wall)
        print(f"run {i + 1}/{args.runs}: " + "  ".join(f"{k} {v[-1]:.3f}" for k, v in walls.items()),
              file=sys.stderr)
    heavy = {name: heavy_imports(run(argv, env, importtime=True)[1].stderr) for name, argv in everything.items()}

    med = {name: statistics.median(v) for name, v in walls.items()}
    base, sdk = med["python -c pass"], med["import boto3, paramiko"]
    rows = {}
    for name in everything:
        proc = last[name]
        rows[name] = {
            "median_s": round(med[name], 3), "runs_s": [round(x, 3) for x in walls[name]],
            "beyond_python_s": round(med[name] - base, 3), "ratio_to_sdk_import": round(med[name] / sdk, 2),
            "exit": proc.returncode, "heavy_modules_s": {k: round(v, 3) for k, v in heavy[name].items()},
        }
        if name in COMMANDS and "help" in name:
            rows[name]["prints_help"] = HELP_MARK in proc.stdout
            if not rows[name]["prints_help"]:
                rows[name]["output"] = (proc.stderr.strip().splitlines() or [""])[-1][:120]
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
              "python": platform.python_version(), "runs": args.runs, "commands": rows}

    print(f"\nstart-up, {args.runs} alternating runs, {result['machine']}, python {result['python']}, {result['date']}")
    print(f"  {'':24}{'median':>8}{'beyond':>9}{'/ SDK':>7}   heavy packages loaded (largest cumulative import, s)")
    for name, r in rows.items():
        mods = ", ".join(f"{k} {v:.3f}" for k, v in r["heavy_modules_s"].items()) or "none"
        note = ""
        if r.get("prints_help") is False:
            note = f"  [no help, exit {r['exit']}: {r['output']}]"
        print(f"  {name:24}{r['median_s']:>7.3f}s{r['beyond_python_s']:>8.3f}s{r['ratio_to_sdk_import']:>7.2f}   "
              f"{mods}{note}")
    lean = [n for n in COMMANDS if not set(rows[n]["heavy_modules_s"]) & {"boto3", "botocore", "paramiko", "pydantic"}]
    print(f"  without boto3/botocore/paramiko/pydantic: {', '.join(lean) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
