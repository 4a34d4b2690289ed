"""`invoke rebake`: the scheduled path. Every recipe (or those named) is baked when its inputs
changed and skipped when they did not, parents before the recipes layered on them (a child of a
failed parent is not baked); one failing recipe does not stop the others; the decisions go to a
table, and to the GitHub job summary when there is one.

Every recipe is checked offline before the cloud opens: one the files refuse fails on its own row
(or, named with --recipe, is the command's one-line error), and the cloud is not opened at all
when no recipe is left to bake.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bakery.config.abstract import is_abstract, refuse_abstract
from bakery.config.recipe import list_recipes, recipe_path
from bakery.config.settings import Settings
from bakery.errors import BakeryError, ConfigError, Interrupted
from bakery.progress import Reporter

if TYPE_CHECKING:
    from bakery.evidence.diff import ImageDiff


@dataclass
class RebakeRow:
    recipe: str
    decision: str  # unchanged | rebaked | failed
    reason: str
    ami_id: str | None
    seconds: float
    changes: ImageDiff | None = None  # rebaked: what changed since the recipe's previous image (its SBOMs)
    no_changes: str = ""              # rebaked without a diff: why (its first image, one without an SBOM)
    vulnerabilities: dict | None = None  # the gate's result (evidence/gate.py GateResult.to_json()), passed or failed
    timeline: list[dict] = field(default_factory=list)  # rebaked: its stages (the manifest's), for the summary's chart


def job_groups(settings: Settings, recipes: list[str] | None) -> list[str]:
    """What the scheduled workflow's jobs bake: the selected recipes in trees of layers, each tree
    one job (its recipes space-separated, parents first), the trees side by side. Offline, from
    the YAML alone."""
    from bakery.bake.layers import groups
    from bakery.config.recipe import source_recipe

    names = selected(settings, recipes)
    return [" ".join(g) for g in groups(names, {n: source_recipe(settings.recipes, n) for n in names})]


def selected(settings: Settings, recipes: list[str] | None) -> list[str]:
    """What rebake bakes: the recipes named (none of them abstract), else every concrete recipe."""
    if recipes:
        for name in recipes:
            recipe_path(settings.recipes, name)
            refuse_abstract(settings.recipes, name, "rebake")
        return list(recipes)
    return [n for n in list_recipes(settings.recipes) if not is_abstract(settings.recipes / f"{n}.yaml")]


def rebake(settings: Settings, recipes: list[str] | None, *, variables: dict[str, str] | None = None,
           force: bool = False, report: Reporter, jobs: int = 1) -> list[RebakeRow]:
    """Bake every recipe (or those named) whose inputs changed; one failure does not stop the rest.
    `jobs` > 1: that many bakes at once, each recipe once its parent is done (run_in_parallel).

    Each variable goes to every selected recipe that declares it; one that none declares is
    refused before the cloud opens (a recipe that does not load cannot claim it: it fails on its own row)."""
    from bakery.bake.inputs import load_inputs
    from bakery.bake.layers import in_layer_order, parent_of
    from bakery.bake.run import Bake, checked_variables
    from bakery.cloud.connect import open_cloud
    from bakery.evidence.gate import GateFailed

    variables = variables or {}
    names = selected(settings, recipes)
    loaded: dict[str, object] = {}
    rows: dict[str, RebakeRow] = {}
    for name in names:
        try:
            loaded[name] = load_inputs(settings.recipes, settings.state, name)
        except BakeryError as exc:
            if recipes:  # a recipe asked for by name: its problem is the command's
                raise
            rows[name] = RebakeRow(name, "failed", exc.message, None, 0.0)
    for key in variables:
        if not any(key in inputs.declared for inputs in loaded.values()):
            raise ConfigError(f"--var/--var-file {key}: no recipe to rebake declares it "
                              f"({', '.join(names) or 'none'})")
    mine: dict[str, dict[str, str]] = {}
    for name, inputs in list(loaded.items()):  # all of it offline, before the cloud opens
        try:
            given = {k: v for k, v in variables.items() if k in inputs.declared}
            checked_variables(settings, inputs, given)
            mine[name] = given
        except BakeryError as exc:
            if recipes:
                raise
            rows[name] = RebakeRow(name, "failed", exc.message, None, 0.0)
            del loaded[name]
    cloud = open_cloud(settings) if loaded else None
    failed = {name for name, row in rows.items() if row.decision == "failed"}

    def bake_one(name: str) -> None:
        inputs = loaded[name]
        if parent_of(inputs) in failed:  # its old image is not what the files now say to bake on
            rows[name] = RebakeRow(name, "failed", f"source recipe {parent_of(inputs)} failed: not baked", None, 0.0)
            failed.add(name)
            return
        started = time.monotonic()
        try:
            manifest = Bake(settings, inputs, mine[name], report=report.prefixed(f"[{name}] "),
                            force=force, cloud=cloud, freshness=True).run()
            decision = "unchanged" if manifest.skipped else "rebaked"
            # a stale image's reason says why; a new inputs hash is what "no image with these inputs" means here
            reason = (f"inputs changed (hash {manifest.inputs_hash})"
                      if manifest.reason == "no image with these inputs" else manifest.reason)
            rows[name] = RebakeRow(name, decision, reason, manifest.ami_id, round(time.monotonic() - started, 3),
                                   vulnerabilities=None if manifest.skipped else manifest.vulnerabilities,
                                   timeline=[] if manifest.skipped else manifest.timeline)
        except Interrupted:
            raise  # Ctrl-C stops the rebake, not just this recipe
        except BakeryError as exc:
            rows[name] = RebakeRow(name, "failed", exc.message, None, round(time.monotonic() - started, 3),
                                   vulnerabilities=exc.findings if isinstance(exc, GateFailed) else None)
            failed.add(name)
            return
        if not manifest.skipped:
            rows[name].changes, rows[name].no_changes = changes(settings, cloud, name, manifest.ami_id)

    parents = {n: parent_of(i) for n, i in loaded.items()}
    if jobs <= 1:
        for name in in_layer_order(list(loaded), parents):
            bake_one(name)
    else:
        run_in_parallel(in_layer_order(list(loaded), parents), parents, jobs, bake_one)
    return [rows[name] for name in names]


def changes(settings: Settings, cloud, recipe: str, ami: str) -> tuple[ImageDiff | None, str]:
    """What a rebaked image changed since the recipe's previous one, or why that cannot be said:
    a diff that cannot be made is a line in the summary, never the rebake's failure."""
    from bakery.evidence.diff import since_previous

    try:
        return since_previous(settings, cloud.ec2, recipe, ami), ""
    except BakeryError as exc:
        return None, exc.message


