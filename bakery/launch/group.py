"""A tier that is an Auto Scaling group (`auto_scaling:` in its environment file).

`launch` writes the tier's launch template version first (the tier's instance, pinned to its
image and user data, as `launch_template` versions are for any tier), then creates the group on
that version, with the tier's subnets, its sizes (`count` is the desired capacity) and tags that
propagate to its instances; then waits until the group's instances run and passes each through
the tier's health check, as a plain tier's. An existing group is resized, never moved to another
image: that is `invoke rollout`'s. A failed launch deletes the group it created (and its
instances) and the template version, like any product of a failed run (ledger kinds
`auto-scaling-group` and `launch-template-version`), or puts back the sizes of one it resized.

`rollout` moves a group by an instance refresh: a new template version on the new image, then
StartInstanceRefresh with it as the desired configuration, keeping `min_healthy_percentage` of
the desired capacity in service, each batch `instance_warmup` after the last. bakery checks each
new instance with the tier's health check as it comes; the first that fails (or a signal) rolls
the refresh back (RollbackInstanceRefresh: the group returns to its old version and replaces what
the refresh made), as does a refresh that fails by itself (AutoRollback). A refresh that has
ended without going back (it succeeded before the last check failed, it failed or was
cancelled) is followed by a refresh to the old version, which is AWS's advice. The warmup should
cover the time a new instance takes to pass its check: the next batch does not wait for bakery.
Once the refresh has succeeded the new version is kept, whatever happens to the rest of the run:
the group launches from it.

All instances of a group are alike: they render with instance_index 0 and fill the slot `group`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from bakery.cloud import tags as T
from bakery.cloud.instances import INSTANCE_TIMEOUT
from bakery.cloud.scaling import REFRESH_ENDED, REFRESH_RUNNING
from bakery.config.environment import Environment
from bakery.errors import BakeryError, CloudError, Interrupted
from bakery.housekeeping.stack import CleanupStack
from bakery.launch.report import InstanceReport, TierPlan
from bakery.signals import shielded
from bakery.waits import Backoff, wait_for

GONE = ("shutting-down", "terminated")
REFRESH_POLL = Backoff(initial=1.0, max_interval=5.0)  # a refresh moves in batches of minutes on AWS


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
        """The group's instances, as EC2 describes them (not those it is ending), in one call."""
        group = self.ec2.auto_scaling_group(self.name)
        ids = [m["InstanceId"] for m in (group or {}).get("Instances", [])
               if not m.get("LifecycleState", "").startswith("Terminat")]
        if not ids:
            return []
        return [i for i in self.ec2.instances({"Name": "instance-id", "Values": ids}, states=None)
                if i["State"]["Name"] not in GONE]

    # ---- launch ---------------------------------------------------------------------------

    def start(self, stack: CleanupStack, plan: TierPlan) -> Started:
        """Create the group (on a new template version), or resize the one there."""
        count = self.env.tiers[self.tier].count
        report = self.launcher.report
        group = self.ec2.auto_scaling_group(self.name, deleting=True)
        if group is not None and group.get("Status") == "Delete in progress":
            with report.stage(f"wait for Auto Scaling group {self.name} to finish being deleted"):
                self.ec2.delete_auto_scaling_group(self.name)  # its name is free once it has gone
            group = None
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
        sizes = (group["MinSize"], group["MaxSize"], group["DesiredCapacity"])
        if sizes != (self.spec.min, self.spec.max, count):
            with report.stage(f"resize Auto Scaling group {self.name}") as s:
                # a failed launch puts the sizes back: the group then ends the instances it added
                stack.undo(f"sizes of Auto Scaling group {self.name}", lambda: self.ec2.resize_auto_scaling_group(
                    self.name, min_size=sizes[0], max_size=sizes[1], desired=sizes[2]), only_on_failure=True)
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
            version = ec2.new_launch_template_version(self.template, data, f"bakery {self.launcher.launch_id}",
                                                      tags=T.tier_tags(self.env.name, self.tier))
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
        group = self.ec2.auto_scaling_group(self.name)
        if group is None:
            raise CloudError(f"Auto Scaling group {self.name} of tier {self.tier} does not exist: "
                             f"invoke launch --env {self.env.name} makes it")
        before = group.get("LaunchTemplate", {}).get("Version", "$Default")
        version = self.new_version(stack, plan)
        with report.stage(f"start instance refresh of {self.name}") as s:
            refresh_id = self.ec2.start_instance_refresh(self.name, template=self.template, version=version,
                                                         min_healthy=self.spec.min_healthy_percentage,
                                                         warmup=self.spec.instance_warmup)
            s.detail = (f"{refresh_id}: to {self.template}:{version}, {self.spec.min_healthy_percentage} % kept "
                        f"in service, warmup {self.spec.instance_warmup}s")
        checked: list[InstanceReport] = []
        try:
            wait_for(lambda: self._progress(refresh_id, plan.image_id, checked), timeout=self._deadline(),
                     what=f"instance refresh {refresh_id} of {self.name}", backoff=REFRESH_POLL)
        except BakeryError as exc:
            with shielded():  # a signal too: the group goes back before the run unwinds
                self._roll_back(refresh_id, before, exc)
            if isinstance(exc, (RefreshFailed, Interrupted)):
                raise
            raise RefreshFailed(exc.message) from None
        # the group launches from this version now, whatever happens to the rest of the run
        stack.keep("launch-template-version", f"{self.template}:{version}", self.ec2.region)
        self.set_default(version)
        return checked

    def _progress(self, refresh_id: str, image_id: str, checked: list[InstanceReport]) -> dict | None:
        """One look at the refresh: every new instance through the tier's check; its end state once
        it has succeeded, None while it runs; RefreshFailed when it ended otherwise."""
        state = self.ec2.instance_refresh(self.name, refresh_id)
        running = self._running()
        for inst in running:
            if inst["ImageId"] == image_id and inst["InstanceId"] not in {r.instance_id for r in checked}:
                checked.append(self._checked(inst, image_id))
        status = state["Status"]
        if status == "Successful":
            left = sorted(i["InstanceId"] for i in running if i["ImageId"] != image_id)
            if left:  # in Standby or protected from scale-in: a refresh leaves those alone
                self.launcher.report.warn(f"instance refresh {refresh_id} of {self.name} left {', '.join(left)} "
                                          "on the old image (in Standby or protected from scale-in)")
            return state
        if status not in REFRESH_RUNNING:
            reason = f": {state['StatusReason']}" if state.get("StatusReason") else ""
            raise RefreshFailed(f"instance refresh {refresh_id} of {self.name}: {status}{reason}")
        return None

    def _deadline(self) -> float:
        """How long a healthy refresh may take: per batch (the share of the desired capacity that
        may be out of service), a boot, the warmup and the tier's check."""
        count = self.env.tiers[self.tier].count
        batch = max(1, count * (100 - self.spec.min_healthy_percentage) // 100)
        check = self.env.tiers[self.tier].health_check
        per_batch = INSTANCE_TIMEOUT + self.spec.instance_warmup + (check.timeout if check else 0)
        return max(1, math.ceil(count / batch)) * per_batch

    def _checked(self, inst: dict, image_id: str) -> InstanceReport:
        """A new instance through the tier's check, timed from its launch (EC2's LaunchTime)."""
        launched = inst["LaunchTime"].timestamp() if hasattr(inst.get("LaunchTime"), "timestamp") else time.time()
        t0 = time.monotonic() - max(0.0, time.time() - launched)
        rep = self._report(inst, image_id)
        with self.launcher.report.stage(f"check {self.tier} instance {rep.instance_id}"):
            self.launcher.check_health([(rep, t0)])
        return rep

    def _roll_back(self, refresh_id: str, before: str, cause: BakeryError) -> None:
        """Back to the version the group had: RollbackInstanceRefresh while the refresh runs (or
        its own AutoRollback); once it has ended without going back (it succeeded before a check
        failed, it failed or was cancelled), a refresh to that version, as AWS advises."""
        report = self.launcher.report
        status = self.ec2.instance_refresh(self.name, refresh_id)["Status"]
        if status in REFRESH_RUNNING:
            with report.stage(f"roll back instance refresh {refresh_id}"):
                self.ec2.rollback_instance_refresh(self.name)
        ended = self._ended(refresh_id)
        if ended["Status"] == "RollbackSuccessful":
            return
        if ended["Status"] != "RollbackFailed":
            with report.stage(f"refresh {self.name} back to {self.template}:{before}") as s:
                back = self.ec2.start_instance_refresh(self.name, template=self.template, version=before,
                                                       min_healthy=self.spec.min_healthy_percentage,
                                                       warmup=self.spec.instance_warmup)
                ended = self._ended(back)
                s.detail = f"{back}: {ended['Status']}"
            if ended["Status"] in ("Successful", "RollbackSuccessful"):
                return
        runs = ", ".join(f"{m['InstanceId']} ({m['ImageId']})" for m in self.members()) or "nothing"
        reason = f": {ended['StatusReason']}" if ended.get("StatusReason") else ""
        raise RollbackFailed(f"{cause.message}; going back to {self.template}:{before} ended "
                             f"{ended['Status']}{reason}; the group runs {runs}")

    def _ended(self, refresh_id: str) -> dict:
        return wait_for(lambda: s if (s := self.ec2.instance_refresh(self.name, refresh_id))["Status"]
                        in REFRESH_ENDED else None, what=f"instance refresh {refresh_id} to end",
                        timeout=self._deadline(), backoff=REFRESH_POLL)

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
