"""`invoke prune`: keep a recipe's newest finished images in each region and deregister the rest
(and their snapshots), with its expired checkpoints (bakery/bake/checkpoints.py), never one that
something still uses: a launch template version, any version of an SSM parameter, or an instance
that is not terminated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from bakery.cloud import tags as T

from bakery.config.recipe import recipe_path
from bakery.config.settings import Settings
from bakery.errors import ConfigError
from bakery.progress import Reporter


@dataclass
class PruneReport:
    recipe: str
    kept: list[str] = field(default_factory=list)
    spared: dict[str, str] = field(default_factory=dict)  # AMI -> what still uses it
    removed: list[str] = field(default_factory=list)
    dry_run: bool = False


def references(ec2) -> dict[str, str]:
    """Every AMI something still points at, with what: launch template versions, SSM parameters
    (every version of every parameter), and instances that are not terminated."""
    used = ec2.images_in_launch_templates()
    for ami, why in ec2.images_in_parameters().items():
        used.setdefault(ami, why)
    for inst in ec2.instances():
        used.setdefault(inst["ImageId"], f"instance {inst['InstanceId']} ({inst['State']['Name']})")
    return used


def expired_checkpoints(ec2, recipe: str | None, now: datetime | None = None) -> list[dict]:
    """Finished checkpoints (of one recipe, or all) whose bakery:expires has passed."""
    now = now or datetime.now(timezone.utc)
    return [image for image in ec2.checkpoint_images(recipe) if T.expired(T.tags_of(image), now)]


def check(settings: Settings, recipe: str, keep: int) -> None:
    """Refuse bad flags before any cloud call."""
    if keep < 1:
        raise ConfigError(f"--keep {keep}: keep at least one image")
    recipe_path(settings.recipes, recipe)


def prune(ec2, recipe: str, keep: int, *, dry_run: bool, report: Reporter,
          regions: list[str] | None = None) -> list[PruneReport]:
    """Keep the newest `keep` images of a recipe in each region; deregister the rest (and delete
    their snapshots) unless something still uses them."""
    out = []
    for region in [ec2.region] + [r for r in (regions or []) if r != ec2.region]:
        here = ec2.in_region(region)
        result = PruneReport(f"{recipe}@{region}", dry_run=dry_run)
        images = here.bakery_images(recipe=recipe, states=("available",))
        used = references(here)
        result.kept = [i["ImageId"] for i in images[:keep]]
        for image in images[keep:] + here.rejected_images(recipe) + expired_checkpoints(here, recipe):
            ami = image["ImageId"]
            if ami in used:
                result.spared[ami] = used[ami]
                continue
            result.removed.append(ami)
            if not dry_run:
                with report.stage(f"deregister {ami} in {region}"):
                    here.deregister_image(ami)
        out.append(result)
    return out
