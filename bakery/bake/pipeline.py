"""The bake as data: a list of steps over one typed state, run in order.

Like Packer's builder (builder/ebs/builder.go, multistep/basic_runner.go), each step does one
thing and, the moment it creates something, registers that thing's undo on the run's clean-up
stack (bakery/housekeeping/stack.py), which undoes in reverse however the bake ends. A step
that fails raises; the runner stops there. Spot builders, a reboot, or another way to publish
are a step added to or swapped in this list; a checkpoint (bakery/bake/checkpoints.py) after a
recipe step images the builder and runs the builder steps again from that image.
"""

from __future__ import annotations

from bakery.bake import attest, publish, smoke
from bakery.bake import steps as s
from bakery.bake.checkpoints import CachedStep, Checkpoint
from bakery.bake.state import Step, run_steps
from bakery.config.recipe import Recipe

__all__ = ["steps_for", "run_steps"]


def builder_steps(recipe: Recipe) -> list[Step]:
    """A builder from `state.launch_from` (the source, or a checkpoint), up and reachable."""
    pin = [s.ReadHostKey()] if recipe.builder.host_key == "console" else []  # else it came with the user data
    return [s.LaunchBuilder(), s.WaitForBuilder(), *pin, s.ConnectSSH(), s.WaitForCloudInit()]


def steps_for(recipe: Recipe, first: int = 0) -> list[Step]:
    """What a bake does, top to bottom; `first`: the first recipe step to run (a checkpoint
    holds the ones before it)."""
    return [
        s.CreateKeyPair(),
        s.CreateSecurityGroup(),
        *builder_steps(recipe),
        *(CachedStep(index) for index in range(first)),
        *(step for index in range(first, len(recipe.steps))  # none after the last: the image is its checkpoint
          for step in (s.RunRecipeStep(index), *([Checkpoint(index, lambda: builder_steps(recipe))]
                                                 if index < len(recipe.steps) - 1 else []))),
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
