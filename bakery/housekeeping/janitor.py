"""`invoke janitor`: remove what dead runs left behind, by the local ledger and by tags.

The ledger (bakery/ledger.py) names, by id, what each run on this machine created and has not
removed; a run whose ledger lock is free is dead (its process is gone), so its leftovers go at
once. Tags find the rest from anywhere, e.g. a CI clean-up job on a fresh machine: a build counts
as dead when its temporary resources are older than `--older-than` (creation time =
`bakery:expires` minus the TTL the bake set), or when it belongs to the CI run named by
`--run-id` (the run's jobs have ended when its clean-up job runs): then every region the recipes
publish to is swept too, and what takes no tags is found by the run's mark in its description
(SSM parameter versions, put back; launch template versions, deleted).
Nothing that another run's tags claim is touched, nor a finished image, nor a live run. A
finished checkpoint (bakery/bake/checkpoints.py) outlives its build on purpose: it goes once its
own bakery:expires has passed, unless an instance or a launch template still uses it.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bakery.cloud import tags as T
from bakery.errors import BakeryError, ConfigError
from bakery.housekeeping import ledger
from bakery.housekeeping.cleanup import clean_build


@dataclass
class JanitorReport:
    builds: dict[str, list[str]] = field(default_factory=dict)  # build id -> what was (or would be) removed
    live: list[str] = field(default_factory=list)               # builds left alone
    failed: list[str] = field(default_factory=list)             # what could not be removed (stays in the ledger)
    dry_run: bool = False


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise ConfigError(f"--older-than {text!r}: expected a number and a unit, like 30m, 6h or 2d")
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    return timedelta(**{units[match.group(2)]: int(match.group(1))})


def _builds(ec2) -> dict[str, dict[str, str]]:
    """Every build id on a temporary resource (not on a product), with the tags seen on it."""
    found: dict[str, dict[str, str]] = {}
    for resources in ec2.tagged(T.BUILD_ID, None).values():
        for resource in resources:
            tags = T.tags_of(resource)
            if not T.is_product(tags):
                found.setdefault(tags[T.BUILD_ID], tags)
    return found


def janitor(ec2, *, older_than: timedelta | None, run_id: str | None, dry_run: bool,
            ledger_dir: Path | None = None, keys_dir: Path | None = None, regions: list[str] = ()) -> JanitorReport:
    """`keys_dir` (STATE/keys): a build found dead by its tags loses its private key file too.
    `regions`: with `run_id`, the other regions the run may have published to (recipes'
    publish.regions), swept as the home region is."""
    report = JanitorReport(dry_run=dry_run)
    dead_here: set[str] = set()
    if ledger_dir is not None:
        dead, live = ledger.dead_runs(ledger_dir)
        report.live.extend(live)
        for run in dead:
            if run_id is not None and run.ci_run != run_id:
                continue
            dead_here.add(run.run)
            report.builds[run.run] = _clean_ledger_run(ec2, run, dry_run, report)
    if older_than is None and run_id is None:
        older_than = T.TEMP_TTL  # by default only what has outlived its own expiry tag
    now = datetime.now(timezone.utc)
    for build, tags in sorted(_builds(ec2).items()):
        if build in report.live:
            continue
        dead = build in dead_here
        if run_id is not None:
            dead = dead or tags.get(T.RUN_ID) == run_id
        elif T.created_at(tags) is not None:
            dead = dead or T.created_at(tags) + older_than <= now
        if not dead:
            report.live.append(build)
            continue
        listed = report.builds.setdefault(build, [])
        by_ledger = {item.split()[1] for item in listed}  # "kind id [in region]"
        listed.extend(item for item in clean_build(ec2, build, dry_run=dry_run, keys_dir=keys_dir).removed
                      if item.split()[-1] not in by_ledger)
    if run_id is not None:
        for region in dict.fromkeys([ec2.region, *regions]):
            _sweep_run(ec2.in_region(region), run_id, dry_run, report, home=region == ec2.region, keys_dir=keys_dir)
    _expired_checkpoints(ec2, now, dry_run, report)
    return report


def _sweep_run(ec2, run_id: str, dry_run: bool, report: JanitorReport, *, home: bool, keys_dir: Path | None) -> None:
    """What a CI run left in one region, found without its ledger (a fresh machine's clean-up
    job): resources tagged with the run (builders, groups, key pairs, unfinished images and
    copies), SSM parameters it was the last to write (put back to the value before it, or
    deleted if it made them) and launch template versions it added (both marked in their
    description: tags.run_mark)."""
    where = f" in {ec2.region}"
    if not home:  # the home region's tagged builds were swept above
        for build, tags in sorted(_builds(ec2).items()):
            if tags.get(T.RUN_ID) == run_id:
                report.builds.setdefault(build, []).extend(
                    f"{item}{where}" for item in clean_build(ec2, build, dry_run=dry_run, keys_dir=keys_dir).removed)
    for name, before, ours in ec2.parameters_marked(run_id):
        report.builds.setdefault(f"run {run_id}", []).append(
            f"ssm-parameter {name}{where} ({'put back to ' + before if before else 'deleted: the run made it'})")
        if not dry_run:
            ec2.restore_parameter(name, before, ours)
    for name, version in ec2.template_versions_marked(run_id):
        report.builds.setdefault(f"run {run_id}", []).append(f"launch-template-version {name}:{version}{where}")
        if not dry_run:
            try:
                ec2.delete_launch_template_version(name, version)
            except BakeryError as exc:
                report.failed.append(f"run {run_id}: launch template {name} version {version}{where}: {exc.message}")


def _expired_checkpoints(ec2, now: datetime, dry_run: bool, report: JanitorReport) -> None:
    from bakery.housekeeping.prune import expired_checkpoints, references

    expired = expired_checkpoints(ec2, None, now)
    used = references(ec2) if expired else {}
    for image in expired:
        ami, build = image["ImageId"], T.tags_of(image).get(T.BUILD_ID, "?")
        if ami in used:
            report.live.append(f"{build} (expired checkpoint {ami}: {used[ami]})")
            continue
        report.builds.setdefault(build, []).append(f"expired checkpoint {ami}")
        if not dry_run:
            ec2.deregister_image(ami)


def _clean_ledger_run(ec2, run: ledger.DeadRun, dry_run: bool, report: JanitorReport) -> list[str]:
    """Remove a dead run's outstanding entries in dependency order; record what went."""
    removed, gone, terminating = [], [], []

    def wait_terminated():
        for inst in terminating:  # groups and key pairs outlive the instances that use them
            ec2.in_region(inst.region).wait_instance_state(inst.id, "terminated", timeout=600)
        gone.extend(terminating)
        terminating.clear()

    order = {kind: i for i, kind in enumerate(ledger.REMOVAL_ORDER)}
    for entry in sorted(run.outstanding, key=lambda e: order.get(e.kind, len(order))):
        if entry.kind != "instance" and terminating:
            wait_terminated()
        try:
            verdict = _remove(ec2.in_region(entry.region) if entry.region else None, run.run, entry, dry_run)
        except BakeryError as exc:
            report.failed.append(f"{run.run}: {entry.label()}: {exc.message}")
            continue  # stays in the ledger for the next janitor
        if verdict == "removed":
            removed.append(entry.label())
        if verdict == "removed" and entry.kind == "instance" and not dry_run:
            terminating.append(entry)
        else:
            gone.append(entry)  # removed, already gone, or not ours to remove: settled either way
    if terminating:
        wait_terminated()
    if not dry_run:
        ledger.settle(run, gone)
    return removed


