"""What each task prints, and the exit status its outcome deserves.

tasks.py parses flags and calls bakery; the result comes here to be printed (JSON on request,
else lines for people) on stdout, while progress stays on stderr. A task whose outcome is a
failure (a recipe that failed to rebake, problems found by validate, leftovers the janitor could
not remove) exits non-zero from here, after printing what it found.
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
from dataclasses import asdict

from bakery.cli import emit, tables
from bakery.errors import CloudError


def _json(data) -> None:
    emit(jsonlib.dumps(data, indent=2))


def bake(manifest, *, json: bool) -> None:
    if json:
        emit(manifest.to_json())
    elif manifest.skipped:
        emit(f"{manifest.ami_id} unchanged ({manifest.reason})")
    else:
        resumed = manifest.resumed_from
        emit(f"{manifest.ami_id} {manifest.image_name} baked in {manifest.seconds:.1f}s"
             + (f", resumed after step {resumed['after_step']} from checkpoint {resumed['image']}" if resumed else "")
             + f" (manifest: {manifest.manifest_path})")


def recipe_names(names: list[str]) -> None:
    """One compact JSON list on one line, as a GitHub Actions matrix reads it from a step output."""
    emit(jsonlib.dumps(names, separators=(",", ":")))


def rebake(rows, *, json: bool) -> None:
    from invoke.exceptions import Exit

    emit(tables.rebake_json(rows) if json else tables.rebake_table(rows))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(tables.rebake_markdown(rows) + "\n")
    failed = [r.recipe for r in rows if r.decision == "failed"]
    if failed:
        raise Exit(f"error: {len(failed)} recipe(s) failed: {', '.join(failed)}", code=1)


def prune(reports, *, json: bool, dry_run: bool) -> None:
    if json:
        _json([asdict(r) for r in reports])
    else:
        emit(tables.prune(reports, dry_run))


def diff(result, *, json: bool) -> None:
    if json:
        _json(asdict(result))
    else:
        emit(tables.diff_text(result))


def images(rows, *, json: bool) -> None:
    if json:
        _json(rows)
    else:
        emit(tables.images(rows))


def launch(report, *, json: bool) -> None:
    from bakery.cli.launch import summary

    emit(report.to_json() if json else summary(report))


def rollout(report, *, json: bool) -> None:
    from bakery.cli.launch import rollout_summary

    emit(report.to_json() if json else rollout_summary(report))


def render_text(text: str, note: str | None) -> None:
    """Exactly the user data (or one part), byte for byte (no added newline); a placeholder is said on stderr."""
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    sys.stdout.write(text)
    sys.stdout.flush()


def render_checks(checks) -> None:
    """One line per cloud-config part; exit 2 when any is refused."""
    from invoke.exceptions import Exit

    if not checks:
        emit("ok: no cloud-config part to check")
    for c in checks:
        emit(f"error: {c.problem}" if c.problem else f"ok: {c.part}: valid ({'; '.join(c.checkers)})")
    refused = [c for c in checks if c.problem]
    if refused:
        raise Exit(f"error: {len(refused)} of {len(checks)} cloud-config part(s) refused", code=2)


def validate(problems: list[str], checked: int) -> None:
    from invoke.exceptions import Exit

    for line in problems:
        emit(line)
    if problems:
        raise Exit(f"error: {len(problems)} problem(s) in {checked} file(s)", code=2)
    emit(f"ok: {checked} file(s) valid")


def report(timeline, picture, *, json: bool) -> None:
    if json:
        _json({"recipe": timeline.recipe, "build_id": timeline.build_id, "ami_id": timeline.ami_id,
               "error": timeline.error, "seconds": timeline.seconds, "manifest": str(timeline.manifest), "png": str(picture),
               "stages": [asdict(b) for b in timeline.bars]})
        return
    emit(tables.timeline_table(timeline))
    emit(f"timeline: {picture}")


def scaffold(done) -> None:
    import shlex

    from bakery.scaffold.init import WORKFLOW

    for rel in done.created:
        emit(f"created {rel}")
    for rel in done.kept:
        emit(f"kept {rel} (it exists)")
    if WORKFLOW in done.created and not done.source.pinned:
        what = f"installs {done.source.requirement!r}" if done.source.requirement else "has no bakery to install yet"
        print(f"warning: {WORKFLOW} {what}, not one commit: set its BAKERY_SOURCE (or run init "
              "again with --bakery-source) to 'bakery @ git+https://github.com/OWNER/bakery@COMMIT'", file=sys.stderr)
    where = "" if str(done.directory) == "." else f"cd {shlex.quote(str(done.directory))} && "
    emit(f"next: {where}bakery validate && bakery bake --recipe web (as root: the local cloud)")


def janitor(report) -> None:
    emit(tables.janitor(report))
    if report.failed:
        raise CloudError(f"janitor: {len(report.failed)} resource(s) not removed; run it again when the cause is fixed")


def verified(image_id: str, statement, *, json: bool) -> None:
    if json:
        _json({"image_id": image_id, "verified": True, "keyid": statement.keyid, "recipe": statement.recipe,
               "build_id": statement.build_id, "builder": statement.builder, "subjects": statement.subjects,
               "payload_sha256": statement.payload_sha256})
        return
    emit(f"verified: {image_id}: recipe {statement.recipe}, build {statement.build_id}, built by "
         f"{statement.builder}, signed by key {statement.keyid}")
    for name, digest in statement.subjects.items():
        emit(f"  subject {name}: " + ", ".join(f"{k}:{v}" for k, v in sorted(digest.items())))


def clean(report) -> None:
    emit(tables.clean(report))


def local_install(installed: list[str]) -> None:
    if installed:
        emit(f"installed: {' '.join(installed)}")
    emit("ok: this machine can run the local cloud (root, overlayfs, every package)")


def local_up(url: str) -> None:
    emit(f"local cloud up: {url}")


def local_down(result: dict) -> None:
    machines = (f"{result['instances_destroyed']} instance(s) destroyed, state forgotten" if "instances_destroyed" in result
                else f"{result['instances_stopped']} instance(s) stopped")
    emit(f"local cloud down: {machines}, endpoint {'stopped' if result['endpoint_stopped'] else 'was not running'}")


def local_status(info: dict, *, json: bool) -> None:
    from bakery.cloud import tags as T

    if json:
        _json(info)
        return
    lines = [f"endpoint:  {info['endpoint_url'] or 'not running (starts on demand, or: invoke local.up)'}",
             f"data dir:  {info['data_dir']}"]
    if info["internet"]["netns"]:
        lines.append(f"internet:  netns {info['internet']['netns']} (public addresses answer there; a host on it: "
                     f"{info['internet']['host']})")
    lines.append(f"instances: {len(info['instances'])}")
    for i in info["instances"]:
        where = f"  netns {i['netns']}  init pid {i['init_pid']}" if i.get("netns") else ""
        lines.append(f"  {i['instance_id']}  {i.get('state') or i['machine']:13}  "
                     f"{','.join(i.get('private_ips') or []) or '-':15}{where}")
    lines.append(f"images:    {len(info['images'])}")
    for image in info["images"]:
        size = f"{image['size'] / 1048576:.1f} MiB" if image.get("size") else "base rootfs"
        recipe = image.get("tags", {}).get(T.RECIPE)
        flag = "  (deregistered, kept for images built on it)" if image["deregistered"] else ""
        lines.append(f"  {image['ami_id']}  {image['name']}  {size}{f'  recipe {recipe}' if recipe else ''}{flag}")
    emit("\n".join(lines))


def network_up(actions, *, json: bool, dry_run: bool) -> None:
    if json:
        _json([a.__dict__ for a in actions])
    else:
        emit("\n".join(a.line() for a in actions) + ("\n(dry run: nothing created)" if dry_run else ""))


def network_status(info: dict, *, json: bool) -> None:
    from bakery.cli.network import render_status

    emit(jsonlib.dumps(info, indent=2) if json else render_status(info))


def fleet_status(info: dict, *, json: bool) -> None:
    from bakery.cli.network import render_fleet

    emit(jsonlib.dumps(info, indent=2) if json else render_fleet(info))


def failover(result, *, json: bool) -> None:
    if json:
        _json(asdict(result))
        return
    emit(f"{result.environment}/{result.tier}: interfaces moved {result.from_instance} -> {result.to_instance} "
         f"in {result.seconds:.2f}s")
    for i in result.interfaces:
        emit(f"  {i['eni']} dev {i['device_index']} {','.join(i['ips'])} {i['mac']}")
    if result.from_instance and result.from_problem is None:
        emit(f"  {result.from_instance} is the new standby ({result.from_slot})")
    elif result.from_instance:
        emit(f"  {result.from_instance} is marked {result.from_slot} ({result.from_problem}), kept for inspection; "
             f"`invoke launch --env {result.environment}` launches a new standby")
