"""`invoke janitor`: remove what dead runs left behind, found by bakery's tags alone (so it
works on a fresh machine, e.g. a CI clean-up job).

A build counts as dead when its temporary resources are older than `--older-than`
(creation time = `bakery:expires` minus the TTL the bake set), or when it belongs to the
CI run named by `--run-id` (the run's jobs have ended when its clean-up job runs).
Nothing without bakery's tags is ever looked at; a finished image is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from bakery.bake import TEMP_TTL
from bakery.cleanup import clean_build
from bakery.errors import ConfigError


@dataclass
class JanitorReport:
    builds: dict[str, list[str]] = field(default_factory=dict)  # build id -> what was (or would be) removed
    live: list[str] = field(default_factory=list)               # builds left alone
    dry_run: bool = False


def parse_duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise ConfigError(f"--older-than {text!r}: expected a number and a unit, like 30m, 6h or 2d")
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    return timedelta(**{units[match.group(2)]: int(match.group(1))})


def _builds(ec2) -> dict[str, dict[str, str]]:
    """Every build id on a temporary resource, with the tags seen on it."""
    c = ec2.client
    flt = [{"Name": "tag-key", "Values": ["bakery:build-id"]}]
    found: dict[str, dict[str, str]] = {}

    def note(tags_list):
        tags = {t["Key"]: t["Value"] for t in tags_list or []}
        if "bakery:build-id" in tags:
            found.setdefault(tags["bakery:build-id"], tags)

    for r in ec2.call("describe-instances", c.describe_instances, Filters=flt + [
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])["Reservations"]:
        for inst in r["Instances"]:
            note(inst.get("Tags"))
    for g in ec2.call("describe-security-groups", c.describe_security_groups, Filters=flt)["SecurityGroups"]:
        note(g.get("Tags"))
    for k in ec2.call("describe-key-pairs", c.describe_key_pairs, Filters=flt)["KeyPairs"]:
        note(k.get("Tags"))
    for image in ec2.call("describe-images", c.describe_images, Owners=["self"], Filters=flt)["Images"]:
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        if tags.get("bakery:complete") != "true" and tags.get("bakery:smoke") != "failed":
            note(image.get("Tags"))
    return found


def janitor(ec2, *, older_than: timedelta | None, run_id: str | None, dry_run: bool) -> JanitorReport:
    if older_than is None and run_id is None:
        older_than = TEMP_TTL  # by default only what has outlived its own expiry tag
    report = JanitorReport(dry_run=dry_run)
    now = datetime.now(timezone.utc)
    for build, tags in sorted(_builds(ec2).items()):
        dead = False
        if run_id is not None:
            dead = tags.get("bakery:run-id") == run_id
        elif "bakery:expires" in tags:
            expires = datetime.strptime(tags["bakery:expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            dead = expires - TEMP_TTL + older_than <= now
        if not dead:
            report.live.append(build)
            continue
        report.builds[build] = clean_build(ec2, build, dry_run=dry_run).removed
    return report
