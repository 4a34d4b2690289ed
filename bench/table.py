"""Write the "Latest results" table of bench/README.md from bench/results/*.json.

    .venv/bin/python bench/table.py [--results bench/results] [--readme bench/README.md]

Every figure in the table comes from a result file a bench wrote (its date is in the row); the
table between the `results:begin` and `results:end` markers is replaced, nothing else.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- results:begin (bench/table.py writes this table) -->", "<!-- results:end -->"


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows(results: Path) -> list[list[str]]:
    """bench, bakery, reference, ratio, target, met?, date: one per result file present."""
    out = []
    if r := _load(results, "bake_vs_packer"):
        ratio = r["ratio_bakery_over_packer"]
        out.append([f"bake: {r['workload']}", f"{r['bakery_median_s']:.3f} s", f"`packer build` {r['packer_median_s']:.3f} s",
                    f"**{ratio:.2f}**", "<= 0.33", "yes" if ratio <= 1 / 3 else "no (see below)", r["date"]])
    if r := _load(results, "step_latency"):
        ratio = r["ratio_bakery_over_openssh"]
        out.append(["one recipe step", f"{r['bakery_ms_per_step']:.1f} ms",
                    f"`ssh -S` ControlMaster {r['openssh_ms_per_step']:.1f} ms", f"**{ratio:.2f}**", "<= 0.5",
                    "yes" if ratio <= 0.5 else "no", r["date"]])
    if r := _load(results, "upload_throughput"):
        m = r["median_s"]
        big, small = r["big_throughput_ratio_bakery_over_best_openssh"], r["small_files_ratio_bakery_over_scp"]
        out.append(["50 MiB upload", f"{m['big.bin bakery']:.3f} s", f"best of scp/sftp {min(m['big.bin scp'], m['big.bin sftp']):.3f} s",
                    f"throughput **{big:.2f}**", ">= 0.8", "yes" if big >= 0.8 else "no", r["date"]])
        out.append(["2,000 small files", f"{m['tree bakery']:.3f} s", f"scp {m['tree scp']:.3f} s", f"**{small:.2f}**",
                    "< 1", "yes" if small < 1 else "no", r["date"]])
    if r := _load(results, "wait_latency"):
        lag = r["sum_of_lags_median_s"]
        met = all(r["target_met"].values())
        out.append(["lag noticing EC2 state (5 waits, AWS scale)", f"{lag['bakery']:.2f} s per bake",
                    f"Packer-style polling {lag['packer']:.1f} s", f"**{lag['bakery'] / lag['packer']:.2f}**",
                    "<= 1 s per wait, ~1 call/s", "yes" if met else "no", r["date"]])
    if r := _load(results, "rebake_unchanged"):
        med = r["median_s"]
        ratio = r["ratio_bake_over_invoke_list"]
        out.append(["unchanged rebake, no builder", f"{med['invoke bake (skip)']:.3f} s "
                    f"({r['beyond_python_s']:.3f} s beyond `python -c pass`)", f"`invoke --list` {med['invoke --list']:.3f} s",
                    f"**{ratio:.2f}** x `--list`", "<= 2.5 x `--list` (issue 12)", "yes" if ratio <= 2.5 else "no",
                    r["date"]])
    if r := _load(results, "ready_lag"):
        baked, ratio = r["baked_median_s"], r["ratio_baked_over_bootstrap"]
        out.append(["ready for service, baked `web` (systemd)", f"{baked:.2f} s",
                    f"bootstrap at boot {r['bootstrap_median_s']:.2f} s", f"**{ratio:.2f}**",
                    "<= 2.5 s and <= 0.5 (issue 13)", "yes" if baked <= 2.5 and ratio <= 0.5 else "no", r["date"]])
    if r := _load(results, "instance_boot"):
        out.append(["local instance: RunInstances to sshd", f"{r['boot_to_sshd_median_s']:.2f} s",
                    f"bare sshd in a netns {r['bare_sshd_median_s']:.3f} s", f"**{r['ratio_boot_over_bare_sshd']:.0f}** x",
                    "measured", "-", r["date"]])
        out.append(["local instance: idle memory (PSS)", f"{r['idle_pss_median_mib']:.1f} MiB",
                    f"bare sshd {r['bare_sshd_pss_median_mib']:.1f} MiB", f"**{r['ratio_pss_over_bare_sshd']:.1f}** x",
                    "measured", "-", r["date"]])
    if r := _load(results, "quickstart"):
        out.append(["Quickstart line 1, fresh clone and data dir", f"{r['total_s']:.0f} s, "
                    f"{r['instances_running']} instances running", "-", "-", f"< {r['target_s']:.0f} s (issue 13)",
                    "yes" if r["total_s"] < r["target_s"] and r["instances_running"] >= 6 else "no", r["date"]])
    if r := _load(results, "startup"):
        c = r["commands"]
        sdk = c["import boto3, paramiko"]["median_s"]
        lst, hlp = c["invoke --list"], c.get("invoke bake --help", c["invoke --list"])
        out.append(["`invoke --list` / `invoke bake --help`", f"{lst['median_s']:.3f} / {hlp['median_s']:.3f} s",
                    f"`import boto3, paramiko` {sdk:.3f} s",
                    f"**{lst['ratio_to_sdk_import']:.2f} / {hlp['ratio_to_sdk_import']:.2f}**", "no SDK import",
                    "yes" if not lst["heavy_modules_s"].keys() - {"yaml"} else "no", r["date"]])
    if r := _load(results, "evidence_cost"):
        share, first = r["evidence_share"], r["first_bake_with_new_feed"]
        out.append([f"evidence per local `web` bake: SBOM, gate ({r['feed_records']:,} OSV records), signature",
                    f"{r['median_evidence_s']:.2f} s of {r['median_bake_s']:.2f} s; first bake with a new feed "
                    f"{first['evidence_s']:.2f} s", f"the bake itself {r['median_bake_s']:.2f} s",
                    f"**{share:.1%}** (first: {first['share']:.0%})", "< 10 % of the bake (issue 16)",
                    "yes" if share < r["target_share"] else "no", r["date"]])
    if r := _load(results, "rebake_jobs"):
        ratio, med = r["ratio_jobs3_over_jobs1"], r["median_s"]
        out.append([f"rebake --force --jobs 3, {len(r['recipes'])} recipes (local cloud)", f"{med['jobs_3']:.1f} s",
                    f"`--jobs 1` {med['jobs_1']:.1f} s", f"**{ratio:.2f}**", f"<= {r['target']} (issue 17)",
                    "yes" if ratio <= r["target"] else "no (see below)", r["date"]])
    if r := _load(results, "checkpoints"):
        ratio, bake, wall = r["ratio_resumed_over_full"], r["median_bake_s"], r["median_wall_s"]
        out.append(["`bake` after changing the last step of `db`, resumed from its checkpoint (local cloud)",
                    f"{bake['resumed']:.2f} s (command {wall['resumed']:.2f} s)",
                    f"`bake --no-cache` {bake['full']:.2f} s (command {wall['full']:.2f} s)",
                    f"**{ratio:.2f}** (commands {r['ratio_wall']:.2f})", f"<= {r['target']} (issue 17)",
                    "yes" if ratio <= r["target"] else "no", r["date"]])
    if r := _load(results, "rollout_outage"):
        med = r["median_outage_s"]
        out.append(["client outage on the app's front ENI during `rollout --tier app` (local prod)",
                    f"{med['rollout']:.2f} s (worst {r['worst_rollout_outage_s']:.2f} s)",
                    f"`failover` alone {med['failover']:.2f} s", f"**{r['ratio_rollout_over_failover']:.1f}** x",
                    f"< {r['target_s']:g} s (issue 17)", "yes" if r["worst_rollout_outage_s"] < r["target_s"] else "no",
                    r["date"]])
    if r := _load(results, "host_key"):
        bake = r["median_bake_s"]
        out.append(["bake with the builder's host key pinned from its console, not sent in user data (local)",
                    f"{bake['console']:.2f} s ({r['extra_s']:+.2f} s)", f"key in user data {bake['injected']:.2f} s",
                    f"**{r['ratio_console_over_injected']:.2f}** x", "measured (issue 18)", "-", r["date"]])
    return out


def table(results: Path) -> str:
    lines = ["| # | bench | bakery | reference (same invocation) | ratio | target | met? | measured |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | " + " | ".join(row) + " |" for i, row in enumerate(rows(results), start=1)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--readme", type=Path, default=HERE / "README.md")
    args = ap.parse_args()
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.readme}: no {BEGIN!r} ... {END!r} markers to write the table between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(f"{head}{BEGIN}\n{table(args.results)}\n{END}{tail}")
    print(f"wrote the results table of {args.readme}")


if __name__ == "__main__":
    main()
