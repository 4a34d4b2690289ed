"""Launch an environment: its network first, then every tier planned, then the empty slots
filled, waited for and health-checked.

The instances a launch starts are the products of a tracked run, on the same clean-up stack and
ledger as a bake (bakery/housekeeping/stack.py): if anything fails or a signal arrives before
every instance is healthy, the instances this run launched are terminated again (and waited for,
so a relaunch finds their persistent ENIs free), the Elastic IPs it put on their interfaces are
taken back, and a sweep by the launch's tag finds an instance whose RunInstances answer was cut
off. `--keep-on-error` keeps them instead. After success the fleet is registered with its
target groups and new launch template versions are written; a failure there leaves the fleet up.
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from bakery.cloud import tags as T
from bakery.cloud.connect import Cloud, open_cloud
from bakery.cloud.console import wait_cloud_init
from bakery.cloud.instances import INSTANCE_TIMEOUT, InstanceSpec, Nic, Volume
from bakery.config.environment import Environment, HealthCheck, Tier, load_environment
from bakery.config.settings import Settings
from bakery.housekeeping.stack import CleanupStack
from bakery.launch.group import Group
from bakery.launch.health import TierCheck, require_logins
from bakery.launch.plan import Planner, slot_index
from bakery.launch.report import InstanceReport, LaunchReport, TierPlan
from bakery.progress import Reporter, submit_in_stage
from bakery.signals import block_in_this_thread
from bakery.remote.dial import Machine
from bakery.render.tier import environment_lint, render_offline



def new_launch_id() -> str:
    return datetime.now(timezone.utc).strftime("l-%Y%m%d%H%M%S-") + secrets.token_hex(3)


def tier_spec(env: Environment, plan: TierPlan, slot: str, launch_id: str) -> InstanceSpec:
    """One instance of a tier, in one slot: what RunInstances asks for, and what its launch
    template says (without the per-launch tags)."""
    spec = env.tiers[plan.tier]
    if plan.interfaces:
        nics = tuple(Nic(r.spec.device_index, r.subnet.id, tuple(r.groups), public_ip=r.spec.public_ip,
                         private_ip=r.spec.private_ip, description=r.spec.description or "bakery")
                     for r in plan.interfaces if not r.spec.persistent)
    else:
        index = slot_index(spec.count, slot)
        nics = (Nic(0, plan.subnets[index % len(plan.subnets)], tuple(plan.security_groups), public_ip=spec.public_ip),)
    tags = {**env.tags, **spec.tags, **T.instance_tags(env.name, plan.tier, slot, launch_id, plan.strategy)}
    user_data, user_data_sha256 = plan.user_data_for(slot)
    return InstanceSpec(
        image_id=plan.image_id, instance_types=(plan.instance_type,), nics=nics,
        volume=Volume.of(spec.root_volume, plan.root_device_name),
        tags=tags, label=plan.tier,
        # The same token for every launch that sees the same world (slot, instances already there,
        # image, user data): a retried call, or a concurrent launch on another machine, gets the
        # same instance back from EC2 instead of a second one. A replaced instance changes the world.
        token="/".join([env.name, plan.tier, slot, ",".join(sorted(plan.existing)), plan.image_id,
                        user_data_sha256]), token_per_type=False,
        user_data=user_data or None, key_name=spec.key_name, instance_profile=spec.iam_instance_profile,
        imds_hop_limit=2,
        template_tags={**env.tags, **spec.tags, T.ENVIRONMENT: env.name, T.TIER: plan.tier})


class Launch:
    """One launch of (some tiers of) one environment."""

    def __init__(self, settings: Settings, env: Environment, *, report: Reporter, cloud: Cloud,
                 keep_on_error: bool = False):
        self.settings = settings
        self.env = env
        self.report = report
        self.cloud = cloud
        self.ec2 = cloud.ec2
        self.keep_on_error = keep_on_error
        self.launch_id = new_launch_id()

    def run(self, tiers: dict[str, Tier], dry_run: bool) -> LaunchReport:
        started = time.monotonic()
        result = LaunchReport(environment=self.env.name, launch_id=self.launch_id, region=self.ec2.region,
                              dry_run=dry_run, plans=[])
        if self.env.network is not None:  # the network comes first: tiers resolve their subnets and ENIs in it
            actions = self._network_up(dry_run)
            result.network = [a.line() for a in actions]
            if dry_run and any(a.status == "create" for a in actions):
                return result  # tiers cannot be planned against subnets that do not exist yet
        result.plans = self.plan(tiers)
        if not dry_run:
            result.instances = self.launch(result.plans)
            result.reach = self._reach(result)
            self.register_targets(result.instances)
            result.launch_templates = self.write_launch_templates(result.plans)
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def plan(self, tiers: dict[str, Tier]) -> list[TierPlan]:
        return self.planner().plan(tiers)

    def planner(self) -> Planner:
        return Planner(self.settings, self.env, self.ec2, self.report)

    def _network_up(self, dry_run: bool):
        from bakery.network import Network

        with self.report.stage("network") as s:
            actions = Network(self.ec2, self.env, self.report).up(dry_run=dry_run)
            made = [a for a in actions if a.status != "exists"]
            s.detail = f"{len(actions) - len(made)} in place, {len(made)} {'to create' if dry_run else 'created'}"
        return actions

    # ---- launch -------------------------------------------------------------------------

    def launch(self, plans: list[TierPlan]) -> list[InstanceReport]:
        from bakery.housekeeping.cleanup import clean_launch
        from bakery.housekeeping.stack import tracked_run

        started = time.monotonic()
        launched: list[tuple[InstanceReport, float]] = []
        terminating: list[str] = []  # rolled back: instances whose TerminateInstances was accepted
        with tracked_run(self.settings.state, self.launch_id, f"launch {self.env.name}", self.report,
                         keep_on_error=self.keep_on_error, on_keep=lambda: self._kept(launched),
                         sweep=lambda: clean_launch(self.ec2, self.launch_id).removed) as stack:
            # registered first, so it runs last, once every termination has been asked for: a
            # relaunch right after finds the persistent ENIs free again
            stack.undo("wait for the launch's instances to terminate", lambda: self._wait_terminated(terminating),
                       only_on_failure=True)
            # Tiers that ask for fixed addresses go first, before automatic ones can take them.
            groups = []
            for plan in sorted(plans, key=lambda p: not any(r.spec.private_ip for r in p.interfaces)):
                if plan.group:
                    group = Group(self, plan.tier)
                    groups.append((group, group.start(stack, plan)))
                for slot in plan.missing_slots:
                    launched.append(self.start_slot(stack, plan, slot, terminating))
            for rep, t0 in launched:
                self.wait_running(stack, rep, t0, next(p for p in plans if p.tier == rep.tier))
            for group, under_way in groups:
                launched += group.wait(under_way)
            self.check_health(launched)
        self.report.info(f"launched {len(launched)} instance(s) in {time.monotonic() - started:.1f}s")
        return [r for r, _ in launched]

    def start_slot(self, stack: CleanupStack, plan: TierPlan, slot: str,
                   terminating: list[str]) -> tuple[InstanceReport, float]:
        ec2 = self.ec2

        def terminate(iid: str) -> None:
            ec2.terminate_instance(iid)
            terminating.append(iid)

        with self.report.stage(f"launch {plan.tier} slot {slot}") as s:
            t0 = time.monotonic()
            inst = ec2.launch(tier_spec(self.env, plan, slot, self.launch_id))
            iid = inst["InstanceId"]
            stack.created("instance", iid, ec2.region, f"instance {iid}", lambda: terminate(iid), product=True)
            s.detail = f"{iid} ({plan.instance_type}, {inst.get('SubnetId')})"
        return InstanceReport(plan.tier, slot, iid, inst.get("PrivateIpAddress"), inst.get("PublicIpAddress"),
                              plan.image_id), t0

    def wait_running(self, stack: CleanupStack, rep: InstanceReport, t0: float, plan: TierPlan) -> None:
        with self.report.stage(f"wait for {rep.instance_id} to run"):
            inst = self.ec2.wait_instance_state(rep.instance_id, "running", timeout=INSTANCE_TIMEOUT)
            rep.running_s = round(time.monotonic() - t0, 3)
        if plan.interfaces:
            from bakery.network import Network

            with self.report.stage(f"network interfaces of {rep.instance_id}"):
                # registered before the ENIs move: whatever Elastic IP ends up on them is taken back
                stack.undo(f"Elastic IPs of {rep.instance_id}", lambda: self._release_addresses(rep.instance_id),
                           only_on_failure=True)
                Network(self.ec2, self.env).configure_attached(rep.instance_id, plan.interfaces,
                                                               active=rep.slot.isdigit())
                inst = self.ec2.describe_instance(rep.instance_id)
        rep.private_ip, rep.public_ip = inst.get("PrivateIpAddress"), inst.get("PublicIpAddress")

    def _release_addresses(self, instance_id: str) -> None:
        """Take back the environment's Elastic IPs from the interfaces attached to the instance
        (persistent ENIs keep them when the instance goes)."""
        enis = {e["NetworkInterfaceId"] for e in self.ec2.network_interfaces(
            {"Name": "attachment.instance-id", "Values": [instance_id]})}
        for address in self.ec2.addresses(T.tag_filter(T.ENVIRONMENT, self.env.name)):
            if address.get("AssociationId") and address.get("NetworkInterfaceId") in enis:
                self.ec2.disassociate_address(address["AssociationId"])

    def _wait_terminated(self, instance_ids: list[str]) -> None:
        deadline = time.monotonic() + INSTANCE_TIMEOUT  # one deadline for the whole roll-back
        for iid in instance_ids:
            self.ec2.wait_instance_state(iid, "terminated", timeout=max(1.0, deadline - time.monotonic()))

    def _kept(self, launched: list[tuple[InstanceReport, float]]) -> None:
        ids = ", ".join(r.instance_id for r, _ in launched) or "nothing"
        self.report.warn(f"--keep-on-error: kept launch {self.launch_id}: {ids}")

    def readiness(self, tier: str) -> HealthCheck | None:
        """The tier's check; without one, cloud-init having finished where the cloud's consoles show
        it (Cloud.boot_console), else nothing: such an instance is reported "not checked"."""
        check = self.env.tiers[tier].health_check
        if check is None and self.cloud.boot_console:
            return HealthCheck(type="cloud-init")
        return check

    def check_health(self, launched: list[tuple[InstanceReport, float]]) -> None:
        """Check every instance at once: each one's readiness is timed from its own launch."""
        checks = {tier: TierCheck(self.cloud, self.env, tier, check, self.settings.project_dir)
                  for tier in {r.tier for r, _ in launched}
                  if (check := self.readiness(tier)) is not None and check.type != "cloud-init"}

        def one(rep: InstanceReport, t0: float) -> None:
            check = self.readiness(rep.tier)
            if check is None:
                rep.health = "not checked"
                return
            if check.type == "cloud-init":
                wait_cloud_init(self.ec2.console_output, rep.instance_id, deadline=t0 + check.timeout)
                rep.health = "cloud-init done"
            else:
                checks[rep.tier].until(rep.instance_id, deadline=t0 + check.timeout)
                rep.health = "healthy"
            rep.ready_s = round(time.monotonic() - t0, 3)

        if not any(self.readiness(r.tier) for r, _ in launched):
            for rep, t0 in launched:
                one(rep, t0)
            return
        with self.report.stage("health checks") as s, \
                ThreadPoolExecutor(max_workers=16, initializer=block_in_this_thread) as pool:
            futures = [submit_in_stage(pool, one, rep, t0) for rep, t0 in launched]  # their waits: this stage's
            for future in futures:
                future.result()  # the first failure (a WaitTimeout naming the instance) propagates
            s.detail = ", ".join(f"{r.tier}[{r.slot}] ready {r.ready_s:.2f}s" for r, _ in launched
                                 if r.ready_s is not None)

    @staticmethod
    def _machine(rep: InstanceReport) -> Machine:
        return Machine(rep.instance_id, rep.private_ip, rep.public_ip)

    def _reach(self, result: LaunchReport) -> str | None:
        """How a person reaches the first healthy instance from this machine's shell."""
        for rep in result.instances:
            check = self.env.tiers[rep.tier].health_check
            if rep.health != "healthy" or check is None or check.type == "cloud-init":
                continue
            prefix, host = self.cloud.dial.shell_prefix(self._machine(rep))
            if check.type == "http":
                return f"{prefix}curl -s http://{host}:{check.port}{check.path}"
            return f"{prefix}bash -c 'echo > /dev/tcp/{host}/{check.port}' && echo port {check.port} open"
        return None

    # ---- after launch -------------------------------------------------------------------

    def register_targets(self, instances: list[InstanceReport]) -> None:
        by_tier: dict[str, list[str]] = {}
        for rep in instances:
            if self.env.tiers[rep.tier].auto_scaling:  # the group registers its instances itself
                continue
            by_tier.setdefault(rep.tier, []).append(rep.instance_id)
        for tier, ids in by_tier.items():
            arn = self.env.tiers[tier].target_group_arn
            if arn:
                with self.report.stage(f"register {tier} in target group"):
                    self.ec2.register_targets(arn, ids)

    def template_data(self, plan: TierPlan) -> dict:
        """The tier's instance as LaunchTemplateData: its first slot's, without per-launch tags."""
        return tier_spec(self.env, plan, "0", self.launch_id).template_data()

    def write_launch_templates(self, plans: list[TierPlan]) -> dict[str, str]:
        """A new launch template version per tier that asks for one: the tier's instance, pinned to
        this image and user data."""
        out = {}
        for plan in plans:
            spec = self.env.tiers[plan.tier].launch_template
            if spec is None or plan.group:  # a group's versions are written before it moves (group.py)
                continue
            data = self.template_data(plan)
            with self.report.stage(f"launch template {spec.name}") as s:
                version = self.ec2.new_launch_template_version(spec.name, data, f"bakery {self.launch_id}",
                                                               tags=T.tier_tags(self.env.name, plan.tier))
                if spec.set_default:
                    self.ec2.set_default_template_version(spec.name, version)
                out[plan.tier] = f"{spec.name}:{version}"
                s.detail = out[plan.tier]
        return out


