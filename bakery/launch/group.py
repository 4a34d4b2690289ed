"""A tier that is an Auto Scaling group (`auto_scaling:` in its environment file).

`launch` writes the tier's launch template version first (the tier's instance, pinned to its
image and user data, as `launch_template` versions are for any tier), then creates the group on
that version, with the tier's subnets, its sizes (`count` is the desired capacity) and tags that
propagate to its instances; then waits until the group's instances run and passes each through
the tier's health check, as a plain tier's. An existing group is resized, never moved to another
image: that is `invoke rollout`'s. A failed launch deletes the group it created (and its
instances) and the template version, like any product of a failed run (ledger kinds
`auto-scaling-group` and `launch-template-version`).

`rollout` moves a group by an instance refresh: a new template version on the new image, then
StartInstanceRefresh with it as the desired configuration, keeping `min_healthy_percentage` of
the desired capacity in service, each batch `instance_warmup` after the last. bakery checks each
new instance with the tier's health check as it comes; the first that fails rolls the refresh
back (RollbackInstanceRefresh: the group returns to its old version and replaces what the
refresh made), as does a refresh that fails by itself (AutoRollback). The warmup should cover
the time a new instance takes to pass its check: the refresh's next batch does not wait for bakery.

All instances of a group are alike: they render with instance_index 0 and fill the slot `group`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bakery.cloud import tags as T
from bakery.cloud.instances import INSTANCE_TIMEOUT
from bakery.cloud.scaling import GROUP_TIMEOUT, REFRESH_ENDED
from bakery.config.environment import Environment
from bakery.errors import BakeryError
from bakery.housekeeping.stack import CleanupStack
from bakery.launch.report import InstanceReport, TierPlan
from bakery.waits import wait_for

GONE = ("shutting-down", "terminated")


def group_name(env: Environment, tier: str) -> str:
    return env.tiers[tier].auto_scaling.name or f"bakery-{env.name}-{tier}"


def template_name(env: Environment, tier: str) -> str:
    spec = env.tiers[tier].launch_template
    return spec.name if spec else f"bakery-{env.name}-{tier}"


@dataclass
class Started:
    """A group's launch under way: the instances it had before, and when it was asked for more."""
    plan: TierPlan
    before: set[str]
    t0: float


class RefreshFailed(BakeryError):
    """An instance refresh did not succeed (it failed, or a new instance failed its check) and the
    group is back on the version it had; the message says why."""


class RollbackFailed(BakeryError):
    """...and rolling it back did not succeed either: the group runs a mix of both images."""


