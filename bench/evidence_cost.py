#!/usr/bin/env python3
"""What an image's evidence costs a bake: the shipped `web` recipe baked on the local cloud through
the command line (`invoke bake --recipe web --force --json`), alternating between a bake with the
vulnerability gate and signed provenance (an OSV feed and a signing key in the settings) and the
same bake without them, in the same invocation.

The SBOM is collected by every bake (it is how `diff` and the freshness check see an image), so its
cost is the `collect SBOM` stage of the bakes with evidence; the gate and the signature are their
own stages (`vulnerability gate`, `sign provenance`). The evidence's share of a bake is the sum of
those stages over the bake's own clock (manifest `seconds`); the difference of the two kinds'
median wall times is printed beside it as a check (it also holds what has no stage: keeping the
SBOM and findings in the evidence bucket). Target (issue 16): under 10 % of the local `web` bake.

The feed is synthetic, with the shape and size of OSV's Debian export (`Debian/all.zip`: one
record per Debian CVE, DSA and DLA, tens of thousands, most about packages a small image lacks:
the kernel alone has thousands): --records records in a zip, each naming one source package;
--installed-share of them name a package the image has (from the first bake's SBOM) and are fixed
below the installed version, a few affect it at urgency `unimportant` (reported, never failing),
the rest name packages it lacks. So the gate reads every record and compares every package, as on
a real feed, and passes.

The first bake with the feed reads the zip whole (every record checked to be OSV) and keeps its
index in the state directory by the zip's sha256 (evidence/osv.py); later bakes with the same
download read the index. Both are reported: the first as `first bake with a new feed`, the rest
as the per-bake figure the target is about. Every bake is checked: gate and signature stages
present (or absent), `invoke verify --ami` passes on the last signed image.

    python3 bench/evidence_cost.py [--runs 5] [--records 50000] [--installed-share 0.1] [--json out.json]  # root
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.localcloud import bake_json  # noqa: E402
from tests.support import signing_key_pair  # noqa: E402

TARGET_SHARE = 0.10
EVIDENCE_STAGES = ("collect SBOM", "vulnerability gate", "sign provenance")
AFFECTING = 25  # records that affect an installed package (urgency unimportant: reported, not failing)


def run_bake(env: dict) -> tuple[float, dict]:
    return bake_json(env, "web", "--force")


def write_feed(path: Path, sbom_path: Path, records: int, installed_share: float, seed: int = 16) -> dict:
    """A zip of `records` OSV records shaped like Debian's (see the module docstring)."""
    from bakery.evidence.sbom import read_sbom

    rng = random.Random(seed)
    packages = read_sbom(sbom_path).packages
    sources = sorted({(p.source, p.source_version or p.version) for p in packages})
    counts = {"about_installed": 0, "affecting": 0, "other": 0}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(records):
            cve = f"CVE-{2000 + i % 26}-{10000 + i}"
            if i < AFFECTING:
                name, version = sources[i % len(sources)]
                events = [{"introduced": "0"}, {"fixed": f"{version}+zz1"}]
                urgency, counts["affecting"] = "unimportant", counts["affecting"] + 1
            elif rng.random() < installed_share:
                name, version = rng.choice(sources)
                events = [{"introduced": "0"}, {"fixed": f"0~{i}"}]  # fixed long before what is installed
                urgency, counts["about_installed"] = rng.choice(["low", "medium", "high", "not yet assigned"]), \
                    counts["about_installed"] + 1
            else:
                name, events = f"absent-package-{i % 5000}", [{"introduced": "0"}, {"fixed": f"1.{i}-1"}]
                urgency, counts["other"] = "medium", counts["other"] + 1
            record = {"schema_version": "1.6.0", "id": f"DEBIAN-{cve}", "modified": "2026-11-01T00:00:00Z",
                      "upstream": [cve], "details": f"{name}: synthetic record {i}",
                      "affected": [{"package": {"name": name, "ecosystem": "Debian:12"},
                                    "ranges": [{"type": "ECOSYSTEM", "events": events}],
                                    "ecosystem_specific": {"urgency": urgency}}]}
            zf.writestr(f"DEBIAN-{cve}.json", json.dumps(record))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="bakes of each kind (alternating; at least 2)")
    ap.add_argument("--records", type=int, default=50000, help="OSV records in the synthetic feed")
    ap.add_argument("--installed-share", type=float, default=0.1,
                    help="share of the records about a package the image has")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from bakery.config.settings import default_data_dir
    from bakery.local.base import ensure_base_image, share_base

    with tempfile.TemporaryDirectory(prefix="bakery-bench-evidence-") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        ensure_base_image(default_data_dir(), log=lambda line: print(line, file=sys.stderr))
        share_base(data, default_data_dir())  # the machine's cached Debian base, as the tests share it
        private, public = signing_key_pair(work)
        plain = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "BAKERY_DATA_DIR": str(data),
                 "INVOKE_BAKERY_STATE_DIR": str(work / "state")}
        for key in ("INVOKE_BAKERY_OSV_FEED", "INVOKE_BAKERY_SIGNING_KEY", "INVOKE_BAKERY_VERIFY_KEY"):
            plain.pop(key, None)
        try:
            _, first = run_bake(plain)  # also brings the local cloud up, outside the measured runs
            feed = work / "osv-debian.zip"
            t0 = time.perf_counter()
            shape = write_feed(feed, Path(first["sbom"]), args.records, args.installed_share)
            print(f"feed: {args.records} records ({shape}), {feed.stat().st_size / 2**20:.1f} MiB, written in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
            evidence = {**plain, "INVOKE_BAKERY_OSV_FEED": str(feed), "INVOKE_BAKERY_SIGNING_KEY": str(private)}

            runs: dict[str, list[dict]] = {"without": [], "with": []}
            for i in range(args.runs):
                for kind, env in (("without", plain), ("with", evidence)):
                    wall, manifest = run_bake(env)
                    stages = manifest["stages"]
                    has = [s for s in EVIDENCE_STAGES[1:] if s in stages]
                    if (kind == "with") != (len(has) == 2) or "collect SBOM" not in stages:
                        raise SystemExit(f"run {i + 1} {kind}: stages {sorted(stages)}")
                    if kind == "with" and manifest["vulnerabilities"]["failed"]:
                        raise SystemExit(f"the gate failed: {manifest['vulnerabilities']['counts']}")
                    runs[kind].append({"wall_s": round(wall, 3), "bake_s": manifest["seconds"],
                                       "stages_s": {s: stages[s] for s in EVIDENCE_STAGES if s in stages},
                                       "ami": manifest["ami_id"],
                                       "findings": len((manifest.get("vulnerabilities") or {}).get("findings", []))})
                    print(f"run {i + 1}/{args.runs} {kind:8} wall {wall:6.2f}s bake {manifest['seconds']:6.2f}s "
                          + " ".join(f"{s} {v:.3f}s" for s, v in runs[kind][-1]["stages_s"].items()), file=sys.stderr)
            verified = subprocess.run([sys.executable, "-m", "invoke", "verify", "--ami", runs["with"][-1]["ami"]],
                                      cwd=ROOT, env={**evidence, "INVOKE_BAKERY_VERIFY_KEY": str(public)},
                                      capture_output=True, text=True, timeout=120)
            if verified.returncode != 0:
                raise SystemExit(f"invoke verify failed: {verified.stderr}")
        finally:
            subprocess.run([sys.executable, "-m", "invoke", "local.down", "--purge"], cwd=ROOT, env=plain,
                           capture_output=True, timeout=300)

    cold, warm = runs["with"][0], runs["with"][1:]  # the first read the zip; the rest its index

    def med(rows: list[dict], pick) -> float:
        return statistics.median(pick(r) for r in rows)

    per_stage = {s: round(med(warm, lambda r, s=s: r["stages_s"][s]), 3) for s in EVIDENCE_STAGES}
    evidence_s = round(med(warm, lambda r: sum(r["stages_s"].values())), 3)
    bake_s = round(med(warm, lambda r: r["bake_s"]), 3)
    share = round(statistics.median(sum(r["stages_s"].values()) / r["bake_s"] for r in warm), 4)
    cold_s = round(sum(cold["stages_s"].values()), 3)
    wall_with, wall_without = med(warm, lambda r: r["wall_s"]), med(runs["without"], lambda r: r["wall_s"])
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu", "runs": args.runs, "feed_records": args.records,
        "feed_installed_share": args.installed_share, "feed_shape": shape, "findings": warm[-1]["findings"],
        "verify": "passed", "median_stage_s": per_stage, "median_evidence_s": evidence_s, "median_bake_s": bake_s,
        "evidence_share": share, "target_share": TARGET_SHARE,
        "first_bake_with_new_feed": {"evidence_s": cold_s, "bake_s": cold["bake_s"],
                                     "share": round(cold_s / cold["bake_s"], 4), "stages_s": cold["stages_s"]},
        "median_wall_s": {"with": round(wall_with, 3), "without": round(wall_without, 3)},
        "wall_difference_s": round(wall_with - wall_without, 3),
        "runs_detail": runs,
    }
    print(f"\nevidence cost per local `web` bake, {args.runs} alternating runs of each kind, {result['machine']}, "
          f"{result['date']}; feed {args.records} records; medians of the bakes after the first with the feed")
    for s, v in per_stage.items():
        print(f"  {s:20} {v:7.3f}s")
    print(f"  {'evidence in all':20} {evidence_s:7.3f}s of a {bake_s:.2f}s bake: {share:.1%} "
          f"(target < {TARGET_SHARE:.0%}: {'met' if share < TARGET_SHARE else 'NOT met'})")
    print(f"  first bake with a new feed (reads the zip whole, keeps its index): evidence {cold_s:.3f}s of a "
          f"{cold['bake_s']:.2f}s bake: {cold_s / cold['bake_s']:.1%}")
    print(f"  wall, median: with {wall_with:.2f}s, without gate and signature {wall_without:.2f}s "
          f"(difference {wall_with - wall_without:+.2f}s); {result['findings']} findings reported; verify passed")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
