"""Launch an environment: plan every tier, then run instances, wait, check health.

Planning (images resolved, user data rendered and validated, subnets and groups
resolved) happens for every tier before anything is created, so bad input never
leaves half an environment behind. Launching is idempotent by tag: each instance
fills a numbered slot (`bakery:slot`), and a re-run only fills the empty ones.
What this run launched is terminated again if the run fails or is interrupted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets as pysecrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from bakery.config.environment import Environment, Tier, load_environment
from bakery.errors import BakeryError, ConfigError
from bakery.housekeeping.locks import exclusive
from bakery.progress import Reporter
from bakery.config.settings import Settings
from bakery.signals import shielded

LIVE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclass
class TierPlan:
    tier: str
    strategy: str
    image_id: str
    image_name: str
    recipe: str | None
    instance_type: str
    count: int
    existing: list[str]
    missing_slots: list[str]
    subnets: list[str]
    vpc_id: str
    security_groups: list[str]
    user_data_size: int
    user_data_raw_size: int
    user_data_gzipped: bool
    user_data_sha256: str
    root_device_name: str = "/dev/xvda"
    user_data: bytes = field(default=b"", repr=False)
    interfaces: list = field(default_factory=list, repr=False)  # network.ResolvedInterface, when declared
    health_check: dict | None = None


@dataclass
class InstanceReport:
    tier: str
    slot: str
    instance_id: str
    private_ip: str | None
    public_ip: str | None
    image_id: str
    running_s: float | None = None
    ready_s: float | None = None
    health: str = "not checked"


@dataclass
class LaunchReport:
    environment: str
    launch_id: str
    region: str
    dry_run: bool
    plans: list[TierPlan]
    instances: list[InstanceReport] = field(default_factory=list)
    launch_templates: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    local: bool = False
    network: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self, dict_factory=lambda items: {k: v for k, v in items if k not in ("user_data", "interfaces")})
        return json.dumps(data, indent=2, sort_keys=True)


def template_context(env: Environment, tier: str, image_id: str, region: str) -> dict[str, object]:
    """What every user data template receives (README: 'Variables every template receives')."""
    spec = env.tiers[tier]
    return {**env.variables_for(tier), "environment": env.name, "tier": tier, "region": region,
            "image_id": image_id, "recipe": spec.image.recipe or ""}


def render_tier(settings: Settings, env: Environment, tier: str, image_id: str, region: str):
    """The exact user data a tier's instances get (None for strategy `baked`)."""
    from bakery.render.userdata import PartSpec, Secret, lint_value, render_user_data

    spec = env.tiers[tier]
    if spec.strategy == "baked" or (spec.strategy == "combined" and not spec.user_data.parts and not spec.secrets):
        return None  # nothing per-environment to send
    where = f"{env.path}: tiers.{tier}"
    for key, value in env.variables_for(tier).items():
        lint_value(value, f"{where}: variable {key}")
    extra = []
    if spec.strategy == "bootstrap":
        from bakery.render.bootstrap import bootstrap_script
        from bakery.config.recipe import load_recipe

        recipe = load_recipe(settings.recipes, spec.image.recipe)
        extra.append((f"bootstrap-{recipe.name}.sh", "text/x-shellscript",
                      bootstrap_script(recipe, recipe.resolve_vars({}))))
    return render_user_data(settings.userdata, [PartSpec(p) for p in spec.user_data.parts],
                            template_context(env, tier, image_id, region),
                            secrets=[Secret(k, v) for k, v in spec.secrets.items()], region=region,
                            where=where, extra_parts=extra)


