#!/usr/bin/env python3
"""Ready-for-service lag on the local cloud: baked image against bootstrapping at boot.

The same `web` recipe, launched two ways with the same per-environment user data and
the same health check (HTTP 200 on :80/health):
  baked      the recipe's baked image ("combined" strategy: image + user data)
  bootstrap  the recipe's source image, its steps run by cloud-init at first boot
The time is from the RunInstances call to the first passing health check, as
`invoke launch` reports it. Runs alternate; the table gives medians and the ratio.
Needs root (the local cloud); uses its own data dir and endpoint, sharing the cached
base image, and destroys every instance it made.

    python3 bench/ready_lag.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakery.bake.run import bake  # noqa: E402
from bakery.cloud.connect import open_cloud  # noqa: E402
from bakery.launch.run import launch  # noqa: E402
from bakery.config.settings import default_data_dir  # noqa: E402
from bakery.local.base import share_base  # noqa: E402
from bakery.local.cloud import LocalCloud  # noqa: E402
from bakery.progress import Reporter  # noqa: E402
from bakery.config.settings import Settings  # noqa: E402

# web in a public subnet, checked from the internet as its users would reach it
ENV = """\
network:
  vpc: {{cidr: 10.0.0.0/16}}
  subnets: {{web: {{cidr: 10.0.1.0/24, az: us-east-1a, public: true}}}}
  security_groups: {{web: {{ingress: [{{protocol: tcp, ports: 80, cidr: 0.0.0.0/0}}]}}}}
  internet_gateway: true
  route_tables: {{public: {{subnets: [web], routes: [{{cidr: 0.0.0.0/0, internet_gateway: true}}]}}}}
tiers:
  web:
    image: {{recipe: web}}
    strategy: {strategy}
    interfaces: [{{device_index: 0, subnet: web, security_groups: [web]}}]
    user_data:
      parts: [web.yaml.j2]
      variables: {{server_name: bench.example.com, app_upstream: "10.0.2.10:8080"}}
    health_check: {{type: http, port: 80, path: /health, address: public_ip, timeout: 300}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bakery-lag-") as tmp:
        tmp = Path(tmp)
        share_base(tmp / "data", default_data_dir())  # the machine's cached base image
        envs = tmp / "envs"
        envs.mkdir()
        for strategy in ("combined", "bootstrap"):
            (envs / f"lag-{strategy}.yaml").write_text(ENV.format(strategy=strategy))
        settings = Settings(cloud="local", project_dir=ROOT, data_dir=tmp / "data", envs_dir=envs,
                            state_dir=tmp / "state")
        cloud = LocalCloud(settings.local_data)
        try:
            cloud.up(log=lambda line: print(line, file=sys.stderr))
            manifest = bake(settings, "web", {}, report=Reporter(quiet=True))
            print(f"web image {manifest.ami_id} ({'unchanged' if manifest.skipped else 'baked'})", file=sys.stderr)
            ec2 = open_cloud(settings).ec2
            times: dict[str, list[float]] = {"combined": [], "bootstrap": []}
            for i in range(args.runs):
                for strategy in times:
                    report = launch(settings, f"lag-{strategy}", report=Reporter(quiet=True))
                    (inst,) = report.instances
                    times[strategy].append(inst.ready_s)
                    ec2.client.terminate_instances(InstanceIds=[inst.instance_id])  # destroys the sandbox
                print(f"run {i + 1}/{args.runs}: baked {times['combined'][-1]:.2f}s  "
                      f"bootstrap {times['bootstrap'][-1]:.2f}s", file=sys.stderr)
        finally:
            cloud.down()

    baked, boot = statistics.median(times["combined"]), statistics.median(times["bootstrap"])
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.machine()} {os.cpu_count()} cpu", "runs": args.runs,
              "baked_s": times["combined"], "bootstrap_s": times["bootstrap"],
              "baked_median_s": baked, "bootstrap_median_s": boot, "ratio_baked_over_bootstrap": round(baked / boot, 3)}
    print(f"\nlaunch -> healthy (HTTP 200 :80/health), web recipe, local cloud, {args.runs} alternating runs")
    print(f"  {'baked image + user data':28}{baked:>8.2f}s   " + " ".join(f"{x:.2f}" for x in times["combined"]))
    print(f"  {'bootstrap at boot':28}{boot:>8.2f}s   " + " ".join(f"{x:.2f}" for x in times["bootstrap"]))
    print(f"  ratio baked/bootstrap: {baked / boot:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
