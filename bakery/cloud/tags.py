"""bakery's tag vocabulary: every `bakery:*` key, what it means, and the tag sets built from them.

Tags are how bakery finds its own resources again without a state file: a skip finds the image
with the same inputs hash, a re-launch counts the instances in each slot, `network.up` finds what
exists, the janitor tells a dead build from a live one and a product from a leftover. A key
spelled twice is a lookup that silently finds nothing, so every key is defined here once and
nowhere else (tests/test_architecture.py holds the source to that).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

PREFIX = "bakery:"  # reserved: users' own tags may not start with it (nor with aws:)

# ---- builds (bake): temporary resources and the images they make
RECIPE = "bakery:recipe"            # the recipe an image, builder or key pair belongs to
BUILD_ID = "bakery:build-id"        # one bake; the janitor and `invoke clean` find a build's leftovers by it
ROLE = "bakery:role"                # builder | smoke | key-pair | security-group | image | snapshot | checkpoint
                                    # (bakes);
                                    # active | standby | failed (launched instances)
RUN_ID = "bakery:run-id"            # the CI run (BAKERY_RUN_ID) a build belongs to: its clean-up job's handle
EXPIRES = "bakery:expires"          # when a temporary resource is the janitor's, whatever happened to its run
INPUTS_HASH = "bakery:inputs-hash"  # everything that determines the image: the skip looks for it
PROVENANCE = "bakery:provenance"    # sha256 of the image's signed provenance (a DSSE envelope) in the evidence
                                    # store: `invoke verify` finds it by the image alone
GATE = "bakery:vulnerability-gate"  # passed | failed: a failed image is kept for inspection, never published
FINDINGS = "bakery:findings"        # sha256 of the gate's findings (JSON) in the evidence store
SOURCE_AMI = "bakery:source-ami"
COMPLETE = "bakery:complete"        # "true" once smoke-tested and published: the product; never removed by clean-up
SMOKE = "bakery:smoke"              # passed | failed: a failed image is kept for inspection, never used
COPIED_FROM = "bakery:copied-from"  # REGION/AMI a region copy was made from
CHECKPOINT = "bakery:checkpoint"    # on an intermediate image, once it is finished: the hash of everything up to
                                    # and including the step it was taken after (bakery/bake/checkpoints.py);
                                    # `bake` resumes from it; kept until its bakery:expires, then prune's and
                                    # the janitor's
CHECKPOINT_STEP = "bakery:checkpoint-step"  # N/TOTAL: the recipe step a checkpoint was taken after
SBOM = "bakery:sbom"                # sha256:HEX of the image's CycloneDX SBOM (beside its manifest): diff finds
                                    # the file by the build id and trusts it only if the digest matches

# ---- launches (environments)
ENVIRONMENT = "bakery:environment"
TIER = "bakery:tier"
SLOT = "bakery:slot"                # 0..count-1, standby-N, failed-EPOCH after a failover, or group
SLOT_GROUP = "group"                # every instance of a tier that is an Auto Scaling group
LAUNCH_ID = "bakery:launch-id"      # one `invoke launch`: its roll-back and the janitor find its instances
STRATEGY = "bakery:strategy"        # combined | baked | bootstrap
NETWORK_NAME = "bakery:network-name"  # KIND/NAME of a declared network resource (vpc/vpc, subnet/web, eni/app/1)

# How long a bake's temporary resources live before any janitor may take them.
TEMP_TTL = timedelta(hours=6)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# Values of ROLE
ROLE_ACTIVE, ROLE_STANDBY, ROLE_FAILED = "active", "standby", "failed"
ROLE_CHECKPOINT = "checkpoint"
# Instances that still hold a slot (or a group, key pair or ENI)
LIVE_STATES = ("pending", "running", "stopping", "stopped")


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tags_of(resource: dict) -> dict[str, str]:
    """A resource's tags as a dict (EC2 says Tags, or TagSet for ENIs)."""
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or resource.get("TagSet") or []}


def tag_specs(tags: dict[str, str], *kinds: str) -> list[dict]:
    """TagSpecifications: the same tags on every resource kind a create call makes."""
    return [{"ResourceType": kind, "Tags": tag_list(tags)} for kind in kinds]


def tag_filter(key: str, *values: str) -> dict:
    """A Describe* filter on a tag's value (or, with no values, on the key's presence)."""
    if not values:
        return {"Name": "tag-key", "Values": [key]}
    return {"Name": f"tag:{key}", "Values": list(values)}