class Launcher:
    def __init__(self, settings: Settings, env: Environment, *, report: Reporter, ec2=None,
                 keep_on_error: bool = False):
        from bakery.cloud.ec2 import EC2

        self.settings = settings
        self.env = env
        self.report = report
        self.ec2 = ec2 or EC2(settings)
        self.keep_on_error = keep_on_error
        self.ledger = None  # set for the duration of a real launch
        self.launch_id = datetime.now(timezone.utc).strftime("l-%Y%m%d%H%M%S-") + pysecrets.token_hex(3)

    # ---- plan ---------------------------------------------------------------------------

    def plan(self, tiers: dict[str, Tier]) -> list[TierPlan]:
        plans = []
        for name, spec in tiers.items():
            with self.report.stage(f"plan tier {name}") as s:
                plans.append(self._plan_tier(name, spec))
                p = plans[-1]
                s.detail = (f"{p.strategy}, {p.image_id}, {p.count} x {p.instance_type} "
                            f"({len(p.existing)} running, {len(p.missing_slots)} to launch), "
                            f"user data {p.user_data_size} bytes")
        return plans

    def _plan_tier(self, name: str, spec: Tier) -> TierPlan:
        where = f"{self.env.path}: tiers.{name}"
        image = self.image(name, spec, where)
        user_data = render_tier(self.settings, self.env, name, image["ImageId"], self.ec2.region)
        resolved = []
        existing = self._existing(name)
        taken = {_tag(i, "bakery:slot") for i in existing}
        slots = [str(i) for i in range(spec.count)] + [f"standby-{i}" for i in range(spec.standby)]
        missing = [s for s in slots if s not in taken]
        if spec.interfaces:
            # fixed addresses must be free only when this run launches instances to hold them
            resolved = self._network().resolve_interfaces(name, spec, new_instances=bool(missing))
            primary = resolved[0]
            if primary.subnet.id is None:
                raise ConfigError(f"{where}.interfaces: subnet {primary.spec.subnet!r} does not exist yet: "
                                  f"run invoke network.up --env {self.env.name}")
            subnets = [{"SubnetId": primary.subnet.id, "VpcId": primary.subnet.vpc}]
            groups = primary.groups
        else:
            subnets = self._subnets(spec, where)
        vpc = subnets[0]["VpcId"]
        if any(s["VpcId"] != vpc for s in subnets):
            raise ConfigError(f"{where}.subnets: subnets are in different VPCs ({', '.join(sorted({s['VpcId'] for s in subnets}))})")
        if not spec.interfaces:
            groups = self._groups(spec, vpc, where)
        return TierPlan(
            tier=name, strategy=spec.strategy, image_id=image["ImageId"], image_name=image.get("Name", ""),
            recipe=spec.image.recipe, instance_type=spec.instance_type, count=spec.count,
            existing=[i["InstanceId"] for i in existing], missing_slots=missing,
            subnets=[s["SubnetId"] for s in subnets], vpc_id=vpc, security_groups=groups,
            user_data_size=user_data.size if user_data else 0,
            user_data_raw_size=len(user_data.text.encode()) if user_data else 0,
            user_data_gzipped=bool(user_data and user_data.gzipped),
            user_data_sha256=user_data.sha256 if user_data else "",
            root_device_name=image.get("RootDeviceName") or "/dev/xvda",
            user_data=user_data.payload if user_data else b"", interfaces=resolved,
            health_check=spec.health_check.model_dump() if spec.health_check else None)

    def image(self, name: str, spec: Tier, where: str) -> dict:
        """The image a tier launches from (read-only calls)."""
        ref = spec.image
        if spec.strategy == "bootstrap":  # the recipe's own source image; its steps run at boot
            from bakery.config.recipe import load_recipe

            recipe = load_recipe(self.settings.recipes, ref.recipe)
            source = self.ec2.resolve_source(recipe.source)
            return {"ImageId": source.id, "Name": source.name, "RootDeviceName": source.root_device_name}
        if ref.recipe:
            images = self.ec2.bakery_images(recipe=ref.recipe)
            if not images:
                raise ConfigError(f"{where}.image.recipe: no finished image of recipe {ref.recipe!r} in "
                                  f"{self.ec2.region}; bake one first: invoke bake --recipe {ref.recipe}")
            return images[0]
        if ref.ssm_parameter:
            value = self.ec2.call(f"ssm get-parameter {ref.ssm_parameter}", self.ec2.ssm.get_parameter,
                                  Name=ref.ssm_parameter)["Parameter"]["Value"]
            return self.ec2.available_image(value, f"{where}.image.ssm_parameter ({ref.ssm_parameter})")
        return self.ec2.available_image(ref.ami, f"{where}.image.ami")

    def _subnets(self, spec: Tier, where: str) -> list[dict]:
        """The tier's subnets (declared network names, ids or Name tags); default: the default VPC's first."""
        if not spec.subnets:
            resp = self.ec2.call("describe-subnets (default VPC)", self.ec2.client.describe_subnets,
                                 Filters=[{"Name": "default-for-az", "Values": ["true"]}])
            subnets = sorted(resp["Subnets"], key=lambda s: (s.get("AvailabilityZone", ""), s["SubnetId"]))
            if not subnets:
                raise ConfigError(f"{where}.subnets: not set and region {self.ec2.region} has no default VPC")
            return subnets[:1]
        network = self._network()
        out = []
        for ref in spec.subnets:
            info = network.subnet(ref, f"{where}.subnets")
            if info.id is None:
                raise ConfigError(f"{where}.subnets: subnet {ref!r} does not exist yet: "
                                  f"run invoke network.up --env {self.env.name}")
            out.append({"SubnetId": info.id, "VpcId": info.vpc})
        return out

    def _groups(self, spec: Tier, vpc: str, where: str) -> list[str]:
        network = self._network()
        out = []
        for ref in spec.security_groups or ["default"]:
            group = network.group(ref, vpc, f"{where}.security_groups")
            if group is None:
                raise ConfigError(f"{where}.security_groups: {ref!r} does not exist yet: "
                                  f"run invoke network.up --env {self.env.name}")
            out.append(group)
        return out

    def _network(self):
        from bakery.network import Network

        return Network(self.ec2, self.env)

    def _existing(self, tier: str) -> list[dict]:
        reservations = self.ec2.describe_all("describe_instances", "Reservations", Filters=[
            {"Name": "tag:bakery:environment", "Values": [self.env.name]},
            {"Name": "tag:bakery:tier", "Values": [tier]},
            {"Name": "instance-state-name", "Values": LIVE_STATES}])
        return [i for r in reservations for i in r["Instances"]]

    # ---- launch -------------------------------------------------------------------------

    def launch(self, plans: list[TierPlan]) -> list[InstanceReport]:
        started = time.monotonic()
        launched: list[tuple[InstanceReport, float]] = []
        with contextlib.ExitStack() as stack:
            def rollback():
                ids = [r.instance_id for r, _ in launched]
                if self.keep_on_error:
                    self._journal("kept", ids)  # left for inspection, on purpose
                    return
                with shielded():
                    try:
                        self._roll_back(ids)
                    except BakeryError as exc:  # never mask why the launch failed
                        self.report.warn(f"roll back failed: {exc.message}; run invoke janitor")
            stack.callback(rollback)
            # Tiers that ask for fixed addresses go first, before automatic ones can take them.
            for plan in sorted(plans, key=lambda p: not any(r.spec.private_ip for r in p.interfaces)):
                spec = self.env.tiers[plan.tier]
                for slot in plan.missing_slots:
                    with self.report.stage(f"launch {plan.tier} slot {slot}") as s:
                        t0 = time.monotonic()
                        inst = self._run(plan, spec, slot)
                        self._journal("created", [inst["InstanceId"]])
                        rep = InstanceReport(plan.tier, slot, inst["InstanceId"], inst.get("PrivateIpAddress"),
                                             inst.get("PublicIpAddress"), plan.image_id)
                        launched.append((rep, t0))
                        s.detail = f"{rep.instance_id} ({plan.instance_type}, {inst.get('SubnetId')})"
            for rep, t0 in launched:
                with self.report.stage(f"wait for {rep.instance_id} to run"):
                    inst = self.ec2.wait_instance_state(rep.instance_id, "running", timeout=600)
                    rep.running_s = round(time.monotonic() - t0, 3)
                plan = next(p for p in plans if p.tier == rep.tier)
                if plan.interfaces:
                    from bakery.network import Network

                    with self.report.stage(f"network interfaces of {rep.instance_id}"):
                        Network(self.ec2, self.env).configure_attached(rep.instance_id, plan.interfaces,
                                                                       active=rep.slot.isdigit())
                        inst = self.ec2.describe_instance(rep.instance_id)
                rep.private_ip, rep.public_ip = inst.get("PrivateIpAddress"), inst.get("PublicIpAddress")
            self._health(launched)
            stack.pop_all()  # success: keep everything
            self._journal("kept", [r.instance_id for r, _ in launched])
        self.report.info(f"launched {len(launched)} instance(s) in {time.monotonic() - started:.1f}s")
        return [r for r, _ in launched]

    def _roll_back(self, ids: list[str]) -> None:
        """Terminate what this launch started, by id and by its launch-id tag (the endpoint may have
        launched one whose answer a signal cut off), and take back the Elastic IPs it put on their
        interfaces; persistent ENIs detach as their instances terminate."""
        c, call = self.ec2.client, self.ec2.call
        tagged = self.ec2.describe_all("describe_instances", "Reservations", Filters=[
            {"Name": "tag:bakery:launch-id", "Values": [self.launch_id]},
            {"Name": "instance-state-name", "Values": LIVE_STATES}])
        ids = sorted(set(ids) | {i["InstanceId"] for r in tagged for i in r["Instances"]})
        if not ids:
            return
        with self.report.stage(f"roll back: terminate {len(ids)} instance(s)"):
            enis = {e["NetworkInterfaceId"] for e in call("describe-network-interfaces", c.describe_network_interfaces,
                    Filters=[{"Name": "attachment.instance-id", "Values": ids}])["NetworkInterfaces"]}
            for a in call("describe-addresses", c.describe_addresses, Filters=[
                    {"Name": "tag:bakery:environment", "Values": [self.env.name]}])["Addresses"]:
                if a.get("AssociationId") and a.get("NetworkInterfaceId") in enis:
                    call("disassociate-address", c.disassociate_address, AssociationId=a["AssociationId"])
            call("terminate-instances", c.terminate_instances, InstanceIds=ids)
            self._journal("removed", ids)

    def _journal(self, event: str, instance_ids: list[str]) -> None:
        """Until the launch succeeds its instances are the janitor's if this process dies."""
        if self.ledger is not None:
            for iid in instance_ids:
                getattr(self.ledger, event)("instance", iid, self.ec2.region)

    def _run(self, plan: TierPlan, spec: Tier, slot: str) -> dict:
        from bakery.cloud.ec2 import tag_list
        from bakery.config.recipe import RootVolume

        tags = {**self.env.tags, **spec.tags, "Name": f"{self.env.name}-{plan.tier}-{slot}",
                "bakery:environment": self.env.name, "bakery:tier": plan.tier, "bakery:slot": str(slot),
                "bakery:launch-id": self.launch_id, "bakery:strategy": plan.strategy,
                "bakery:role": "standby" if slot.startswith("standby") else "active"}
        volume = spec.root_volume or RootVolume()
        ebs = {"VolumeSize": volume.size_gb, "VolumeType": volume.type, "Encrypted": volume.encrypted,
               "DeleteOnTermination": True, **({"KmsKeyId": volume.kms_key_id} if volume.kms_key_id else {})}
        if plan.interfaces:
            nics = [_nic(r) for r in plan.interfaces if not r.spec.persistent]
        else:
            index = int(slot) if slot.isdigit() else spec.count + int(slot.rpartition("-")[2])
            nics = [{"DeviceIndex": 0, "SubnetId": plan.subnets[index % len(plan.subnets)],
                     "Groups": plan.security_groups, "DeleteOnTermination": True}]
            if spec.public_ip is not None:
                nics[0]["AssociatePublicIpAddress"] = spec.public_ip
        params = {
            "ImageId": plan.image_id, "InstanceType": plan.instance_type, "MinCount": 1, "MaxCount": 1,
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
            "BlockDeviceMappings": [{"DeviceName": volume.device_name or plan.root_device_name, "Ebs": ebs}],
            "NetworkInterfaces": nics,
            "TagSpecifications": [{"ResourceType": k, "Tags": tag_list(tags)}
                                  for k in ("instance", "volume", "network-interface")],
            # The same token for every launch that sees the same world (slot, instances already there,
            # image, user data): a retried call, or a concurrent launch on another machine, gets the
            # same instance back from EC2 instead of a second one. A replaced instance changes the world.
            "ClientToken": str(uuid.uuid5(uuid.NAMESPACE_URL, "bakery/" + "/".join(
                [self.env.name, plan.tier, slot, ",".join(sorted(plan.existing)), plan.image_id,
                 plan.user_data_sha256]))),
        }
        if plan.user_data:
            params["UserData"] = plan.user_data
        if spec.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": spec.iam_instance_profile}
        if spec.key_name:
            params["KeyName"] = spec.key_name
        inst = self.ec2.call(f"run-instances ({plan.tier})", self.ec2.client.run_instances, **params)["Instances"][0]
        # EC2 remembers a token for hours: after a rolled-back launch the same world asks again and
        # is handed the instance that was terminated. Ask again under a token derived from it, so
        # every launcher that meets the same dead instance still agrees on the next token.
        for _ in range(5):
            if inst["State"]["Name"] not in ("shutting-down", "terminated"):
                break
            params["ClientToken"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{params['ClientToken']}/{inst['InstanceId']}"))
            inst = self.ec2.call(f"run-instances ({plan.tier})", self.ec2.client.run_instances, **params)["Instances"][0]
        return inst

    def _health(self, launched) -> None:
        """Check every instance at once: each one's readiness is timed from its own launch."""
        from concurrent.futures import ThreadPoolExecutor

        from bakery.remote.health import check_until

        def one(rep: InstanceReport, t0: float) -> None:
            check = self.env.tiers[rep.tier].health_check
            if check is None:
                rep.ready_s = rep.running_s
                return
            address = rep.public_ip if check.address == "public_ip" else rep.private_ip
            check_until(self.ec2, rep.instance_id, address, check, deadline=t0 + check.timeout)
            rep.ready_s = round(time.monotonic() - t0, 3)
            rep.health = "healthy"

        if not any(self.env.tiers[r.tier].health_check for r, _ in launched):
            for rep, t0 in launched:
                one(rep, t0)
            return
        with self.report.stage("health checks") as s, ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(one, rep, t0) for rep, t0 in launched]
            for future in futures:
                future.result()  # the first failure (a WaitTimeout naming the instance) propagates
            s.detail = ", ".join(f"{r.tier}[{r.slot}] ready {r.ready_s:.2f}s" for r, _ in launched
                                 if r.health == "healthy")

    # ---- after launch -------------------------------------------------------------------

    def register_targets(self, instances: list[InstanceReport]) -> None:
        by_tier: dict[str, list[str]] = {}
        for rep in instances:
            by_tier.setdefault(rep.tier, []).append(rep.instance_id)
        for tier, ids in by_tier.items():
            arn = self.env.tiers[tier].target_group_arn
            if not arn:
                continue
            elb = self.ec2.session.client("elbv2", region_name=self.ec2.region,
                                          endpoint_url=self.ec2.settings.endpoint_url)
            with self.report.stage(f"register {tier} in target group"):
                targets = [{"Id": i} for i in ids]
                self.ec2.call("elbv2 register-targets", elb.register_targets, TargetGroupArn=arn, Targets=targets)
                elb.get_waiter("target_in_service").wait(TargetGroupArn=arn, Targets=targets,
                                                         WaiterConfig={"Delay": 2, "MaxAttempts": 150})

    def write_launch_templates(self, plans: list[TierPlan]) -> dict[str, str]:
        """A new launch template version per tier that asks for one, pinned to this image and user data."""
        out = {}
        c = self.ec2.client
        for plan in plans:
            spec = self.env.tiers[plan.tier].launch_template
            if spec is None:
                continue
            data = {"ImageId": plan.image_id, "InstanceType": plan.instance_type,
                    "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
                    "SecurityGroupIds": plan.security_groups,
                    "TagSpecifications": [{"ResourceType": "instance", "Tags": [
                        {"Key": "bakery:environment", "Value": self.env.name},
                        {"Key": "bakery:tier", "Value": plan.tier}]}]}
            if plan.user_data:  # launch templates take base64 that the caller encodes (unlike RunInstances)
                data["UserData"] = base64.b64encode(plan.user_data).decode()
            with self.report.stage(f"launch template {spec.name}") as s:
                version = self.ec2.new_launch_template_version(spec.name, data, f"bakery {self.launch_id}")
                if spec.set_default:
                    self.ec2.call("modify-launch-template", c.modify_launch_template,
                                  LaunchTemplateName=spec.name, DefaultVersion=str(version))
                out[plan.tier] = f"{spec.name}:{version}"
                s.detail = out[plan.tier]
        return out


