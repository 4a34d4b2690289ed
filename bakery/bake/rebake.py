"""`invoke rebake`: the scheduled path. Every recipe (or those named) is baked when its inputs
changed and skipped when they did not; one failing recipe does not stop the others; the
decisions go to a table, and to the GitHub job summary when there is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bakery.config.recipe import list_recipes
from bakery.config.settings import Settings
from bakery.errors import BakeryError, ConfigError
from bakery.progress import Reporter


@dataclass
class RebakeRow:
    recipe: str
    decision: str  # unchanged | rebaked | failed
    reason: str
    ami_id: str | None
    seconds: float


def rebake(settings: Settings, recipes: list[str] | None, *, force: bool = False,
           report: Reporter) -> list[RebakeRow]:
    """Bake every recipe (or those named) whose inputs changed; one failure does not stop the rest."""
    from bakery.bake.run import bake
    from bakery.cloud.connect import open_cloud

    names = recipes or list_recipes(settings.recipes)
    unknown = [n for n in names if n not in list_recipes(settings.recipes)]
    if unknown:
        raise ConfigError(f"{settings.recipes}: no such recipe {unknown[0]!r} "
                          f"(known: {', '.join(list_recipes(settings.recipes))})")
    cloud = open_cloud(settings)
    rows = []
    for name in names:
        started = time.monotonic()
        try:
            manifest = bake(settings, name, {}, report=Reporter(prefix=f"[{name}] ", stream=report.stream,
                                                               quiet=report.quiet), force=force, cloud=cloud)
            decision = "unchanged" if manifest.skipped else "rebaked"
            reason = manifest.reason if manifest.skipped else (
                "forced" if force else f"inputs changed (hash {manifest.inputs_hash})")
            rows.append(RebakeRow(name, decision, reason, manifest.ami_id, round(time.monotonic() - started, 3)))
        except BakeryError as exc:
            rows.append(RebakeRow(name, "failed", exc.message, None, round(time.monotonic() - started, 3)))
    return rows
