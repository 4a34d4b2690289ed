"""`invoke rollout`: move a running environment's tiers to the images `launch` would now choose
(the newest finished image of each tier's recipe), one slot at a time, each new instance healthy
before the one it replaces goes, and back to where the tier was if a new one is not.

How a tier is moved follows from how its instances are addressed (`how_to_roll`):

- **surge** (no fixed addresses): for each slot, a new instance is launched into it and must pass
  the tier's health check; only then is the old one terminated. The tier never runs below its
  count.
- **standby** (persistent interfaces and a hot standby): a new standby on the new image, healthy;
  the old standby goes; the persistent interfaces fail over to the new one (their addresses,
  MACs and Elastic IPs move: clients keep talking to the same address; `invoke failover`'s move),
  and the new active instance must pass the tier's check there; the old active, now a standby,
  is replaced by another new standby. Clients see the failover's gap only.
- **instance refresh** (an Auto Scaling group, `auto_scaling:`): the group's own instance refresh
  on a new launch template version, each new instance checked as it comes (bakery/launch/group.py).
- **in place** (a fixed private address on a launch-time interface, or persistent interfaces and
  no standby: two instances cannot hold it at once): the old instance goes first, then the new
  one is launched into its slot. The slot is down between the two (`--dry-run` names the way).

A new instance that fails its check is terminated and the tier is rolled back: every slot this
rollout already moved is moved again, the same way, to the image it ran before (for a standby
tier, the interfaces fail back to the instance that held them). The rollout then fails, naming
the instance and the check. A tier with a target group has each new instance registered (and in
service) before the instance it replaces is deregistered (its connections drained) and goes.
Each instance a rollout starts is a product of its run (ledger, clean-up stack:
bakery/housekeeping/stack.py) until its slot's move is done; a signal in between takes back only
the unfinished one (its slot still has its old instance, except in place).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from bakery.cloud import tags as T
from bakery.cloud.connect import Cloud, open_cloud
from bakery.config.environment import Environment, Tier
from bakery.config.settings import Settings
from bakery.errors import BakeryError, CloudError
from bakery.housekeeping.stack import CleanupStack
from bakery.launch.group import Group, RefreshFailed, RollbackFailed
from bakery.launch.health import failover_probe
from bakery.launch.report import InstanceReport, TierPlan
from bakery.network.eni import failover as move_interfaces
from bakery.progress import Reporter

SURGE, STANDBY, IN_PLACE, REFRESH = "surge", "standby", "in place", "instance refresh"


def how_to_roll(spec: Tier) -> str:
    """surge, standby, in place or instance refresh: see the module docstring."""
    if spec.auto_scaling:
        return REFRESH
    if any(i.persistent for i in spec.interfaces):
        return STANDBY if spec.standby else IN_PLACE
    if any(i.private_ip or i.secondary_ips for i in spec.interfaces):
        return IN_PLACE
    return SURGE


@dataclass
class Move:
    slot: str
    old: str                  # the instance it replaced ("" in a group: its refresh picks the order)
    new: str                  # the instance now in the slot
    seconds: float            # from the new one's launch to the old one gone (or the failover done)
    failover_s: float | None = None  # standby: the interfaces' move, the gap clients see


@dataclass
class TierRollout:
    tier: str
    how: str
    image_id: str             # where the tier is going
    status: str = "current"   # current (nothing to move) | planned (a dry run) | rolled | rolled back
    stale: list[str] = field(default_factory=list)  # "SLOT INSTANCE (IMAGE)" of each instance to move
    moves: list[Move] = field(default_factory=list)
    error: str | None = None


@dataclass
class RolloutReport:
    environment: str
    rollout_id: str
    tiers: list[TierRollout] = field(default_factory=list)
    launch_templates: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> str:
        import json

        return json.dumps(asdict(self), indent=2, sort_keys=True)


class RolledBack(BakeryError):
    """A new instance failed its check; the tier is back on the image it ran."""


class RolloutFailed(BakeryError):
    """A new instance failed, and so did the way back: the message says where the tier was left."""


class Rollout:
    """Rolls the tiers of one environment, through a Launch's services (run.py): its planning,
    its way to start an instance in a slot, its health checks."""

    def __init__(self, launcher, report: Reporter):
        self.launcher = launcher
        self.env: Environment = launcher.env
        self.ec2 = launcher.ec2
        self.report = report
        self.terminating: list[str] = []  # instances the clean-up stack terminated (waited for at its end)
        self.started: list[str] = []      # every instance this rollout started

    # ---- the tier as it runs -------------------------------------------------------------

    def running(self, tier: str) -> dict[str, dict]:
        """slot -> the tier's live instance in it."""
        found = self.ec2.tier_instances(self.env.name, tier)
        return {T.tags_of(i).get(T.SLOT, ""): i for i in sorted(found, key=lambda i: i["LaunchTime"])}

    def _plan(self, tier: str, image_id: str | None = None) -> TierPlan:
        """The tier's plan on its newest image (or on `image_id`), counting what runs now (each
        new instance's client token names the instances it joined, so two starts into one slot
        are two instances)."""
        image = None
        if image_id:
            image = self.ec2.image(image_id)
            if image is None:
                raise CloudError(f"image {image_id} is gone (deregistered): nothing to start tier {tier} from")
        return self.launcher.planner().plan_tier(tier, image)

    # ---- one tier -----------------------------------------------------------------------

    def plan(self, tier: str) -> tuple[TierRollout, dict[str, dict]]:
        """What rolling the tier means now: where it goes, how, and the slots whose instance runs
        another image (slot -> instance); a dry run stops here."""
        plan = self._plan(tier)
        result = TierRollout(tier, how_to_roll(self.env.tiers[tier]), plan.image_id)
        if result.how == REFRESH:  # one slot, many instances: keyed by instance
            stale = {f"{T.SLOT_GROUP} {i['InstanceId']}": i for i in Group(self.launcher, tier).members()
                     if i["ImageId"] != plan.image_id}
            result.stale = [f"{key} ({i['ImageId']})" for key, i in sorted(stale.items())]
            return result, stale
        stale = {slot: i for slot, i in self.running(tier).items() if i["ImageId"] != plan.image_id
                 and (slot.isdigit() or slot.startswith("standby"))}
        result.stale = [f"{slot} {i['InstanceId']} ({i['ImageId']})" for slot, i in sorted(stale.items())]
        return result, stale

    def tier(self, stack: CleanupStack, tier: str) -> TierRollout:
        result, stale = self.plan(tier)
        if not stale:
            self.report.info(f"{tier}: every instance runs {result.image_id} already")
            return result
        self.report.info(f"{tier}: {len(stale)} instance(s) to move to {result.image_id} ({result.how})")
        if result.how == REFRESH:
            return self._refresh(stack, tier, result)
        try:
            if result.how == STANDBY:
                self._through_standby(stack, tier, result.image_id, stale, result)
            else:
                for slot in sorted(stale, key=lambda s: (not s.isdigit(), s)):
                    result.moves.append(self._replace(stack, tier, slot, stale[slot], result.image_id, result.how))
        except BakeryError as exc:
            result.error = exc.message
            failed = f"rollout of {self.env.name} tier {tier} to {result.image_id}: {exc.message}"
            try:
                self._roll_back(stack, tier, stale, result)
            except BakeryError as again:  # say both, and where the tier was left
                left = ", ".join(f"{s} {i['InstanceId']} ({i['ImageId']})"
                                 for s, i in sorted(self.running(tier).items()))
                raise RolloutFailed(f"{failed}; rolling back failed too: {again.message}; the tier now runs: "
                                    f"{left or 'nothing'}") from None
            result.status = "rolled back"
            raise RolledBack(f"{failed}; rolled back ({len(result.moves)} slot(s) moved back)") from None
        result.status = "rolled"
        return result

    def _refresh(self, stack: CleanupStack, tier: str, result: TierRollout) -> TierRollout:
        """An Auto Scaling tier: its group's instance refresh, which rolls itself back on failure."""
        try:
            checked = Group(self.launcher, tier).refresh(stack, self._plan(tier))
        except RollbackFailed as exc:
            result.error = exc.message
            raise RolloutFailed(f"rollout of {self.env.name} tier {tier} to {result.image_id}: {exc.message}") from None
        except RefreshFailed as exc:
            result.error, result.status = exc.message, "rolled back"
            raise RolledBack(f"rollout of {self.env.name} tier {tier} to {result.image_id}: {exc.message}; "
                             "the instance refresh rolled the group back") from None
        result.moves = [Move(T.SLOT_GROUP, "", r.instance_id, r.ready_s or 0.0) for r in checked]
        result.status = "rolled"
        return result

    def _replace(self, stack: CleanupStack, tier: str, slot: str, old: dict, image_id: str, how: str) -> Move:
        """One slot onto `image_id`: surge (new healthy, then old gone) or in place (old gone first)."""
        t0 = time.monotonic()
        if how == IN_PLACE:
            self._retire(tier, old["InstanceId"], f"{tier} slot {slot}")
        new = self._start(stack, tier, slot, image_id)
        if how == SURGE:
            self._retire(tier, old["InstanceId"], f"{tier} slot {slot}")
        return Move(slot, old["InstanceId"], new.instance_id, round(time.monotonic() - t0, 3))

    def _through_standby(self, stack: CleanupStack, tier: str, image_id: str, stale: dict[str, dict],
                         result: TierRollout) -> None:
        # the standbys first: each replaced by a new one, healthy, before it goes
        for slot in sorted(s for s in stale if not s.isdigit()):
            result.moves.append(self._replace(stack, tier, slot, stale[slot], image_id, SURGE))
        for slot in sorted(s for s in stale if s.isdigit()):
            active = stale[slot]
            t0 = time.monotonic()
            standby = next(i for s, i in self.running(tier).items() if s.startswith("standby")
                           and i["ImageId"] == image_id and i["State"]["Name"] == "running")
            moved = self._failover(tier, standby["InstanceId"])
            # recorded at once: if the check below fails, the roll-back fails the interfaces back
            move = Move(slot, active["InstanceId"], standby["InstanceId"], 0.0, failover_s=moved.seconds)
            result.moves.append(move)
            # the new active must pass the tier's own check where its clients reach it
            self._check(tier, standby["InstanceId"], slot)
            move.seconds = round(time.monotonic() - t0, 3)
            # the old active is a standby now (or failed): replaced by a new one on the image
            demoted = self.ec2.describe_instance(active["InstanceId"]) or {}
            slot_now = T.tags_of(demoted).get(T.SLOT, "")
            if slot_now.startswith("standby"):
                result.moves.append(self._replace(stack, tier, slot_now, demoted, image_id, SURGE))
            else:
                self._retire(tier, active["InstanceId"], f"{tier} ({slot_now})")

    # ---- back ---------------------------------------------------------------------------

    def _roll_back(self, stack: CleanupStack, tier: str, stale: dict[str, dict], result: TierRollout) -> None:
        """Every slot this rollout moved, moved again to the image its old instance ran."""
        how = result.how
        if how == STANDBY:
            holder = self._holder(tier)
            old_actives = [m.old for m in result.moves if m.slot.isdigit()]
            if old_actives and holder != old_actives[-1]:
                old = self.ec2.describe_instance(old_actives[-1]) or {}
                if old.get("State", {}).get("Name") == "running":
                    self._failover(tier, old_actives[-1])
        for move in reversed(result.moves):
            old_image = next(i["ImageId"] for i in stale.values() if i["InstanceId"] == move.old)
            now = self.ec2.describe_instance(move.new) or {}
            if now.get("State", {}).get("Name") in (None, "terminated", "shutting-down"):
                continue
            slot = T.tags_of(now).get(T.SLOT, move.slot)
            if how == STANDBY and slot.isdigit():
                continue  # the interfaces went back to its old holder above
            with self.report.stage(f"roll back {tier} slot {slot} to {old_image}"):
                self._replace(stack, tier, slot, now, old_image, IN_PLACE if how == IN_PLACE else SURGE)

    # ---- services ---------------------------------------------------------------------

    def _start(self, stack: CleanupStack, tier: str, slot: str, image_id: str) -> InstanceReport:
        """A new instance in `slot` on `image_id`, running and healthy; terminated again if not."""
        launcher = self.launcher
        plan = self._plan(tier, image_id)
        rep, t0 = launcher.start_slot(stack, plan, slot, self.terminating)
        self.started.append(rep.instance_id)
        try:
            launcher.wait_running(stack, rep, t0, plan)
            launcher.check_health([(rep, t0)])
        except BakeryError:
            self._terminate(rep.instance_id, f"{tier} slot {slot} (failed its check)")
            raise
        arn = self.env.tiers[tier].target_group_arn
        if arn:  # serving before the instance it replaces stops serving
            with self.report.stage(f"register {rep.instance_id} in {tier}'s target group"):
                self.ec2.register_targets(arn, [rep.instance_id])
        stack.keep("instance", rep.instance_id, self.ec2.region)  # its slot's move is done from here
        return rep

    def _check(self, tier: str, instance_id: str, slot: str) -> None:
        check = self.launcher.readiness(tier)
        if check is None or check.type == "cloud-init":
            return
        rep = InstanceReport(tier, slot, instance_id, None, None, "")
        self.launcher.check_health([(rep, time.monotonic())])

    def _retire(self, tier: str, instance_id: str, what: str) -> None:
        """An old instance out of service: out of the tier's target group (its connections drained
        first), then terminated."""
        arn = self.env.tiers[tier].target_group_arn
        if arn:
            with self.report.stage(f"deregister {instance_id} from {tier}'s target group"):
                self.ec2.deregister_targets(arn, [instance_id])
        self._terminate(instance_id, what)

    def _terminate(self, instance_id: str, what: str) -> None:
        with self.report.stage(f"terminate {instance_id} ({what})"):
            self.ec2.terminate_and_wait(instance_id)

    def _failover(self, tier: str, to: str):
        with self.report.stage(f"fail {tier} over to {to}") as s:
            moved = move_interfaces(self.ec2, self.env, tier, to, self.report,
                                    probe=failover_probe(self.launcher.cloud, self.env, tier,
                                                         self.launcher.settings.project_dir))
            s.detail = f"interfaces moved in {moved.seconds:.2f}s"
        return moved

    def _holder(self, tier: str) -> str | None:
        active = [i for s, i in self.running(tier).items() if s.isdigit()]
        return active[0]["InstanceId"] if active else None


