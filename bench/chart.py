"""Draw bench/chart.png from the benches' latest JSON results (bench/results/*.json).

    .venv/bin/python bench/chart.py [--results bench/results] [--out bench/chart.png]

Each row is bakery's figure divided by its reference from the same invocation (Packer,
OpenSSH, Packer-style polling, bootstrapping, bare imports): below 1 bakery is faster. The
tick on each row is issue 8's target. Needs the `bench` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows(results: Path) -> list[tuple[str, float, float | None]]:
    """(label, bakery/reference, target) for every result file present."""
    def load(name: str) -> dict | None:
        path = results / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    out = []
    if r := load("bake_vs_packer"):
        out.append((f"bake, 20 steps + 50 MiB\nvs packer build ({r['bakery_median_s']:.2f} s vs {r['packer_median_s']:.2f} s)",
                    r["ratio_bakery_over_packer"], 1 / 3))
    if r := load("step_latency"):
        out.append((f"one recipe step\nvs ssh -S ControlMaster ({r['bakery_ms_per_step']:.1f} vs {r['openssh_ms_per_step']:.1f} ms)",
                    r["ratio_bakery_over_openssh"], 0.5))
    if r := load("upload_throughput"):
        out.append(("50 MiB upload time\nvs best of scp/sftp", 1 / r["big_throughput_ratio_bakery_over_best_openssh"],
                    1 / 0.8))
        out.append(("2,000 small files\nvs scp", r["small_files_ratio_bakery_over_scp"], 1.0))
    if r := load("wait_latency"):
        lag = r["sum_of_lags_median_s"]
        out.append((f"lag noticing EC2 state, per bake\nvs Packer-style polling ({lag['bakery']:.1f} vs {lag['packer']:.1f} s)",
                    lag["bakery"] / lag["packer"], None))
    if r := load("rebake_unchanged"):
        med = r["median_s"]
        out.append((f"unchanged rebake (no builder)\nvs baking it ({med['invoke bake (skip)']:.2f} vs "
                    f"{r['first_bake_wall_s']:.2f} s)", med["invoke bake (skip)"] / r["first_bake_wall_s"], None))
    if r := load("startup"):
        if "invoke --list" in r["commands"]:
            out.append(("invoke --list\nvs import boto3, paramiko", r["commands"]["invoke --list"]["ratio_to_sdk_import"],
                        1.0))
    if r := load("ready_lag"):
        out.append((f"ready for service, baked\nvs bootstrap at boot ({r['baked_median_s']:.2f} vs {r['bootstrap_median_s']:.2f} s)",
                    r["ratio_baked_over_bootstrap"], None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--out", type=Path, default=HERE / "chart.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(args.results)
    if not data:
        raise SystemExit(f"no results in {args.results}: run the benches with --json {args.results}/NAME.json")
    labels, ratios, targets = zip(*reversed(data))
    fig, ax = plt.subplots(figsize=(9, 0.75 * len(data) + 1.2))
    colours = ["#2a7" if t is None or r <= t else "#d73" for r, t in zip(ratios, targets)]
    ax.barh(range(len(data)), ratios, color=colours, height=0.6)
    for i, (r, t) in enumerate(zip(ratios, targets)):
        ax.text(r + 0.02, i, f"{r:.2f}", va="center", fontsize=9)
        if t is not None:
            ax.plot([t, t], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(data)), labels, fontsize=8)
    ax.set_xlabel("bakery / reference (same invocation; lower is better; black tick = issue 8 target)")
    ax.set_xlim(0, max(1.3, max(ratios) + 0.2))
    ax.set_title("bakery against Packer 1.6.6 and OpenSSH", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