def ci_run_id() -> str | None:
    return os.environ.get("BAKERY_RUN_ID") or None


def run_mark(build_id: str) -> str:
    """What marks a change that takes no tags (an SSM parameter version's description, a launch
    template version's): the build, and the CI run when there is one, for the janitor to find."""
    run = ci_run_id()
    return f"bakery {build_id}" + (f" run {run}" if run else "")


def marked_by_run(text: str | None, run_id: str) -> bool:
    """Whether a description carries `run_mark`'s mark of this CI run."""
    import re

    return re.search(rf"(^| )run {re.escape(run_id)}( |$)", text or "") is not None


def build_tags(recipe: str, build_id: str, role: str, *, temporary: bool) -> dict[str, str]:
    """What every resource of a bake carries; temporary ones also expire and get a Name."""
    tags = {RECIPE: recipe, BUILD_ID: build_id, ROLE: role}
    if ci_run_id():  # a CI run's clean-up job finds its own builds by this
        tags[RUN_ID] = ci_run_id()
    if temporary:
        tags[EXPIRES] = (datetime.now(timezone.utc) + TEMP_TTL).strftime(TIME_FORMAT)
        tags["Name"] = f"bakery-{role}-{recipe}-{build_id}"
    return tags


def created_at(tags: dict[str, str]) -> datetime | None:
    """When a temporary resource was made, from its expiry tag."""
    if EXPIRES not in tags:
        return None
    return datetime.strptime(tags[EXPIRES], TIME_FORMAT).replace(tzinfo=timezone.utc) - TEMP_TTL


def is_product(tags: dict[str, str]) -> bool:
    """A finished image, one a smoke test or the vulnerability gate rejected and kept for
    inspection, or a finished checkpoint (kept for the next bake to resume from): never the
    clean-up's of the run that made it. (A checkpoint's expiry makes it prune's and the janitor's.)"""
    return (tags.get(COMPLETE) == "true" or tags.get(SMOKE) == "failed" or tags.get(GATE) == "failed"
            or CHECKPOINT in tags)


def expired(tags: dict[str, str], now: datetime) -> bool:
    """Whether the resource's bakery:expires has passed (False without one)."""
    if EXPIRES not in tags:
        return False
    return datetime.strptime(tags[EXPIRES], TIME_FORMAT).replace(tzinfo=timezone.utc) <= now


def owner_run(tags: dict[str, str]) -> str | None:
    """The build or launch a resource belongs to."""
    return tags.get(BUILD_ID) or tags.get(LAUNCH_ID)


def slot_tags(env: str, tier: str, slot: str) -> dict[str, str]:
    """What says which slot an instance fills, and so its role: at launch, and again when a
    failover swaps the active instance and its standby (the Name follows the role)."""
    role = (ROLE_STANDBY if slot.startswith("standby") else ROLE_FAILED if slot.startswith("failed")
            else ROLE_ACTIVE)
    return {"Name": f"{env}-{tier}-{slot}", SLOT: slot, ROLE: role}


def instance_tags(env: str, tier: str, slot: str, launch_id: str, strategy: str) -> dict[str, str]:
    """bakery's own tags on a launched instance (and its volume and ENIs)."""
    return {**slot_tags(env, tier, slot), ENVIRONMENT: env, TIER: tier, LAUNCH_ID: launch_id, STRATEGY: strategy}


def tier_tags(env: str, tier: str) -> dict[str, str]:
    """What marks a tier's own resources (its launch template): the environment's, for the policy."""
    return {ENVIRONMENT: env, TIER: tier}


def group_tags(env: str, tier: str, launch_id: str, strategy: str) -> dict[str, str]:
    """bakery's own tags on an Auto Scaling group, propagated to every instance it launches: all
    of them fill the one slot `group`."""
    return {**instance_tags(env, tier, SLOT_GROUP, launch_id, strategy), "Name": f"{env}-{tier}"}


def network_tags(env: str, kind: str, name: str, **extra: str) -> dict[str, str]:
    return {"Name": f"{env}-{name}", ENVIRONMENT: env, NETWORK_NAME: f"{kind}/{name}", **extra}


def network_filters(env: str, kind: str, name: str) -> list[dict]:
    return [tag_filter(ENVIRONMENT, env), tag_filter(NETWORK_NAME, f"{kind}/{name}")]
