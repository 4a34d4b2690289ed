"""One bake of one recipe: decide whether to bake at all, then run the pipeline.

Before anything is created: the source image is resolved and the inputs hashed; a finished image
with the same inputs hash ends the bake there (well under a second, no builder). Otherwise, under
a lock that makes a second bake of the same recipe on this machine wait and then find the first
one's image, the pipeline's steps run inside a tracked run: a ledger and one clean-up stack that
undoes what was made in reverse on any failure or signal (bakery/housekeeping/stack.py).
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone

from bakery.bake.inputs import Inputs, load_inputs
from bakery.bake.publish import refuse_unshareable
from bakery.bake.state import BakeState, Manifest
from bakery.cloud.connect import Cloud, open_cloud
from bakery.config.settings import Settings
from bakery.errors import ConfigError
from bakery.progress import Reporter


def new_build_id() -> str:
    return datetime.now(timezone.utc).strftime("b-%Y%m%d%H%M%S-") + secrets.token_hex(3)


def checked_variables(settings: Settings, inputs: Inputs, given: dict[str, str]) -> dict[str, str]:
    """The run's variables, once what the files and flags alone can refuse has been refused:
    before the cloud opens (bakery/render/validate.py: `check_recipe`)."""
    from bakery.bake.attest import check_settings
    from bakery.render.validate import check_recipe

    variables = inputs.resolve_vars(given)
    check_recipe(settings, inputs.full(), variables if given else None)  # the defaults rendered at load
    check_settings(settings)
    return variables


class Bake:
    """One run of one recipe. `run()` returns the Manifest or raises a BakeryError."""

    def __init__(self, settings: Settings, inputs: Inputs, variables: dict[str, str], *, report: Reporter,
                 force: bool = False, keep_on_error: bool = False, cloud: Cloud | None = None,
                 freshness: bool = False, checkpoints: bool = False):
        self.settings = settings
        self.inputs = inputs
        self.variables = checked_variables(settings, inputs, variables)
        self.report = report
        self.force = force
        self.keep_on_error = keep_on_error
        self.freshness = freshness  # rebake: an image of unchanged inputs may still be stale
        self.checkpoints = checkpoints  # bake: keep checkpoints and resume from them (bakery/bake/checkpoints.py)
        self.cloud = cloud or open_cloud(settings)
        self.build_id = new_build_id()
        self.started = time.monotonic()

    def run(self) -> Manifest:
        ec2, r = self.cloud.ec2, self.report
        started_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with r.stage("resolve source image") as s:
            try:
                source = ec2.resolve_source(self.inputs.source)
            except ConfigError as exc:
                raise ConfigError(f"{self.inputs.path}: {exc.message}") from None
            s.detail = f"{source.id} ({source.name})"
        refuse_unshareable(self.inputs.full(), self.inputs.path, ec2)
        with r.stage("hash inputs") as s:
            from bakery.bake.digests import DigestCache
            from bakery.bake.inputs import inputs_hash

            digest = inputs_hash(self.inputs, self.variables, source.id,
                                 DigestCache(self.settings.state / "digests.json"))
            s.detail = digest
        manifest = Manifest(recipe=self.inputs.name, build_id=self.build_id, region=ec2.region, ami_id=None,
                            image_name=None, source_ami=source.id, inputs_hash=digest, skipped=False, reason="",
                            started_at=started_at, seconds=0.0, variables=self.variables)
        if not self.force and self._skip(manifest):
            return manifest
        # Two bakes of one recipe on this machine: the second waits, then finds the first's image.
        with self._lock():
            if not self.force and self._skip(manifest):
                return manifest
            manifest.reason = "forced" if self.force else manifest.reason or "no image with these inputs"
            prefixes, resume = self._resume_point(source) if self.checkpoints else ([], None)
            try:
                self._build(source, manifest, prefixes, resume)
            except BaseException as exc:
                # a failed bake keeps its manifest too: its timeline is the one most worth a look
                manifest.error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                self._keep(manifest)
                raise
        self._keep(manifest)
        return manifest

    def _keep(self, manifest: Manifest) -> None:
        manifest.stages, manifest.timeline = self.report.timings(), self.report.timeline()
        manifest.seconds = round(time.monotonic() - self.started, 3)
        try:
            manifest.write(self.settings.manifests)
        except OSError as exc:
            if manifest.error is None:
                raise
            self.report.warn(f"the failed bake's manifest was not kept: {exc}")  # never instead of its error

    def _resume_point(self, source):
        """Every step's checkpoint hash, and the deepest checkpoint this bake can start from."""
        from bakery.bake.checkpoints import find_resume
        from bakery.bake.digests import DigestCache
        from bakery.bake.inputs import prefix_hashes

        prefixes = prefix_hashes(self.inputs, self.variables, source.id,
                                 DigestCache(self.settings.state / "digests.json"))
        if len(prefixes) < 2:
            return prefixes, None
        with self.report.stage("find checkpoint") as s:
            resume = find_resume(self.cloud.ec2, self.inputs.name, prefixes)
            s.detail = (f"{resume.image.id} holds steps 1-{resume.after + 1} of {len(prefixes)}" if resume
                        else "none for these steps")
        return prefixes, resume

    def _build(self, source, manifest: Manifest, prefixes: list[str], resume) -> None:
        from bakery.bake.checkpoints import cached_records
        from bakery.bake.pipeline import run_steps, steps_for
        from bakery.bake.state import Context
        from bakery.config.recipe import template_context
        from bakery.housekeeping.cleanup import clean_build
        from bakery.housekeeping.stack import tracked_run

        recipe = self.inputs.full()
        state = BakeState(recipe=recipe, variables=self.variables, build_id=self.build_id,
                          context=template_context(recipe, self.variables, self.build_id,
                                                   datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")),
                          source=source, manifest=manifest, checkpoints=self.checkpoints, prefixes=prefixes)
        if resume is not None:
            state.launch_from, state.since = resume.image, resume.after + 1
            manifest.resumed_from = {"image": resume.image.id, "after_step": resume.after + 1}
            manifest.steps.extend(cached_records(state, resume))
        ec2 = self.cloud.ec2
        with tracked_run(self.settings.state, self.build_id, f"bake {recipe.name}", self.report,
                         keep_on_error=self.keep_on_error, on_keep=lambda: self._kept(state),
                         sweep=lambda: clean_build(ec2, self.build_id,
                                                          keys_dir=self.settings.state / "keys").removed) as stack:
            ctx = Context(self.settings, ec2, self.cloud.dial, self.report, stack)
            run_steps(steps_for(recipe, state.since), state, ctx)

    def _skip(self, manifest: Manifest) -> bool:
        existing = self.cloud.ec2.bakery_images(recipe=self.inputs.name, inputs_hash=manifest.inputs_hash)
        if not existing:
            return False
        image = existing[0]
        if self.freshness:
            from bakery.evidence.freshness import image_verdict

            verdict = image_verdict(self.settings, self.cloud.ec2, self.inputs.full().freshness, image,
                                    datetime.now(timezone.utc))
            for warning in verdict.warnings:
                self.report.warn(f"{image['ImageId']}: {warning}")
            if verdict.reason:
                manifest.reason = f"{image['ImageId']} {verdict.reason}"
                return False
        manifest.skipped, manifest.ami_id, manifest.image_name = True, image["ImageId"], image.get("Name")
        manifest.reason = f"inputs unchanged: {image['ImageId']} already has inputs hash {manifest.inputs_hash}"
        manifest.seconds = round(time.monotonic() - self.started, 3)
        return True

    def _lock(self):
        from bakery.housekeeping.locks import exclusive

        return exclusive(self.settings.state / "locks", f"bake-{self.cloud.ec2.region}-{self.inputs.name}",
                         lambda: self.report.stage(f"wait for another bake of {self.inputs.name} running here"))

    def _kept(self, state: BakeState) -> None:
        """--keep-on-error: say what was kept, how to reach the builder and how to remove it all."""
        made = [("key pair", state.key_name), ("security group", state.group_id),
                ("instance", (state.builder or {}).get("InstanceId")), ("image", state.image_id)]
        self.report.warn(f"--keep-on-error: kept build {self.build_id}: "
                         + ", ".join(f"{what} {rid}" for what, rid in made if rid))
        if state.builder and state.key_file:  # the build's key and pinned host key, on either cloud
            self.report.warn(f"  reach it:  invoke ssh --instance {state.builder['InstanceId']}")
        self.report.warn(f"  remove it: invoke clean --build-id {self.build_id}")


def bake(settings: Settings, recipe_name: str, variables: dict[str, str], *, report: Reporter,
         force: bool = False, keep_on_error: bool = False, cloud: Cloud | None = None,
         cache: bool = True) -> Manifest:
    """Check the recipe offline (or know it unchanged since it was), then open the cloud and bake it,
    resuming from its checkpoints unless `cache` is off (bakery/bake/checkpoints.py).

    A layered recipe (`source: {recipe: ...}`) first brings the recipes below it up to date, root
    first, each with its own defaults and never forced: an unchanged one costs a lookup, and the
    recipe is then baked on what its parent's files now say."""
    from bakery.bake.layers import parents
    from bakery.config.abstract import refuse_abstract

    refuse_abstract(settings.recipes, recipe_name, "bake")
    inputs = load_inputs(settings.recipes, settings.state, recipe_name)
    below = parents(settings, inputs)
    if below:  # every layer checked offline before the cloud opens (Bake checks a lone recipe itself)
        checked_variables(settings, inputs, variables)
        for parent in below:
            checked_variables(settings, parent, {})
        cloud = cloud or open_cloud(settings)
    for parent in below:
        Bake(settings, parent, {}, report=report.prefixed(f"[{parent.name}] "), keep_on_error=keep_on_error,
             cloud=cloud, checkpoints=cache).run()
    return Bake(settings, inputs, variables, report=report, force=force, keep_on_error=keep_on_error,
                cloud=cloud, checkpoints=cache).run()
