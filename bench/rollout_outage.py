#!/usr/bin/env python3
"""What a client of the app tier sees while `invoke rollout` moves it to a new image: the shipped
`prod` environment baked and launched on the local cloud; a client in a web instance's namespace
asks the app's persistent front ENI (10.20.1.20:8080/health) every 10 ms (tests/support.py:
HEALTH_PROBE, each request given 0.1 s); the longest time from a
failed request to the next good one is the outage. Alternating in the same invocation:

  rollout    `invoke bake --recipe app --force` (a new image), then `invoke rollout --env prod
             --tier app`: a new standby, the interfaces' failover, the demoted active replaced
  failover   `invoke failover --env prod --tier app` alone: the move the rollout makes once

The reference is the failover: a rollout should cost clients no more than the move it contains.
Target (issue 17): under 1 s of outage per rollout. Every run is checked: the rollout moved the
app's two slots to the new image through its standby.

    python3 bench/rollout_outage.py [--runs 3] [--json out.json]  # root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.localcloud import private_local_cloud  # noqa: E402
from tests.support import HEALTH_PROBE, longest_outage  # noqa: E402

TARGET_S = 1.0
APP_FRONT = "10.20.1.20"


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"invoke {' '.join(args)} failed (rc={done.returncode}):\n{done.stderr[-3000:]}")
    return done


def web_netns(env: dict) -> str:
    """The network namespace of a running web instance of prod (where the app's clients are)."""
    import boto3

    from bakery.local.cloud import LocalCloud

    cloud = LocalCloud(Path(env["BAKERY_DATA_DIR"]))
    ec2 = boto3.client("ec2", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    found = [i for r in ec2.describe_instances(Filters=[
        {"Name": "tag:bakery:environment", "Values": ["prod"]}, {"Name": "tag:bakery:tier", "Values": ["web"]},
        {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"] for i in r["Instances"]]
    return cloud.netns(found[0]["InstanceId"])


def probed(netns: str, run) -> tuple[object, float, int]:
    """Run `run()` while the client probes the app's front ENI; its result, the outage, the probes."""
    probe = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", HEALTH_PROBE, APP_FRONT, "8080"],
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        result = run()
        time.sleep(1.0)
    finally:
        probe.kill()
        lines = probe.communicate()[0].splitlines()
    outage, probes = longest_outage(lines)
    return result, outage, probes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="rollouts and failovers (alternating)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {"rollout": [], "failover": []}
    with private_local_cloud("bakery-bench-rollout-") as (_, env):
        for recipe in ("web", "app", "db"):
            cli(env, "bake", "--recipe", recipe)
        cli(env, "launch", "--env", "prod")
        netns = web_netns(env)
        for i in range(args.runs):
            image = json.loads(cli(env, "bake", "--recipe", "app", "--force", "--json").stdout)["ami_id"]
            done, outage, probes = probed(netns, lambda: cli(env, "rollout", "--env", "prod", "--tier", "app",
                                                             "--json"))
            [app] = json.loads(done.stdout)["tiers"]
            if (app["how"], app["status"], app["image_id"]) != ("standby", "rolled", image):
                raise SystemExit(f"run {i + 1}: the app was not rolled through its standby: {app}")
            runs["rollout"].append({"outage_s": round(outage, 3), "probes": probes,
                                    "failover_s": app["moves"][1]["failover_s"],
                                    "rollout_s": sum(m["seconds"] for m in app["moves"])})
            _, outage, probes = probed(netns, lambda: cli(env, "failover", "--env", "prod", "--tier", "app"))
            runs["failover"].append({"outage_s": round(outage, 3), "probes": probes})
            print(f"run {i + 1}/{args.runs}: rollout outage {runs['rollout'][-1]['outage_s']:.3f}s "
                  f"(interfaces moved in {runs['rollout'][-1]['failover_s']:.3f}s), failover alone "
                  f"{outage:.3f}s", file=sys.stderr)

    rollout = statistics.median(r["outage_s"] for r in runs["rollout"])
    failover = statistics.median(r["outage_s"] for r in runs["failover"])
    worst = max(r["outage_s"] for r in runs["rollout"])
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "runs": args.runs,
              "median_outage_s": {"rollout": rollout, "failover": failover}, "worst_rollout_outage_s": worst,
              "ratio_rollout_over_failover": round(rollout / failover, 2) if failover else None,
              "target_s": TARGET_S, "runs_detail": runs}
    print(f"\nclient outage on the app's front ENI, {args.runs} runs, {result['machine']}, {result['date']}: "
          f"rollout median {rollout:.3f}s (worst {worst:.3f}s), failover alone {failover:.3f}s "
          f"(target < {TARGET_S}s: {'met' if worst < TARGET_S else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