def run_in_parallel(order: list[str], parents: dict[str, str | None], jobs: int, bake_one) -> None:
    """`bake_one` for every name, `jobs` at a time on worker threads, each once its parent (when it
    is in `order`) has finished. The workers share the cloud's clients, so one rate limiter per
    region (bakery/cloud/throttle.py). Ctrl-C or SIGTERM reach the main thread only: it cancels
    the workers (each raises Interrupted at its next API call, poll or step output, and cleans up
    what its bake made), waits for all of them, and re-raises."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from bakery.signals import block_in_this_thread, cancel_workers, clear_cancel, shielded

    waiting, running, done = list(order), {}, set()
    pool = ThreadPoolExecutor(max_workers=jobs, initializer=block_in_this_thread, thread_name_prefix="rebake")
    try:
        while waiting or running:
            for name in [n for n in waiting if parents.get(n) not in order or parents[n] in done]:
                if len(running) >= jobs:
                    break
                waiting.remove(name)
                running[pool.submit(bake_one, name)] = name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done.add(running.pop(future))
                future.result()  # bake_one records a recipe's failure itself: what is raised here is not one
    except BaseException as exc:
        cancel_workers(getattr(exc, "message", None) or "interrupted")
        with shielded():  # a second Ctrl-C must not leave the others' builders running
            wait(running)
        raise
    finally:
        pool.shutdown(wait=True)
        clear_cancel()
