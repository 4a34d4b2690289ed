"""What `invoke images`, `rebake`, `prune`, `janitor` and `clean` print for people."""

from __future__ import annotations

import json
from dataclasses import asdict


def images(rows: list[dict]) -> str:
    if not rows:
        return "no baked images"
    cols = ["ami_id", "recipe", "name", "inputs_hash", "created", "state"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def rebake_table(rows) -> str:
    w = max([len(r.recipe) for r in rows] + [6])
    out = [f"{'RECIPE':{w}}  {'DECISION':9}  {'AMI':21}  {'SECONDS':>7}  REASON"]
    out += [f"{r.recipe:{w}}  {r.decision:9}  {r.ami_id or '-':21}  {r.seconds:7.2f}  {r.reason}" for r in rows]
    return "\n".join(out)


def rebake_markdown(rows) -> str:
    """The decisions as a GitHub job summary table."""
    lines = ["| recipe | decision | reason | AMI | duration |", "|---|---|---|---|---|"]
    for r in rows:
        reason = r.reason.replace("|", "\\|")
        lines.append(f"| {r.recipe} | {r.decision} | {reason} | {r.ami_id or '-'} | {r.seconds:.1f}s |")
    return "\n".join(lines)


def rebake_json(rows) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def prune(reports, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines = []
    for r in reports:
        lines.append(f"{r.recipe}: kept {len(r.kept)}, {verb} {len(r.removed)}, spared {len(r.spared)} in use")
        lines += [f"  spared {ami}: used by {why}" for ami, why in r.spared.items()]
        lines += [f"  {verb} {ami}" for ami in r.removed]
    return "\n".join(lines)


def janitor(report) -> str:
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{build}: {verb} {', '.join(removed) or 'nothing'}" for build, removed in report.builds.items()]
    lines += [f"not removed (left in the ledger): {failure}" for failure in report.failed]
    lines.append(f"janitor: {len(report.builds)} dead run(s), {len(report.live)} live run(s) left alone"
                 + (f", {len(report.failed)} failure(s)" if report.failed else ""))
    return "\n".join(lines)


def clean(report) -> str:
    verb = "would remove" if report.dry_run else "removed"
    return "\n".join([f"{verb} {item}" for item in report.removed]
                     + [f"{report.build_id}: {len(report.removed)} resource(s) {verb}"])
