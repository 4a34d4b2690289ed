"""The image lifecycle around the bake: scheduled rebakes that bake only what changed, and
pruning that never removes an image something still uses.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from bakery.errors import BakeryError, ConfigError
from bakery.progress import Reporter
from bakery.config.recipe import list_recipes
from bakery.config.settings import Settings


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
    from bakery.bake import bake

    names = recipes or list_recipes(settings.recipes)
    unknown = [n for n in names if n not in list_recipes(settings.recipes)]
    if unknown:
        raise ConfigError(f"{settings.recipes}: no such recipe {unknown[0]!r} "
                          f"(known: {', '.join(list_recipes(settings.recipes))})")
    rows = []
    for name in names:
        started = time.monotonic()
        try:
            manifest = bake(settings, name, {}, report=Reporter(prefix=f"[{name}] ", stream=report.stream,
                                                               quiet=report.quiet), force=force)
            decision = "unchanged" if manifest.skipped else "rebaked"
            reason = manifest.reason if manifest.skipped else (
                "forced" if force else f"inputs changed (hash {manifest.inputs_hash})")
            rows.append(RebakeRow(name, decision, reason, manifest.ami_id, round(time.monotonic() - started, 3)))
        except BakeryError as exc:
            rows.append(RebakeRow(name, "failed", exc.message, None, round(time.monotonic() - started, 3)))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(markdown(rows) + "\n")
    return rows


def markdown(rows: list[RebakeRow]) -> str:
    lines = ["| recipe | decision | reason | AMI | duration |", "|---|---|---|---|---|"]
    for r in rows:
        reason = r.reason.replace("|", "\\|")
        lines.append(f"| {r.recipe} | {r.decision} | {reason} | {r.ami_id or '-'} | {r.seconds:.1f}s |")
    return "\n".join(lines)


def table(rows: list[RebakeRow]) -> str:
    w = max([len(r.recipe) for r in rows] + [6])
    out = [f"{'RECIPE':{w}}  {'DECISION':9}  {'AMI':21}  {'SECONDS':>7}  REASON"]
    out += [f"{r.recipe:{w}}  {r.decision:9}  {r.ami_id or '-':21}  {r.seconds:7.2f}  {r.reason}" for r in rows]
    return "\n".join(out)


def rows_json(rows: list[RebakeRow]) -> list[dict]:
    return [asdict(r) for r in rows]


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
    c = ec2.client
    used: dict[str, str] = {}
    templates = ec2.call("describe-launch-templates", c.describe_launch_templates)["LaunchTemplates"]
    for lt in templates:
        versions = ec2.call("describe-launch-template-versions", c.describe_launch_template_versions,
                            LaunchTemplateId=lt["LaunchTemplateId"])["LaunchTemplateVersions"]
        for v in versions:
            ami = v.get("LaunchTemplateData", {}).get("ImageId")
            if ami:
                used.setdefault(ami, f"launch template {lt['LaunchTemplateName']} version {v['VersionNumber']}")
    ssm = ec2.ssm
    for page in ssm.get_paginator("describe_parameters").paginate():
        for param in page["Parameters"]:
            for hist in ssm.get_paginator("get_parameter_history").paginate(Name=param["Name"]):
                for v in hist["Parameters"]:
                    if str(v.get("Value", "")).startswith("ami-"):
                        used.setdefault(v["Value"], f"SSM parameter {param['Name']} version {v.get('Version')}")
    for r in ec2.describe_all("describe_instances", "Reservations", Filters=[
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]):
        for inst in r["Instances"]:
            used.setdefault(inst["ImageId"], f"instance {inst['InstanceId']} ({inst['State']['Name']})")
    return used


def prune(settings: Settings, recipe: str, keep: int, *, dry_run: bool, report: Reporter,
          regions: list[str] | None = None) -> list[PruneReport]:
    """Keep the newest `keep` images of a recipe in each region; deregister the rest (and delete
    their snapshots) unless something still uses them."""
    import dataclasses

    from bakery.cloud.ec2 import EC2

    if keep < 1:
        raise ConfigError(f"--keep {keep}: keep at least one image")
    if recipe not in list_recipes(settings.recipes):
        raise ConfigError(f"{settings.recipes}: no such recipe {recipe!r}")
    out = []
    home = EC2(settings)
    for region in [home.region] + [r for r in (regions or []) if r != home.region]:
        ec2 = home if region == home.region else EC2(dataclasses.replace(home.settings, region=region),
                                                     session=home.session)
        result = PruneReport(f"{recipe}@{region}", dry_run=dry_run)
        images = ec2.bakery_images(recipe=recipe, states=("available",))
        failed = [i for i in ec2._describe_images(Owners=["self"], Filters=[
            {"Name": "tag:bakery:recipe", "Values": [recipe]}, {"Name": "tag:bakery:smoke", "Values": ["failed"]}])]
        used = references(ec2)
        result.kept = [i["ImageId"] for i in images[:keep]]
        for image in images[keep:] + failed:
            ami = image["ImageId"]
            if ami in used:
                result.spared[ami] = used[ami]
                continue
            result.removed.append(ami)
            if not dry_run:
                with report.stage(f"deregister {ami} in {region}"):
                    ec2.deregister_image(ami)
        out.append(result)
    return out
