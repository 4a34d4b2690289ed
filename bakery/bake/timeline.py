"""Where a bake's time went: its manifest's timeline (bakery/progress.py keeps one entry per stage)
as a table, a picture and a Mermaid gantt chart.

Each stage is split in two: the time bakery waited on the cloud (bakery/waits.py: an instance
starting, SSH coming up, cloud-init, the image and its snapshot) and the rest, bakery's own work
and the recipe's steps. A slow bake is then read at a glance: a long wait is the cloud's, a long
step is the recipe's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from bakery.errors import ConfigError


@dataclass(frozen=True)
class Bar:
    name: str
    kind: str      # "stage" | "step"
    start: float   # seconds after the bake's first stage began
    seconds: float
    waited: float  # of which waiting on the cloud
    ok: bool


@dataclass(frozen=True)
class Timeline:
    recipe: str
    build_id: str
    ami_id: str | None
    seconds: float  # the bake's own figure, which also counts what ran between stages
    bars: list[Bar]
    manifest: Path
    error: str | None = None  # the bake failed: why

    @property
    def span(self) -> float:
        return max([b.start + b.seconds for b in self.bars] + [self.seconds, 0.001])


def bars(timeline: list[dict], where: str = "timeline") -> list[Bar]:
    """A manifest's timeline as bars on one time axis. Nested stages (a wait inside a publish) are
    kept: each is drawn on its own row."""
    if not timeline:
        return []
    try:
        first = min(float(entry["start"]) for entry in timeline)
        ordered = sorted(timeline, key=lambda e: (float(e["start"]), -float(e["seconds"])))
        return [Bar(str(e["name"]), e.get("kind", "stage"), round(float(e["start"]) - first, 3), float(e["seconds"]),
                    min(float(e.get("waited", 0.0)), float(e["seconds"])), bool(e.get("ok", True))) for e in ordered]
    except (KeyError, TypeError, ValueError) as exc:
        field = exc.args[0] if isinstance(exc, KeyError) else "start, seconds or waited"
        raise ConfigError(f"report: {where}: a timeline entry has no {field} (or not a number)") from None


#: a manifest's file name: RECIPE-BUILD.json, the build id holding when it began (UTC, to the second)
MANIFEST_NAME = re.compile(r"(?P<recipe>.+)-(?P<build>b-(?P<when>\d{14})-[0-9a-f]+)\.json")


def load(manifests: Path, build_id: str | None) -> Timeline:
    """The manifest of `build_id`, or of the newest bake that ran (built an image or failed; a
    skipped bake has no stages worth drawing). Only manifests are read: the SBOMs beside them are large."""
    found = sorted(((m.group("when"), m.group("build"), path) for path in (
        manifests.glob("*.json") if manifests.is_dir() else []) if (m := MANIFEST_NAME.fullmatch(path.name))),
        reverse=True)
    if build_id is not None:
        found = [f for f in found if f[1] == build_id]
        if not found:
            raise ConfigError(f"report: no manifest of build {build_id} in {manifests}")
    for _, _, path in found:
        try:
            data = json.loads(path.read_text())
            assert isinstance(data, dict) and "build_id" in data
        except (OSError, ValueError, AssertionError):
            if build_id is not None:
                raise ConfigError(f"report: {path}: not a bake manifest (unreadable or not its JSON)") from None
            continue
        if build_id is None and (data.get("skipped") or not data.get("timeline")):
            continue
        if not data.get("timeline"):
            why = "it was skipped (an image with its inputs existed)" if data.get("skipped") else \
                "it was made by a bakery that kept no timeline"
            raise ConfigError(f"report: {path}: no timeline: {why}")
        return Timeline(data.get("recipe", "?"), data["build_id"], data.get("ami_id"),
                        float(data.get("seconds") or 0.0), bars(data["timeline"], str(path)), path,
                        data.get("error"))
    raise ConfigError(f"report: no bake with a timeline yet in {manifests}")


# ---- the picture ----------------------------------------------------------------------------------

WORK, STEP, WAIT, FAILED = (96, 125, 139), (52, 101, 164), (245, 166, 35), (204, 0, 0)
INK, GRID, PAPER = (33, 33, 33), (225, 225, 225), (255, 255, 255)


def _tick(span: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / step <= 12:
            return step
    return 7200


def png(timeline: Timeline) -> bytes:
    """Stages as bars on a time axis, one row each in the order they began; a bar's waiting part
    (the cloud's time) drawn over it in another colour; the recipe's steps in their own."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=13)
    rows, row_h, top, bottom = timeline.bars, 24, 64, 64
    label_w = 24 + max([int(font.getlength(b.name)) for b in rows] + [120])
    plot_w = 900
    width, height = label_w + plot_w + 40, top + row_h * max(len(rows), 1) + bottom
    image = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(image)
    span = timeline.span
    x = lambda seconds: label_w + plot_w * seconds / span  # noqa: E731 - the one scale of the axis

    title = f"{timeline.recipe} {timeline.build_id}: {timeline.seconds:.1f}s" + (
        f" -> {timeline.ami_id}" if timeline.ami_id else "") + (" FAILED" if timeline.error else "")
    draw.text((16, 14), title, fill=INK, font=font)
    tick = _tick(span)
    t = 0.0
    while t <= span + 1e-9:
        draw.line([(x(t), top - 6), (x(t), top + row_h * len(rows))], fill=GRID)
        draw.text((x(t), top + row_h * len(rows) + 6), f"{t:g}s", fill=INK, font=small, anchor="mt")
        t += tick
    for i, bar in enumerate(rows):
        y = top + i * row_h
        draw.text((16, y + row_h / 2), bar.name, fill=INK, font=font, anchor="lm")
        left, right = x(bar.start), max(x(bar.start + bar.seconds), x(bar.start) + 2)
        colour = FAILED if not bar.ok else STEP if bar.kind == "step" else WORK
        draw.rectangle([left, y + 4, right, y + row_h - 4], fill=colour)
        if bar.waited > 0:
            wait_right = max(x(bar.start + bar.waited), left + 1)
            draw.rectangle([left, y + 8, wait_right, y + row_h - 8], fill=WAIT)
    legend_y = height - 26
    for n, (colour, text) in enumerate(((WORK, "bakery's work"), (STEP, "recipe step"),
                                        (WAIT, "waiting on the cloud"), (FAILED, "failed"))):
        left = 16 + n * 200
        draw.rectangle([left, legend_y, left + 14, legend_y + 14], fill=colour)
        draw.text((left + 20, legend_y + 7), text, fill=INK, font=small, anchor="lm")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# ---- GitHub's job summary ---------------------------------------------------------------------------

#: where a chart's time axis starts. Mermaid draws dates in the reader's own time zone, so the
#: offsets are local times on a day of no consequence, not seconds since the epoch (which a reader
#: east of UTC would see start at 05:30)
ORIGIN = datetime(2000, 1, 1)
#: words Mermaid's gantt syntax reads at the start of a line
KEYWORDS = {"title", "section", "dateformat", "axisformat", "tickinterval", "todaymarker", "excludes",
            "includes", "weekday", "weekend", "click", "inclusiveenddates", "topaxis", "displaymode",
            "accdescr", "acctitle", "gantt"}


def mermaid(recipe: str, timeline: list[dict]) -> str:
    """A Mermaid gantt chart of one bake (GitHub renders it in a job summary): a section for
    bakery's stages and one for the recipe's steps, times from the bake's start, a stage that
    mostly waited on the cloud marked `active` (drawn apart), a failed one `crit`."""
    rows = bars(timeline)
    at = lambda seconds: (ORIGIN + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")  # noqa: E731
    lines = ["```mermaid", "gantt", f"    title {_label(recipe)}: where the bake's time went",
             "    dateFormat YYYY-MM-DD HH:mm:ss", "    axisFormat %H:%M:%S", "    todayMarker off"]
    for section, kind in (("bakery", "stage"), ("recipe steps", "step")):
        mine = [b for b in rows if b.kind == kind]
        if not mine:
            continue
        lines.append(f"    section {section}")
        for n, b in enumerate(mine):
            state = "crit, " if not b.ok else "active, " if b.waited >= b.seconds / 2 else ""
            # whole seconds (the format's): from the second it began to the one after it ended, at least one
            start = math.floor(b.start)
            end = max(math.ceil(b.start + b.seconds), start + 1)
            lines.append(f"    {_label(b.name)} :{state}{kind}{n}, {at(start)}, {at(end)}")
    lines.append("```")
    return "\n".join(lines)


def _label(text: str) -> str:
    """A task name Mermaid reads as one: no colon, semicolon or hash (its syntax), and not
    beginning with one of its keywords."""
    label = re.sub(r"[:;#]", " ", text).strip() or "-"
    return f"· {label}" if label.split()[0].lower() in KEYWORDS else label