def rollout(settings: Settings, env_name: str, *, tier: str | None = None, dry_run: bool = False,
            report: Reporter, cloud: Cloud | None = None) -> RolloutReport:
    """Refuse what the files alone show wrong (as `launch` does), then roll each tier in the
    environment's order under the environment's launch lock (a launch or rollout here waits).
    `dry_run`: say what would move, and how, and change nothing."""
    from bakery.housekeeping.locks import exclusive
    from bakery.housekeeping.stack import tracked_run
    from bakery.launch.run import Launch, checked_environment

    env, tiers = checked_environment(settings, env_name, tier)
    launcher = Launch(settings, env, report=report, cloud=cloud or open_cloud(settings))
    result = RolloutReport(env.name, launcher.launch_id)
    started = time.monotonic()
    roller = Rollout(launcher, report)
    if dry_run:
        for name in tiers:
            planned, stale = roller.plan(name)
            planned.status = "planned" if stale else "current"
            result.tiers.append(planned)
        result.seconds = round(time.monotonic() - started, 3)
        return result
    with exclusive(settings.state / "locks", f"launch-{launcher.ec2.region}-{env.name}",
                   lambda: report.stage(f"wait for a launch or rollout of {env.name} running here")):
        sweep = lambda: _sweep_unfinished(launcher.ec2, launcher.launch_id, roller.started)  # noqa: E731
        with tracked_run(settings.state, launcher.launch_id, f"rollout {env.name}", report, keep_on_error=False,
                         on_keep=lambda: None, sweep=sweep) as stack:
            stack.undo("wait for the rollout's unfinished instances to terminate",
                       lambda: [launcher.ec2.wait_instance_state(i, "terminated", timeout=600)
                                for i in roller.terminating], only_on_failure=True)
            for name in tiers:
                result.tiers.append(roller.tier(stack, name))
        rolled = [t.tier for t in result.tiers if t.status == "rolled"]
        if rolled:  # the tiers' launch templates follow their new images
            result.launch_templates = launcher.write_launch_templates(
                [launcher.planner().plan_tier(name) for name in rolled])
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _sweep_unfinished(ec2, rollout_id: str, known: list[str]) -> list[str]:
    """After a failure: instances tagged with the rollout's id that it never heard of (a signal cut
    off their RunInstances answer). Those it did start were kept (their slot's move finished) or
    taken back by the clean-up stack already."""
    strays = [i["InstanceId"] for i in ec2.instances(T.tag_filter(T.LAUNCH_ID, rollout_id))
              if i["InstanceId"] not in known]
    for iid in strays:
        ec2.terminate_instance(iid)
    return [f"instance {iid}" for iid in strays]