def launch(settings: Settings, env_name: str, *, tier: str | None = None, dry_run: bool = False,
           report: Reporter, keep_on_error: bool = False) -> LaunchReport:
    env = load_environment(settings.envs, env_name)
    tiers = env.select(tier)
    # Bad templates, variables and secrets are refused before any cloud call (and before the
    # local cloud starts): render every tier once offline, as `invoke validate` does.
    from bakery.render.validate import PLACEHOLDER_IMAGE

    for name, spec in tiers.items():
        render_tier(settings, env, name, spec.image.ami or PLACEHOLDER_IMAGE, settings.region)
    started = time.monotonic()
    launcher = Launcher(settings, env, report=report, keep_on_error=keep_on_error)
    # planning counts the instances already there: a concurrent launch here must wait its turn
    with exclusive(settings.state / "locks", f"launch-{launcher.ec2.region}-{env.name}",
                   lambda: report.info(f"another launch of {env.name} is running here; waiting")):
        return _launch_locked(launcher, env, tiers, dry_run, report, started)


def _launch_locked(launcher: "Launcher", env: Environment, tiers: dict, dry_run: bool, report: Reporter,
                   started: float) -> LaunchReport:
    network_actions = []
    if env.network is not None:  # the network comes first: tiers resolve their subnets and ENIs in it
        from bakery.network import Network

        with report.stage("network") as s:
            network_actions = Network(launcher.ec2, env, report).up(dry_run=dry_run)
            made = [a for a in network_actions if a.status != "exists"]
            s.detail = f"{len(network_actions) - len(made)} in place, {len(made)} {'to create' if dry_run else 'created'}"
        if dry_run and any(a.status == "create" for a in network_actions):
            # tiers cannot be planned against subnets that do not exist yet
            return LaunchReport(environment=env.name, launch_id=launcher.launch_id, region=launcher.ec2.region,
                                dry_run=True, plans=[], network=[a.line() for a in network_actions],
                                local=launcher.ec2.local is not None)
    plans = launcher.plan(tiers)
    result = LaunchReport(environment=env.name, launch_id=launcher.launch_id, region=launcher.ec2.region,
                          dry_run=dry_run, plans=plans, local=launcher.ec2.local is not None,
                          network=[a.line() for a in network_actions])
    if not dry_run:
        from bakery.housekeeping.ledger import Ledger

        with Ledger(launcher.settings.state / "ledger", launcher.launch_id, f"launch {env.name}") as ledger:
            launcher.ledger = ledger
            result.instances = launcher.launch(plans)
        launcher.register_targets(result.instances)
        result.launch_templates = launcher.write_launch_templates(plans)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _nic(r) -> dict:
    """A launch-time (non-persistent) ENI of a tier that declares interfaces."""
    nic = {"DeviceIndex": r.spec.device_index, "SubnetId": r.subnet.id, "Groups": r.groups,
           "DeleteOnTermination": True, "Description": r.spec.description or "bakery"}
    if r.spec.private_ip:
        nic["PrivateIpAddress"] = r.spec.private_ip
    if r.spec.public_ip is not None:
        nic["AssociatePublicIpAddress"] = r.spec.public_ip
    return nic


def _tag(resource: dict, key: str) -> str | None:
    for t in resource.get("Tags", []):
        if t["Key"] == key:
            return t["Value"]
    return None

