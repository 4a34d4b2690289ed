"""The bake as data: a list of steps over one typed state, run in order.

Like Packer's builder (builder/ebs/builder.go, multistep/basic_runner.go), each step does one
thing and, the moment it creates something, registers that thing's undo on the run's clean-up
stack (bakery/housekeeping/stack.py), which undoes in reverse however the bake ends. A step
that fails raises; the runner stops there. Spot builders, a reboot, or another way to publish
are a step added to or swapped in this list.
"""

from __future__ import annotations

from bakery.bake import attest, publish, smoke
from bakery.bake import steps as s
from bakery.bake.state import BakeState, Context, Step
from bakery.config.recipe import Recipe


def steps_for(recipe: Recipe) -> list[Step]:
    """What a bake does, top to bottom."""
    return [
        s.CreateKeyPair(),
        s.CreateSecurityGroup(),
        s.LaunchBuilder(),
        s.WaitForBuilder(),
        s.ConnectSSH(),
        s.WaitForCloudInit(),
        *(s.RunRecipeStep(index) for index in range(len(recipe.steps))),
        s.CollectSbom(),  # what the steps made, read while the connection is open (the leftover check hangs up)
        s.CleanImage(),
        s.CheckForLeftovers(),
        s.StopBuilder(),
        s.CreateImage(),
        s.WaitForImage(),
        attest.KeepSbom(),
        attest.GateImage(),  # before the smoke test and the publish: a failing image goes nowhere
        *([smoke.SmokeTest()] if recipe.checks else []),
        *([publish.PublishParameter()] if recipe.image.ssm_parameter else []),
        *([publish.Publish()] if recipe.publish else []),
        attest.SignProvenance(),  # every regional image exists now
        s.MarkFinished(),
    ]


def run_steps(steps: list[Step], state: BakeState, ctx: Context) -> None:
    for step in steps:
        if step.title is None:
            step.run(state, ctx)
            continue
        with ctx.report.stage(step.title) as stage:
            stage.detail = step.run(state, ctx) or ""
