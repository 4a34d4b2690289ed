#!/usr/bin/env python3
"""The README Quickstart's first line, timed as a new user meets it: a fresh clone, a fresh data dir.

The line is read from README.md (the first command of the Quickstart block) and its `&&`-joined
commands are run one after another, each timed, in a fresh `git clone` of this repository's HEAD
with `BAKERY_DATA_DIR` pointing at an empty directory, so the local Debian base image is built as
on a fresh machine (the system packages are already installed here: `apt-get` finds nothing to do).
Afterwards `invoke local.status --json` counts the instances running and `invoke local.down
--purge` removes everything. Target (issue 13): under 2.5 minutes on 2 cores with prod's six
instances healthy.

    python3 bench/quickstart.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 150.0


def quickstart_line(readme: Path) -> str:
    text = readme.read_text()
    block = re.search(r"## Quickstart.*?```sh\n(.*?)```", text, re.S)
    if block is None:
        raise SystemExit(f"{readme}: no ```sh block under '## Quickstart'")
    return block.group(1).splitlines()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bakery-quickstart-") as tmp:
        clone, data = Path(tmp) / "clone", Path(tmp) / "data"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        data.mkdir()
        env = {**os.environ, "BAKERY_DATA_DIR": str(data)}
        line = quickstart_line(clone / "README.md")
        try:
            for command in line.split(" && "):
                t0 = time.monotonic()
                done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                steps.append({"command": command, "seconds": round(time.monotonic() - t0, 1)})
                print(f"{steps[-1]['seconds']:7.1f} s  {command}", file=sys.stderr)
                if done.returncode != 0:
                    raise SystemExit(f"`{command}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            status = json.loads(subprocess.run([".venv/bin/invoke", "local.status", "--json"], cwd=clone, env=env,
                                               capture_output=True, text=True, check=True).stdout)
            running = sum(1 for i in status.get("instances", []) if i.get("state") == "running")
        finally:
            subprocess.run([".venv/bin/invoke", "local.down", "--purge"], cwd=clone, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    total = round(sum(s["seconds"] for s in steps), 1)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "commit": head, "line": line,
              "steps": steps, "total_s": total, "instances_running": running, "target_s": TARGET_S}
    print(f"\nQuickstart line 1 on a fresh clone and data dir: {total:.1f} s, {running} instances running "
          f"(target < {TARGET_S:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
