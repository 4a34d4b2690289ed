"""Planning a launch: for every tier, before anything is created, its image, its rendered user
data, its subnets, groups and interfaces, and which of its slots are empty.

Planning makes read-only calls only, so bad input never leaves half an environment behind.
Launching is idempotent by tag: each instance fills a numbered slot (`bakery:slot`), and a
re-run only fills the empty ones.
"""

from __future__ import annotations

from bakery.cloud import tags as T
from bakery.config.environment import Environment, Tier
from bakery.config.settings import Settings
from bakery.errors import ConfigError
from bakery.launch.group import group_name
from bakery.launch.report import TierPlan
from bakery.progress import Reporter
from bakery.render.tier import render_tier


def slot_index(count: int, slot: str) -> int:
    """A slot's number: "0".."count-1" for the active instances, then the standbys after them
    (what templates see as instance_index; subnets are spread round-robin by it)."""
    return int(slot) if slot.isdigit() else count + int(slot.rpartition("-")[2])


class Planner:
    def __init__(self, settings: Settings, env: Environment, ec2, report: Reporter):
        self.settings, self.env, self.ec2, self.report = settings, env, ec2, report

    def plan(self, tiers: dict[str, Tier]) -> list[TierPlan]:
        plans = []
        for name, spec in tiers.items():
            with self.report.stage(f"plan tier {name}") as s:
                plans.append(self._plan_tier(name, spec))
                p = plans[-1]
                fill = f"desired {p.count}" if p.group else f"{len(p.missing_slots)} to launch"
                s.detail = (f"{p.strategy}, {p.image_id}, {p.count} x {p.instance_type} ({p.in_place()}, {fill}), "
                            f"user data {p.user_data_size} bytes")
        return plans

    def _plan_tier(self, name: str, spec: Tier, image: dict | None = None) -> TierPlan:
        """`image`: this one instead of the tier's (a rollout's way back to the image it replaced)."""
        where = f"{self.env.path}: tiers.{name}"
        image = image or self.image(spec, where)
        if self.env.require_verified_images:
            self._verified(image["ImageId"], where)
        resolved = []
        existing = self.ec2.tier_instances(self.env.name, name)
        taken = {T.tags_of(i).get(T.SLOT) for i in existing}
        slots = [str(i) for i in range(spec.count)] + [f"standby-{i}" for i in range(spec.standby)]
        missing = [s for s in slots if s not in taken] if spec.auto_scaling is None else []
        # each instance's own rendering (templates see its instance_index); the plan, and a launch
        # template version, show slot 0's (rendered even for a tier of none, which validates it)
        per_slot = {slot: render_tier(self.settings, self.env, name, image["ImageId"], self.ec2.region,
                                      slot_index(spec.count, slot)) for slot in slots or ["0"]}
        user_data = per_slot[(slots or ["0"])[0]]
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
            raise ConfigError(f"{where}.subnets: subnets are in different VPCs "
                              f"({', '.join(sorted({s['VpcId'] for s in subnets}))})")
        if not spec.interfaces:
            groups = self._groups(spec, vpc, where)
        return TierPlan(
            tier=name, strategy=spec.strategy, image_id=image["ImageId"], image_name=image.get("Name", ""),
            recipe=spec.image.recipe, instance_type=spec.instance_type, count=spec.count,
            existing=[i["InstanceId"] for i in existing], missing_slots=missing,
            stopped=[i["InstanceId"] for i in existing if i["State"]["Name"] != "running"],
            subnets=[s["SubnetId"] for s in subnets], vpc_id=vpc, security_groups=groups,
            user_data_size=user_data.size if user_data else 0,
            user_data_raw_size=len(user_data.text.encode()) if user_data else 0,
            user_data_gzipped=bool(user_data and user_data.gzipped),
            user_data_sha256=user_data.sha256 if user_data else "",
            root_device_name=image.get("RootDeviceName") or "/dev/xvda",
            user_data=user_data.payload if user_data else b"", interfaces=resolved,
            health_check=spec.health_check.model_dump() if spec.health_check else None,
            slot_user_data={slot: (ud.payload, ud.sha256) for slot, ud in per_slot.items() if ud is not None},
            group=group_name(self.env, name) if spec.auto_scaling else None)

    def plan_tier(self, name: str, image: dict | None = None) -> TierPlan:
        """One tier's plan as it stands now (on `image`, if given), without a stage line."""
        return self._plan_tier(name, self.env.tiers[name], image)

    def _verified(self, image_id: str, where: str) -> None:
        from bakery.errors import VerificationFailed
        from bakery.evidence.attestation import trusted_key, verify_image

        try:
            verify_image(self.ec2, self.settings.state / "evidence", trusted_key(self.settings), image_id)
        except VerificationFailed as exc:
            raise VerificationFailed(f"{where}: require_verified_images: {exc.message}") from None

    def image(self, spec: Tier, where: str) -> dict:
        """The image a tier launches from."""
        ref = spec.image
        if spec.strategy == "bootstrap":  # the recipe's own source image; its steps run at boot
            from bakery.config.recipe import load_recipe

            source = self.ec2.resolve_source(load_recipe(self.settings.recipes, ref.recipe).source.model_dump())
            return {"ImageId": source.id, "Name": source.name, "RootDeviceName": source.root_device_name}
        if ref.recipe:
            images = self.ec2.bakery_images(recipe=ref.recipe)
            if not images:
                raise ConfigError(f"{where}.image.recipe: no finished image of recipe {ref.recipe!r} in "
                                  f"{self.ec2.region}; bake one first: invoke bake --recipe {ref.recipe}")
            return images[0]
        if ref.ssm_parameter:
            value = self.ec2.parameter(ref.ssm_parameter)
            return self.ec2.available_image(value, f"{where}.image.ssm_parameter ({ref.ssm_parameter})")
        return self.ec2.available_image(ref.ami, f"{where}.image.ami")

    def _subnets(self, spec: Tier, where: str) -> list[dict]:
        """The tier's subnets (declared network names, ids or Name tags); default: the default VPC's first."""
        if not spec.subnets:
            return [self.ec2.default_subnet(f"{where}.subnets")]
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
