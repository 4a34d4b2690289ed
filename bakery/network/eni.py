"""Moving network interfaces: a new instance's ENIs made ready, persistent ENIs attached and
detached, Elastic IPs put on them, and `failover`, which moves a tier's persistent ENIs (with
their addresses, MACs and Elastic IPs) from the active instance to a hot standby.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from bakery.cloud.tags import ROLE, ROLE_STANDBY, SLOT, slot_tags, tag_filter, tags_of
from bakery.waits import Backoff, wait_for
from bakery.config.environment import Environment, Tier
from bakery.errors import CloudError, ConfigError
from bakery.network.resolve import ResolvedInterface, Resolver
from bakery.progress import Reporter


@dataclass
class FailoverReport:
    environment: str
    tier: str
    from_instance: str | None
    to_instance: str
    interfaces: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    #: what the instance that held the interfaces became: "standby-0" (healthy: the new hot
    #: standby) or "failed-EPOCH" (kept for inspection; the next launch refills the standby slot)
    from_slot: str | None = None
    from_problem: str | None = None  # why it could not be the standby


#: whether an instance can serve as a tier's hot standby: None if so, else why not
Probe = Callable[[dict], "str | None"]


def running_probe(instance: dict) -> str | None:
    state = instance.get("State", {}).get("Name")
    return None if state == "running" else f"it is {state}"


class Interfaces:
    """ENI moves through the EC2 facade `ec2`, each waited for until EC2 says it is done."""

    def __init__(self, ec2):
        self.ec2 = ec2

    def configure_attached(self, instance_id: str, resolved: list[ResolvedInterface], *, active: bool) -> None:
        """After launch: secondary IPs and source/dest check on launch-time ENIs, persistent
        ENIs attached (active instance only), Elastic IPs associated."""
        inst = self.ec2.describe_instance(instance_id)
        by_index = {n["Attachment"]["DeviceIndex"]: n for n in inst.get("NetworkInterfaces", [])}
        for r in resolved:
            if r.spec.persistent:
                if not active:
                    continue
                self.attach(r.eni_id, instance_id, r.spec.device_index)
                eni_id = r.eni_id
            else:
                eni_id = self._complete(by_index[r.spec.device_index], r)
            if r.spec.elastic_ip and (active or not r.spec.persistent):
                self.associate_eip(r, eni_id)

    def _complete(self, eni: dict, r: ResolvedInterface) -> str:
        """What RunInstances cannot ask for on a launch-time ENI: its secondary addresses and
        source/dest check off."""
        eni_id = eni["NetworkInterfaceId"]
        have = {a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])}
        missing = [ip for ip in r.spec.secondary_ips if ip not in have]
        if missing:
            self.ec2.assign_private_ips(eni_id, missing)
        elif r.spec.secondary_ip_count and len(have) < 1 + r.spec.secondary_ip_count:
            self.ec2.assign_private_ips(eni_id, count=1 + r.spec.secondary_ip_count - len(have))
        if not r.spec.source_dest_check:
            self.ec2.set_source_dest_check(eni_id, False)
        return eni_id

    def associate_eip(self, r: ResolvedInterface, eni_id: str) -> None:
        self.ec2.associate_address(r.eip_allocation, eni_id, r.spec.elastic_ip.private_ip or r.spec.private_ip)

    def attach(self, eni_id: str, instance_id: str, device_index: int, timeout: float = 120) -> None:
        self.ec2.attach_network_interface(eni_id, instance_id, device_index)
        self._wait(eni_id, lambda e: e.get("Attachment", {}).get("Status") == "attached"
                   and e["Attachment"].get("InstanceId") == instance_id, f"{eni_id} to attach to {instance_id}", timeout)

    def detach(self, eni: dict, force: bool, timeout: float = 120) -> None:
        """Detach the ENI (as described) from its instance, if it has one."""
        attachment = eni.get("Attachment") or {}
        if not attachment.get("AttachmentId"):
            return
        self.ec2.detach_network_interface(attachment["AttachmentId"], force=force)
        self._wait(eni["NetworkInterfaceId"], lambda e: e.get("Status") == "available",
                   f"{eni['NetworkInterfaceId']} to detach", timeout)

    def _wait(self, eni_id: str, ready: Callable[[dict], bool], what: str, timeout: float) -> dict:
        def check():
            e = self.ec2.network_interface(eni_id)
            return e if ready(e) else None
        return wait_for(check, what=what, timeout=timeout, backoff=Backoff(initial=0.05, factor=1.5, max_interval=1.0))


def check_failover(env: Environment, tier: str) -> Tier:
    """The tier, when the file alone says it can fail over: it has persistent interfaces to move."""
    spec = env.select(tier)[tier]
    if not any(i.persistent for i in spec.interfaces):
        raise ConfigError(f"{env.path}: tiers.{tier} has no persistent interfaces to fail over")
    return spec


def failover(ec2, env: Environment, tier: str, to: str | None, report: Reporter,
             probe: Probe = running_probe) -> FailoverReport:
    """Move a tier's persistent ENIs (and their Elastic IPs) to a hot standby (or to `to`).

    The life cycle an operator expects: the instance taking over fills slot 0 (active); the one
    that held the interfaces becomes the new hot standby in the slot the other left, when `probe`
    finds it healthy (so failing over again, without --to, fails back), or else is tagged failed
    and kept for inspection, its standby slot left empty for the next `launch` to fill. Names follow
    the slots, and the tier never grows past count + standby."""
    spec = check_failover(env, tier)
    moves = Interfaces(ec2)
    resolved = [r for r in Resolver(ec2, env).resolve_interfaces(tier, spec) if r.spec.persistent]
    enis = [ec2.network_interface(r.eni_id) for r in resolved]
    current = {e.get("Attachment", {}).get("InstanceId") for e in enis} - {None}
    source = current.pop() if len(current) == 1 else None
    target = to or standby(ec2, env.name, tier, exclude=source)
    if target == source:
        raise ConfigError(f"failover: {target} already holds tier {tier}'s interfaces")
    started = time.monotonic()
    result = FailoverReport(env.name, tier, source, target)
    source_state = (ec2.describe_instance(source) or {}).get("State", {}).get("Name") if source else None
    force = source_state != "running"  # a failed instance may never answer a polite detach
    with report.stage(f"detach from {source or 'nothing'}{' (forced)' if force else ''}"):
        for eni in enis:
            try:
                moves.detach(eni, force=force, timeout=30)
            except CloudError:
                if force:
                    raise
                moves.detach(eni, force=True)
    with report.stage(f"attach to {target}"):
        macs = {e["NetworkInterfaceId"]: e["MacAddress"] for e in enis}
        for r in resolved:
            moves.attach(r.eni_id, target, r.spec.device_index)
            if r.spec.elastic_ip:
                moves.associate_eip(r, r.eni_id)
            result.interfaces.append({"eni": r.eni_id, "device_index": r.spec.device_index,
                                      "ips": r.spec.ips(), "mac": macs[r.eni_id]})
    result.seconds = round(time.monotonic() - started, 3)  # the move; the bookkeeping below serves no traffic
    vacated = tags_of(ec2.describe_instance(target) or {}).get(SLOT, "")
    ec2.tag([target], slot_tags(env.name, tier, "0"))
    if source:
        record = ec2.describe_instance(source) or {"State": {"Name": "terminated"}}
        result.from_problem = probe(record)
        if result.from_problem is None:
            result.from_slot = vacated if vacated.startswith("standby") else _free_standby_slot(ec2, env.name, tier)
        else:
            result.from_slot = f"failed-{int(time.time())}"
        ec2.tag([source], slot_tags(env.name, tier, result.from_slot))
    return result


def _free_standby_slot(ec2, env: str, tier: str) -> str:
    taken = {tags_of(i).get(SLOT) for i in ec2.tier_instances(env, tier)}
    return next(f"standby-{n}" for n in range(len(taken) + 1) if f"standby-{n}" not in taken)


def standby(ec2, env: str, tier: str, exclude: str | None) -> str:
    """The tier's first running standby instance other than `exclude`."""
    instances = ec2.tier_instances(env, tier, tag_filter(ROLE, ROLE_STANDBY), states=("running",))
    ids = sorted(i["InstanceId"] for i in instances if i["InstanceId"] != exclude)
    if not ids:
        raise ConfigError(f"failover: tier {tier} of {env} has no running standby instance "
                          "(set standby: 1 and launch, or pass --to INSTANCE)")
    return ids[0]
