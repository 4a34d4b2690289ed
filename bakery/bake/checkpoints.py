"""Checkpoints: `bake` resumes after the last step whose result it already has.

A checkpoint is an image of the builder taken after a recipe step, made the way the product is
made (hygiene, the leftover check, a stopped builder, CreateImage), and tagged with the hash of
everything up to and including that step (bakery/bake/inputs.py: `prefix_hashes`). The bake then
goes on from that image on a new builder with new keys, exactly as a later bake resuming from it
will: the two paths are one, so a green bake proves its resume. A bake whose first N steps hash
the same starts its builder from the deepest matching checkpoint and runs step N+1 on; its
inputs hash and manifest still describe the whole recipe (the skipped steps are listed as
`cached`, with the image they came from).

Which steps are followed by one: those marked `checkpoint: true`, and (settings.checkpoint_after,
on by default on the local cloud only) any run of steps that took that long since the last one.
Never after the last step: the image is its checkpoint. `rebake` and the scheduled workflow never
use checkpoints (a resumed image would freeze the packages of its cached steps), nor does
`bake --no-cache`.

A checkpoint is kept through a failed bake (that is when it is wanted: fix the step, bake again)
until its bakery:expires, `checkpoint_days` after it was made; `prune` and the janitor then
remove it. Until it is finished (available, tagged with its hash) it is the bake's to undo, as
any temporary resource is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from bakery.bake.state import BakeState, Context, Step, StepRecord, run_steps
from bakery.bake.steps import CheckForLeftovers, CleanImage, StopBuilder
from bakery.cloud import tags as T
from bakery.cloud.images import SourceImage, snapshots_of, source_image


@dataclass(frozen=True)
class Resume:
    after: int           # the index of the last step the checkpoint holds
    image: SourceImage


def find_resume(ec2, recipe: str, prefixes: list[str], now: datetime | None = None) -> Resume | None:
    """The deepest unexpired checkpoint of `recipe` whose hash matches this bake's, if any."""
    if len(prefixes) < 2:  # a one-step recipe has nothing to resume from
        return None
    now = now or datetime.now(timezone.utc)
    by_hash: dict[str, dict] = {}
    for image in ec2.checkpoint_images(recipe):  # newest first: a duplicate's newest wins
        tags = T.tags_of(image)
        if not T.expired(tags, now):
            by_hash.setdefault(tags[T.CHECKPOINT], image)
    for index in range(len(prefixes) - 2, -1, -1):
        if prefixes[index] in by_hash:
            return Resume(index, source_image(by_hash[prefixes[index]]))
    return None


def cached_records(state: BakeState, resume: Resume) -> list[StepRecord]:
    """The manifest's lines for the steps a resumed bake did not run."""
    return [StepRecord(step.name, step.kind, "cached", None, 0, 0.0) for step in state.recipe.steps[:resume.after + 1]]


class CachedStep:
    """A step the builder's image already holds: its line says so, and where from."""

    title = None

    def __init__(self, index: int):
        self.index = index

    def run(self, state: BakeState, ctx: Context) -> None:
        steps = state.recipe.steps
        label = f"step {self.index + 1}/{len(steps)}: {steps[self.index].name}"
        with ctx.report.stage(label, kind="step") as stage:
            stage.detail = f"cached in checkpoint {state.manifest.resumed_from['image']}"


class Checkpoint:
    """After step `index`: when it is wanted, image the builder and go on from that image."""

    title = None  # a stage line only when it takes one

    def __init__(self, index: int, relaunch: Callable[[], list[Step]]):
        self.index = index
        self.relaunch = relaunch  # the pipeline's own builder steps (launch, wait, SSH, cloud-init)

    def wanted(self, state: BakeState, ctx: Context) -> bool:
        steps = state.recipe.steps
        if not state.checkpoints:
            return False
        if steps[self.index].checkpoint:
            return True
        after = ctx.settings.checkpoint_after
        return after is not None and sum(r.seconds for r in state.manifest.steps[state.since:]) >= after

    def run(self, state: BakeState, ctx: Context) -> None:
        if not self.wanted(state, ctx):
            return
        total = len(state.recipe.steps)
        # hygiene and the leftover check first, as for the product: a checkpoint is an image in
        # the account like any other, and must carry no key or credential
        run_steps([CleanImage(), CheckForLeftovers(), StopBuilder()], state, ctx)
        with ctx.report.stage(f"checkpoint after step {self.index + 1}/{total}") as stage:
            image = self._image(state, ctx)
            stage.detail = f"{image.id}, kept {ctx.settings.checkpoint_days} days"
        # the old builder has done its part: it goes now (terminated, waited for), not at the end
        ctx.stack.undo_now("instance", state.builder["InstanceId"], ctx.ec2.region)
        state.launch_from, state.since = image, self.index + 1
        state.manifest.checkpoints.append({"image": image.id, "after_step": self.index + 1})
        run_steps(self.relaunch(), state, ctx)

    def _image(self, state: BakeState, ctx: Context) -> SourceImage:
        ec2, recipe, n = ctx.ec2, state.recipe, self.index + 1
        tags = {**T.build_tags(recipe.name, state.build_id, T.ROLE_CHECKPOINT, temporary=True),
                T.CHECKPOINT_STEP: f"{n}/{len(recipe.steps)}", T.SOURCE_AMI: state.source.id}
        name = f"bakery-checkpoint-{recipe.name}-{state.build_id}-{n}"
        image_id = ec2.create_image(state.builder["InstanceId"], name,
                                    f"bakery checkpoint of {recipe.name} after step {n}: {recipe.steps[self.index].name}",
                                    tags)
        ctx.stack.created("image", image_id, ec2.region, f"unfinished checkpoint {image_id}",
                          lambda: ec2.deregister_image(image_id))
        image = ec2.wait_image_available(image_id, timeout=3600)
        ec2.tag(snapshots_of(image), {**tags, T.ROLE: "snapshot"})
        # Finished: found by its hash from now on, and kept (through a failure of a later step)
        # until it expires.
        expires = (datetime.now(timezone.utc) + timedelta(days=ctx.settings.checkpoint_days)).strftime(T.TIME_FORMAT)
        ec2.tag([image_id, *snapshots_of(image)], {T.CHECKPOINT: state.prefixes[self.index], T.EXPIRES: expires})
        ctx.stack.keep("image", image_id, ec2.region)
        return source_image(image)
