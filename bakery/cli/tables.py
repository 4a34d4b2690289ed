"""What `invoke images`, `rebake`, `diff`, `prune`, `janitor` and `clean` print for people."""

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
    for r in rows:  # then what changed in each rebaked image
        if r.decision == "rebaked":
            out += ["", diff_text(r.changes) if r.changes else f"{r.recipe}: no diff ({r.no_changes})"]
    return "\n".join(out)


def rebake_markdown(rows) -> str:
    """The decisions as a GitHub job summary table, then what changed in each rebaked image."""
    lines = ["| recipe | decision | reason | AMI | duration |", "|---|---|---|---|---|"]
    for r in rows:
        reason = r.reason.replace("|", "\\|")
        lines.append(f"| {r.recipe} | {r.decision} | {reason} | {r.ami_id or '-'} | {r.seconds:.1f}s |")
    rebaked = [r for r in rows if r.decision == "rebaked"]
    if rebaked:
        lines += ["", "### What changed"]
    for r in rebaked:
        lines += ["", diff_markdown(r.changes) if r.changes else f"#### {r.recipe}: no diff ({r.no_changes})"]
    timed = [r for r in rebaked if r.timeline]
    if timed:
        from bakery.bake.timeline import mermaid

        lines += ["", "### Where the time went"]
        lines += [line for r in timed for line in ("", mermaid(r.recipe, r.timeline))]
    for r in rows:
        if r.vulnerabilities is not None:
            from bakery.evidence.gate import summary_markdown

            lines += ["", summary_markdown(r.vulnerabilities, title=f"{r.recipe}: vulnerabilities").rstrip("\n")]
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


# ---- invoke diff, and the rebake's summary of what changed -------------------------------------

def _sections(d) -> list[tuple[str, str, list[tuple[str, str, str, str]]]]:
    """(title, old -> new counts, rows of (change, name, from, to)) for each kind of content."""
    def versions(changes, located: bool):
        rows = []
        for kind in ("added", "removed", "upgraded", "downgraded"):
            for c in getattr(changes, kind):
                name = f"{c.name} ({c.location})" if located and c.location else c.name
                rows.append((kind, name, c.old or "", c.new or ""))
        return rows

    def state(f) -> str:
        if f is None:
            return ""
        extra = " ".join(x for x in (f.mode, f.owner) if x)
        return f"sha256 {f.sha256[:12]}" + (f" {extra}" if extra else "")

    files = [(kind, c.path, state(c.old), state(c.new))
             for kind in ("added", "removed", "changed") for c in getattr(d.files, kind)]
    t = d.totals
    return [("dpkg packages", f"{t['packages'][0]} -> {t['packages'][1]}", versions(d.packages, False)),
            ("Python packages", f"{t['python'][0]} -> {t['python'][1]}", versions(d.python, True)),
            ("uploaded files", f"{t['files'][0]} -> {t['files'][1]}", files)]


def _tally(rows) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[0]] = counts.get(row[0], 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "no change"


def _side(image) -> str:
    return f"{image.ami_id} ({image.build_id or 'no build id'}, {image.created or 'no date'})"


def diff_text(d) -> str:
    """`invoke diff` for people: one block per kind of content, one line per change."""
    lines = [f"{d.recipe}: {_side(d.old)} -> {_side(d.new)}"]
    for title, counts, rows in _sections(d):
        lines.append(f"{title} ({counts}): {_tally(rows)}")
        for kind, name, old, new in rows:
            change = f"{old} -> {new}" if old and new else old or new
            lines.append(f"  {kind:10}  {name} {change}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else "-"


def diff_markdown(d) -> str:
    """The diff for a GitHub job summary: a heading, then a table per kind of content that changed."""
    out = [f"#### {d.recipe}: `{d.old.ami_id}` -> `{d.new.ami_id}`", ""]
    for title, counts, rows in _sections(d):
        out.append(f"**{title}** ({counts}): {_tally(rows)}")
        out.append("")
        if rows:
            out += ["| change | name | from | to |", "|---|---|---|---|"]
            out += [f"| {kind} | {_cell(name)} | {_cell(old)} | {_cell(new)} |" for kind, name, old, new in rows]
            out.append("")
    return "\n".join(out).rstrip()


def timeline_table(timeline) -> str:
    """Each stage and step of a bake: when it began, how long it took, its share of the bake and
    how much of it was waiting on the cloud; then the totals by kind."""
    total = timeline.seconds or timeline.span
    failed = f", failed: {timeline.error}" if timeline.error else ""
    out = [f"{timeline.recipe} {timeline.build_id}: {timeline.seconds:.1f}s"
           + (f" -> {timeline.ami_id}" if timeline.ami_id else "") + failed,
           f"{'START':>8}  {'SECONDS':>8}  {'SHARE':>6}  {'WAITING':>8}  STAGE"]
    for bar in timeline.bars:
        waited = f"{bar.waited:8.2f}" if bar.waited >= 0.005 else f"{'-':>8}"
        mark = "" if bar.ok else "  (failed)"
        out.append(f"{bar.start:7.2f}s  {bar.seconds:8.2f}  {100 * bar.seconds / total:5.1f}%  {waited}  "
                   f"{bar.name}{mark}")
    waited = sum(b.waited for b in timeline.bars)
    steps = sum(b.seconds - b.waited for b in timeline.bars if b.kind == "step")
    out.append(f"waiting on the cloud {waited:.1f}s ({100 * waited / total:.0f}%), recipe steps {steps:.1f}s "
               f"({100 * steps / total:.0f}%), bakery's own work {max(total - waited - steps, 0):.1f}s")
    return "\n".join(out)