def checked_environment(settings: Settings, env_name: str, tier: str | None) -> tuple[Environment, dict[str, Tier]]:
    """The environment and its selected tiers, once what the files alone can refuse has been
    refused: before any cloud call (and before the local cloud starts)."""
    env = load_environment(settings.envs, env_name, settings.region)
    tiers = env.select(tier)
    # Bad templates, variables and secrets: render every tier once offline, as `invoke validate`
    # does. A waiver that matched nothing is stale, which only a render of every tier can tell.
    lint = environment_lint(env)
    for name in tiers:
        render_offline(settings, env, name, lint)
    if tier is None:
        lint.unused()
    require_logins(settings, env, list(tiers))
    if env.require_verified_images:  # the trusted key is read before the cloud opens
        from bakery.evidence.attestation import trusted_key

        trusted_key(settings)
    return env, tiers


def launch(settings: Settings, env_name: str, *, tier: str | None = None, dry_run: bool = False,
           report: Reporter, keep_on_error: bool = False, cloud: Cloud | None = None) -> LaunchReport:
    env, tiers = checked_environment(settings, env_name, tier)
    runner = Launch(settings, env, report=report, cloud=cloud or open_cloud(settings), keep_on_error=keep_on_error)
    from bakery.housekeeping.locks import exclusive

    # planning counts the instances already there: a concurrent launch here must wait its turn
    with exclusive(settings.state / "locks", f"launch-{runner.ec2.region}-{env.name}",
                   lambda: report.stage(f"wait for another launch of {env.name} running here")):
        return runner.run(tiers, dry_run)