def _claim(found: dict | None, run: str) -> str:
    """'gone' when there is nothing, 'spared' when its tags say it belongs to another run, else 'ours'."""
    if found is None:
        return "gone"
    return "ours" if T.owner_run(T.tags_of(found)) in (None, run) else "spared"


def _remove(ec2, run: str, entry: ledger.Entry, dry_run: bool) -> str:
    """'removed' (or would be), 'gone' (nothing left to do), or 'spared' (a product or not ours)."""
    state, delete = _inspect(ec2, run, entry)
    if state != "ours":
        return state
    if not dry_run:
        delete()
    return "removed"


def _inspect(ec2, run: str, entry: ledger.Entry):
    """What is left of one ledger entry ('gone', 'spared' or 'ours'), and how to remove it."""
    kind, rid = entry.kind, entry.id
    if kind == "key-file":
        return ("ours" if Path(rid).exists() else "gone"), lambda: shutil.rmtree(rid, ignore_errors=True)
    if kind == "instance":
        inst = ec2.describe_instance(rid)
        if inst is not None and inst["State"]["Name"] in ("shutting-down", "terminated"):
            inst = None
        return _claim(inst, run), lambda: ec2.terminate_instance(rid)
    if kind == "security-group":
        return _claim(ec2.security_group(rid), run), lambda: ec2.delete_security_group(rid)
    if kind == "key-pair":
        return _claim(ec2.key_pair(rid), run), lambda: ec2.delete_key_pair(rid)
    if kind == "image":
        image = ec2.image(rid)
        state = _claim(image, run)
        if state == "ours" and T.is_product(T.tags_of(image)):
            state = "spared"  # the run died after finishing it (or the smoke test kept it)
        return state, lambda: ec2.deregister_image(rid)
    if kind == "ssm-parameter":
        value = entry.extra.get("value")
        # gone: never published, already restored, or published over since
        state = "ours" if ec2.parameter_value(rid) == value else "gone"
        return state, lambda: ec2.restore_parameter(rid, entry.extra.get("previous"), value)
    if kind == "auto-scaling-group":  # first: a group left alone replaces the instances taken from it
        return _claim(ec2.auto_scaling_group(rid), run), lambda: ec2.delete_auto_scaling_group(rid)
    if kind == "launch-template-version":
        return "ours", lambda: ec2.delete_launch_template_version(entry.extra["name"], int(entry.extra["version"]))
    raise ConfigError(f"ledger {run}: unknown resource kind {kind!r}")


def publish_regions(recipes_dir: Path) -> list[str]:
    """Every region a recipe here publishes copies to: where a run's leftovers can be. A recipe
    that does not load cannot have published anything."""
    from bakery.config.recipe import list_recipes, load_recipe

    regions: list[str] = []
    for name in list_recipes(recipes_dir):
        try:
            recipe = load_recipe(recipes_dir, name)
        except BakeryError:
            continue
        regions += [r for r in (recipe.publish.regions if recipe.publish else []) if r not in regions]
    return regions