class Group:
    """One tier's Auto Scaling group, through a Launch's services (run.py): its template versions,
    its health checks."""

    def __init__(self, launcher, tier: str):
        self.launcher = launcher
        self.ec2 = launcher.ec2
        self.env: Environment = launcher.env
        self.tier = tier
        self.spec = self.env.tiers[tier].auto_scaling
        self.name = group_name(self.env, tier)
        self.template = template_name(self.env, tier)

    # ---- what runs ------------------------------------------------------------------------

    def members(self) -> list[dict]:
        """The group's instances, as EC2 describes them (not those it is ending)."""
        group = self.ec2.auto_scaling_group(self.name)
        ids = [m["InstanceId"] for m in (group or {}).get("Instances", [])
               if not m.get("LifecycleState", "").startswith("Terminat")]
        found = [self.ec2.describe_instance(i) for i in ids]
        return [i for i in found if i is not None and i["State"]["Name"] not in GONE]

    # ---- launch ---------------------------------------------------------------------------

    def start(self, stack: CleanupStack, plan: TierPlan) -> Started:
        """Create the group (on a new template version), or resize the one there."""
        count = self.env.tiers[self.tier].count
        report = self.launcher.report
        group = self.ec2.auto_scaling_group(self.name)
        t0 = time.monotonic()
        if group is None:
            version = self.new_version(stack, plan)
            with report.stage(f"create Auto Scaling group {self.name}") as s:
                tags = {**self.env.tags, **self.env.tiers[self.tier].tags,
                        **T.group_tags(self.env.name, self.tier, self.launcher.launch_id, plan.strategy)}
                arn = self.env.tiers[self.tier].target_group_arn
                self.ec2.create_auto_scaling_group(
                    self.name, template=self.template, version=version, min_size=self.spec.min,
                    max_size=self.spec.max, desired=count, subnets=plan.subnets, grace=self.spec.health_check_grace,
                    target_groups=[arn] if arn else [], tags=tags)
                stack.created("auto-scaling-group", self.name, self.ec2.region,
                              f"Auto Scaling group {self.name} and its instances",
                              lambda: self.ec2.delete_auto_scaling_group(self.name), product=True)
                s.detail = f"{self.template}:{version}, {count} of {self.spec.min}-{self.spec.max}"
            return Started(plan, set(), t0)
        before = {m["InstanceId"] for m in group.get("Instances", [])}
        if (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) != (self.spec.min, self.spec.max, count):
            with report.stage(f"resize Auto Scaling group {self.name}") as s:
                self.ec2.resize_auto_scaling_group(self.name, min_size=self.spec.min, max_size=self.spec.max,
                                                   desired=count)
                s.detail = f"{group['DesiredCapacity']} -> {count} of {self.spec.min}-{self.spec.max}"
        return Started(plan, before, t0)

    def wait(self, started: Started) -> list[tuple[InstanceReport, float]]:
        """The group's new instances, once it has its desired capacity and they run."""
        count = self.env.tiers[self.tier].count
        with self.launcher.report.stage(f"wait for {self.name} to have {count} instance(s) running") as s:
            members = wait_for(lambda: m if len(m := self._running()) >= count else None,
                               what=f"Auto Scaling group {self.name} to have {count} instance(s) running",
                               timeout=INSTANCE_TIMEOUT, hint=self._activity)
            new = [i for i in members if i["InstanceId"] not in started.before]
            s.detail = ", ".join(i["InstanceId"] for i in new) or "no new instance"
        return [(self._report(i, started.plan.image_id), started.t0) for i in new]

    def new_version(self, stack: CleanupStack, plan: TierPlan) -> int:
        """A template version for the group: the tier's instance on the plan's image. Kept when the
        run succeeds (the group names it), deleted when it fails."""
        ec2 = self.ec2
        data = self.launcher.template_data(plan)
        with self.launcher.report.stage(f"launch template {self.template}") as s:
            version = ec2.new_launch_template_version(self.template, data, f"bakery {self.launcher.launch_id}")
            stack.created("launch-template-version", f"{self.template}:{version}", ec2.region,
                          f"launch template {self.template} version {version}",
                          lambda: ec2.delete_launch_template_version(self.template, version), product=True,
                          name=self.template, version=version)
            s.detail = f"{self.template}:{version} ({plan.image_id})"
        return version

    def set_default(self, version: int) -> None:
        spec = self.env.tiers[self.tier].launch_template
        if spec is None or spec.set_default:
            self.ec2.set_default_template_version(self.template, version)

    # ---- rollout ---------------------------------------------------------------------------

    def refresh(self, stack: CleanupStack, plan: TierPlan) -> list[InstanceReport]:
        """Move the group to the plan's image by an instance refresh, each new instance checked;
        rolled back (and RefreshFailed raised) at the first that fails. An error before the refresh
        started (say the endpoint has no instance refresh) is raised as it is: nothing moved."""
        report = self.launcher.report
        version = self.new_version(stack, plan)
        with report.stage(f"start instance refresh of {self.name}") as s:
            refresh_id = self.ec2.start_instance_refresh(self.name, template=self.template, version=version,
                                                         min_healthy=self.spec.min_healthy_percentage,
                                                         warmup=self.spec.instance_warmup)
            s.detail = (f"{refresh_id}: to {self.template}:{version}, {self.spec.min_healthy_percentage} % kept "
                        f"in service, warmup {self.spec.instance_warmup}s")
        checked: list[InstanceReport] = []
        deadline = time.monotonic() + GROUP_TIMEOUT + INSTANCE_TIMEOUT
        try:
            while True:
                state = self.ec2.instance_refresh(self.name, refresh_id)
                for inst in self._running():
                    if inst["ImageId"] == plan.image_id and inst["InstanceId"] not in {r.instance_id for r in checked}:
                        checked.append(self._checked(inst, plan.image_id))
                status = state["Status"]
                if status == "Successful" and all(i["ImageId"] == plan.image_id for i in self._running()):
                    break
                if status in REFRESH_ENDED and status != "Successful":
                    raise RefreshFailed(f"instance refresh {refresh_id} of {self.name}: {status}"
                                        f"{': ' + state['StatusReason'] if state.get('StatusReason') else ''}")
                if time.monotonic() > deadline:
                    raise RefreshFailed(f"instance refresh {refresh_id} of {self.name}: still {status} after "
                                        f"{GROUP_TIMEOUT + INSTANCE_TIMEOUT:g}s")
                time.sleep(1.0)
        except BakeryError as exc:
            self._roll_back(refresh_id, exc)
            if isinstance(exc, RefreshFailed):
                raise
            raise RefreshFailed(exc.message) from None
        self.set_default(version)
        return checked

    def _checked(self, inst: dict, image_id: str) -> InstanceReport:
        """A new instance through the tier's check, timed from its launch (EC2's LaunchTime)."""
        launched = inst["LaunchTime"].timestamp() if hasattr(inst.get("LaunchTime"), "timestamp") else time.time()
        t0 = time.monotonic() - max(0.0, time.time() - launched)
        rep = self._report(inst, image_id)
        with self.launcher.report.stage(f"check {self.tier} instance {rep.instance_id}"):
            self.launcher.check_health([(rep, t0)])
        return rep

    def _roll_back(self, refresh_id: str, cause: BakeryError) -> None:
        """Back to the version the group had, unless the refresh is rolling back already (AutoRollback)."""
        report = self.launcher.report
        state = self.ec2.instance_refresh(self.name, refresh_id)
        if state["Status"] not in REFRESH_ENDED + ("RollbackInProgress",):
            with report.stage(f"roll back instance refresh {refresh_id}"):
                self.ec2.rollback_instance_refresh(self.name)
        if state["Status"] in ("Failed", "Cancelled"):
            return  # ended without rolling back: nothing to wait for
        ended = wait_for(lambda: s if (s := self.ec2.instance_refresh(self.name, refresh_id))["Status"]
                         in REFRESH_ENDED else None, what=f"instance refresh {refresh_id} to roll back",
                         timeout=GROUP_TIMEOUT)
        if ended["Status"] != "RollbackSuccessful":
            raise RollbackFailed(f"{cause.message}; rolling the refresh back ended {ended['Status']}: "
                                 f"{ended.get('StatusReason', '')}")

    # ---- helpers ---------------------------------------------------------------------------

    def _running(self) -> list[dict]:
        return [i for i in self.members() if i["State"]["Name"] == "running"]

    def _activity(self) -> str:
        group = self.ec2.auto_scaling_group(self.name) or {}
        lines = [f"{m['InstanceId']} {m.get('LifecycleState')}" for m in group.get("Instances", [])]
        return ", ".join(lines) or "no instances"

    def _report(self, inst: dict, image_id: str) -> InstanceReport:
        return InstanceReport(self.tier, T.SLOT_GROUP, inst["InstanceId"], inst.get("PrivateIpAddress"),
                              inst.get("PublicIpAddress"), inst.get("ImageId") or image_id)
