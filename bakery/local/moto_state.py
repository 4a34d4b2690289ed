"""The local endpoint's window onto moto's state, in the endpoint's own process.

Everything the control plane reads or sets in moto's EC2 backends goes through here, so the
coupling to moto's internal objects (which are not an API) is in one module, tested by
tests/local/test_control_plane.py against the installed moto. Reads copy moto's containers
first: request threads may change them at the same time.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

# EC2's instance state codes (DescribeInstances InstanceState.Code)
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}


def _ec2_backends():
    from moto.ec2.models import ec2_backends

    return ec2_backends


def backends() -> list:
    """Every EC2 backend (account, region) moto has made so far."""
    out = []
    for regions in list(_ec2_backends().values()):
        out.extend(list(regions.values()))
    return out


def instances() -> list:
    return [i for b in backends() for r in list(b.reservations.values()) for i in list(r.instances)]


def find_instance(instance_id: str):
    return next((i for i in instances() if i.id == instance_id), None)


def instance_at(vpc_id: str, ip: str):
    """The live instance that has `ip` as a private address of an ENI in the VPC, if any."""
    for instance in instances():
        if state(instance) not in ("pending", "running"):
            continue
        for eni in list(instance.nics.values()):
            if eni.subnet.vpc_id == vpc_id and any(
                    a.get("PrivateIpAddress") == ip for a in list(eni.private_ip_addresses)):
                return instance
    return None


def state(instance) -> str:
    return instance._state.name


def scaled(instance) -> bool:
    """Whether an Auto Scaling group launched (or took in) the instance: moto marks it so."""
    return getattr(instance, "autoscaling_group", None) is not None


def set_state(instance, name: str, reason: tuple[str, str] | None = None) -> None:
    """Move the instance to `name`; `reason` is EC2's (code, message) state reason."""
    from moto.ec2.models.instances import StateReason

    instance._state.name = name
    instance._state.code = STATE_CODES[name]
    if reason is not None:
        instance.state_reason = StateReason(reason[1], reason[0])
        instance._reason = reason[1]


def user_data(instance) -> bytes | None:
    """The instance's user data as the instance sees it (decoded from the API's base64)."""
    value = instance.user_data
    if not value:
        return None
    if isinstance(value, list):  # older moto kept a list of one string
        value = value[0]
    encoded = value._encoded_string if hasattr(value, "_encoded_string") else value
    if isinstance(encoded, bytes):
        encoded = encoded.decode("ascii")
    return base64.b64decode(encoded) if encoded else None


def public_keys(instance) -> list[str]:
    """The public key of the instance's key pair (what EC2 hands cloud-init), if it has one."""
    if not instance.key_name:
        return []
    pair = instance.ec2_backend.key_pairs.get(instance.key_name)
    if pair is None:
        return []
    material = pair.material_public
    return [material.decode() if isinstance(material, bytes) else str(material)]


@dataclass(frozen=True)
class Wiring:
    """One ENI as the VPC fabric must wire it into an instance's machine."""

    eni_id: str
    instance_id: str
    device_index: int
    vpc_id: str
    subnet_id: str
    cidr: str
    mac: str
    ips: tuple[str, ...]  # primary first
    source_dest_check: bool


def wirings(instance) -> list[Wiring]:
    """The ENIs attached to the instance, as they should be on its machine."""
    out = []
    for index, eni in sorted(list(instance.nics.items())):
        ips = sorted((a["PrivateIpAddress"] for a in list(eni.private_ip_addresses) if a.get("PrivateIpAddress")),
                     key=lambda ip: ip != eni.private_ip_address)
        out.append(Wiring(eni.id, instance.id, int(index), eni.subnet.vpc_id, eni.subnet.id, eni.subnet.cidr_block,
                          eni.mac_address, tuple(ips), bool(eni.source_dest_check)))
    return out


def public_addresses() -> set[str]:
    """Every public address in use: Elastic IPs and ENIs' public addresses, in every region."""
    out = set()
    for backend in backends():
        out.update(a.public_ip for a in list(backend.addresses) if a.public_ip)
        out.update(e.public_ip for e in list(backend.enis.values()) if getattr(e, "public_ip", None))
    return out


def images() -> list:
    return [a for b in backends() for a in list(b.amis.values())]


def find_image(ami_id: str):
    return next((a for a in images() if a.id == ami_id), None)


def image_tags(image) -> dict[str, str]:
    return {t["key"]: t["value"] for t in image.get_tags()}


def sync_images(records: list[dict], ours: set[str]) -> None:
    """Make every region's images match the layer store, the durable record of images: add what it
    holds (MOTO_AMIS_PATH form) and drop images of the owners in `ours` that it no longer holds."""
    from moto.ec2.models.amis import Ami

    wanted = {r["ami_id"]: r for r in records}
    for backend in backends():
        for ami_id, image in list(backend.amis.items()):
            if image.owner_id in ours and ami_id not in wanted:
                backend.amis.pop(ami_id, None)
        for ami_id, record in wanted.items():
            if ami_id not in backend.amis:
                backend.amis[ami_id] = Ami(backend, **record)


def resume_address_allocation() -> None:
    """After a restore: moto hands a subnet's addresses out from a generator that lives in a cache
    beside the subnet (functools.cache on a method), which no snapshot carries, so a restored subnet
    would start again at x.x.x.1, an address EC2 reserves. Move each subnet's generator past the
    reserved addresses and every address its ENIs hold or moto set aside for reuse."""
    import ipaddress

    for backend in backends():
        held: dict[str, set] = {}
        for eni in list(backend.enis.values()):
            for a in list(eni.private_ip_addresses):
                if a.get("PrivateIpAddress"):
                    held.setdefault(eni.subnet.id, set()).add(ipaddress.ip_address(a["PrivateIpAddress"]))
        for subnet in [s for zone in list(backend.subnets.values()) for s in list(zone.values())]:
            if subnet.cidr.version != 4:
                continue
            used = held.get(subnet.id, set()) | {ipaddress.ip_address(ip) for ip in
                                                 [*subnet._subnet_ips, *subnet._unused_ips]}
            last = max(used, default=subnet.cidr.network_address + 3)  # .1-.3: the router, DNS, reserved
            hosts = subnet._base_avail_ip_iterator()
            for host in hosts:
                if host >= max(last, subnet.cidr.network_address + 3):
                    break


def group_ids(eni_id: str, instance) -> list[str]:
    """The security groups of one of the instance's ENIs."""
    for eni in list(instance.nics.values()):
        if eni.id == eni_id:
            return sorted(g.id for g in eni.group_set)
    return []


def instance_profile_role(instance) -> dict | None:
    """The role of the instance's profile ({name, profile_arn, profile_id}), or None without one."""
    ref = instance.iam_instance_profile or {}
    wanted = ref.get("Name") or (ref.get("Arn") or "").rpartition("/")[2]
    if not wanted:
        return None
    from moto.backends import get_backend

    iam = get_backend("iam")[instance.ec2_backend.account_id]["global"]
    profile = next((p for p in list(iam.instance_profiles.values()) if p.name == wanted), None)
    if profile is None or not profile.roles:
        return None
    return {"name": profile.roles[0].name, "profile_arn": profile.arn, "profile_id": profile.id}
