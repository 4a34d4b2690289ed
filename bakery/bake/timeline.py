"""Where a bake's time went: its manifest's timeline (bakery/progress.py keeps one entry per stage)
as a table, a picture and a Mermaid gantt chart.

Each stage is split in two: the time bakery waited on the cloud (bakery/waits.py: an instance
starting, SSH coming up, cloud-init, the image and its snapshot) and the rest, bakery's own work
and the recipe's steps. A slow bake is then read at a glance: a long wait is the cloud's, a long
step is the recipe's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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

    @property
    def span(self) -> float:
        return max([b.start + b.seconds for b in self.bars] + [self.seconds, 0.001])


def bars(timeline: list[dict]) -> list[Bar]:
    """A manifest's timeline as bars on one time axis. Nested stages (a wait inside a publish) are
    kept: each is drawn on its own row."""
    if not timeline:
        return []
    first = min(entry["start"] for entry in timeline)
    ordered = sorted(timeline, key=lambda e: (e["start"], -e["seconds"]))
    return [Bar(e["name"], e.get("kind", "stage"), round(e["start"] - first, 3), e["seconds"],
                min(e.get("waited", 0.0), e["seconds"]), e.get("ok", True)) for e in ordered]


def load(manifests: Path, build_id: str | None) -> Timeline:
    """The manifest of `build_id`, or of the newest bake that built an image (a skipped bake has
    no stages worth drawing)."""
    found = sorted(manifests.glob("*.json")) if manifests.is_dir() else []
    chosen: tuple[Path, dict] | None = None
    for path in found:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or "build_id" not in data:
            continue
        if build_id is not None:
            if data["build_id"] == build_id:
                chosen = (path, data)
                break
        elif not data.get("skipped") and data.get("timeline") and (
                chosen is None or data.get("started_at", "") >= chosen[1].get("started_at", "")):
            chosen = (path, data)
    if chosen is None:
        what = f"no manifest of build {build_id}" if build_id else "no bake with a timeline yet"
        raise ConfigError(f"report: {what} in {manifests}")
    path, data = chosen
    if not data.get("timeline"):
        why = "it was skipped (an image with its inputs existed)" if data.get("skipped") else \
            "it was made by a bakery that kept no timeline"
        raise ConfigError(f"report: build {data['build_id']} ({path.name}) has no timeline: {why}")
    return Timeline(data["recipe"], data["build_id"], data.get("ami_id"), float(data.get("seconds") or 0.0),
                    bars(data["timeline"]), path)


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
        f" -> {timeline.ami_id}" if timeline.ami_id else "")
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

def mermaid(recipe: str, timeline: list[dict]) -> str:
    """A Mermaid gantt chart of one bake (GitHub renders it in a job summary): a section for
    bakery's stages and one for the recipe's steps, times in seconds from the bake's start, the
    waits marked `active` (drawn apart)."""
    rows = bars(timeline)
    lines = ["```mermaid", "gantt", f"    title {_label(recipe)}: where the bake's time went",
             "    dateFormat X", "    axisFormat %M:%S"]
    for section, kind in (("bakery", "stage"), ("recipe steps", "step")):
        mine = [b for b in rows if b.kind == kind]
        if not mine:
            continue
        lines.append(f"    section {section}")
        for n, b in enumerate(mine):
            state = "crit, " if not b.ok else "active, " if b.waited >= b.seconds / 2 else ""
            start, end = int(round(b.start)), max(int(round(b.start + b.seconds)), int(round(b.start)) + 1)
            lines.append(f"    {_label(b.name)} :{state}{kind}{n}, {start}, {end}")
    lines.append("```")
    return "\n".join(lines)


def _label(text: str) -> str:
    """A task name Mermaid reads as one: no colon, semicolon or hash (its syntax)."""
    return re.sub(r"[:;#]", " ", text).strip() or "-"
