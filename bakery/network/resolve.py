"""Names in an environment's network -> the resources they stand for, and the checks that
refuse a tier's interfaces before anything is created or launched.

A declared name (subnets, security_groups, elastic_ips, persistent interfaces) is found by its
tags, so no state file is needed; a subnet or group may also be given by id or by Name.
Checks that AWS would only make late (or never), with the cloud's facts: interfaces in another
AZ than the instance, more ENIs or addresses than the instance type allows, addresses outside
their subnet or already held by another ENI, security groups from another VPC. What the
environment file alone shows (its declared subnets and Elastic IPs) is refused as it is loaded
(bakery/config/environment.py), before any cloud is opened.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bakery.cloud.tags import tag_filter
from bakery.cloud.vpc import field_filter
from bakery.config.ec2data import interface_limits
from bakery.config.environment import Environment, Interface, NetworkSpec, Tier
from bakery.config.yamlfile import format_path
from bakery.errors import ConfigError


@dataclass
class SubnetInfo:
    id: str | None
    cidr: str | None
    az: str | None
    vpc: str | None


@dataclass
class ResolvedInterface:
    spec: Interface
    subnet: SubnetInfo
    groups: list[str]
    eni_id: str | None = None  # persistent ENIs only
    eip_allocation: str | None = None


def _subnet_info(subnet: dict) -> SubnetInfo:
    return SubnetInfo(subnet["SubnetId"], subnet["CidrBlock"], subnet["AvailabilityZone"], subnet["VpcId"])


class Resolver:
    """One environment's network names, looked up in the cloud (`ec2`, the EC2 facade)."""

    def __init__(self, ec2, env: Environment):
        self.ec2, self.env = ec2, env
        self.spec: NetworkSpec | None = env.network

    # ---- lookups ------------------------------------------------------------------------

    def find(self, kind: str, name: str) -> dict | None:
        """What `network.up` made for KIND/NAME (vpc, subnet, sg, acl, eip, eni), if it exists."""
        return self.ec2.find_tagged(kind, self.env.name, name)

    def find_id(self, kind: str, name: str) -> str | None:
        return self.ec2.find_tagged_id(kind, self.env.name, name)

    def vpc_id(self) -> str | None:
        if self.spec is None:
            return None
        if self.spec.vpc.id:
            return self.spec.vpc.id
        return self.find_id("vpc", "vpc")

    def subnet(self, ref: str, where: str) -> SubnetInfo:
        """A declared subnet name (created or not yet), a subnet id, or a Name tag."""
        if self.spec and ref in self.spec.subnets:
            decl = self.spec.subnets[ref]
            if decl.id:
                return _subnet_info(self.ec2.subnets(ids=[decl.id])[0])
            found = self.find("subnet", ref)
            if found:
                return _subnet_info(found)
            return SubnetInfo(None, decl.cidr, decl.az, self.vpc_id())
        by = field_filter("subnet-id", ref) if ref.startswith("subnet-") else tag_filter("Name", ref)
        found = self.ec2.subnets(by)
        if len(found) != 1:
            raise ConfigError(f"{where}: subnet {ref!r} matches {len(found)} subnets (expected one)")
        return _subnet_info(found[0])

    def group(self, ref: str, vpc: str | None, where: str) -> str | None:
        """A declared group name (None before network.up), a group id, or a group name in the VPC."""
        if self.spec and ref in self.spec.security_groups:
            found = self.find("sg", ref)
            if found and vpc and found["VpcId"] != vpc:
                raise ConfigError(f"{where}: security group {ref!r} is in {found['VpcId']}, not the subnet's {vpc}")
            return found["GroupId"] if found else None
        by = field_filter("group-id" if ref.startswith("sg-") else "group-name", ref)
        found = self.ec2.security_groups(by, *([field_filter("vpc-id", vpc)] if vpc else []))
        if len(found) != 1:
            raise ConfigError(f"{where}: {ref!r} is not a security group of {vpc or 'this region'}"
                              f"{' (security groups must be in the same VPC as the subnet)' if vpc else ''}")
        return found[0]["GroupId"]

    def _declared(self, ref: str) -> SubnetInfo:
        """A subnet as the environment declares it (no cloud call)."""
        if self.spec and ref in self.spec.subnets:
            decl = self.spec.subnets[ref]
            return SubnetInfo(decl.id, decl.cidr, decl.az, None)
        return SubnetInfo(None, None, None, None)

    # ---- checks -------------------------------------------------------------------------

    def resolve_interfaces(self, tier: str, spec: Tier, *, online: bool = True,
                           new_instances: bool = True) -> list[ResolvedInterface]:
        """Resolve a tier's interfaces and refuse what EC2 would reject late or silently.

        Offline (`online=False`, before network.up creates anything) only what the environment
        itself says is checked; online, names are looked up and the cloud's facts checked too.
        `new_instances`: this run launches instances, so their fixed addresses must be free."""
        where = f"{self.env.path}: tiers.{tier}.interfaces"
        out = []
        for n, iface in enumerate(sorted(spec.interfaces, key=lambda i: i.device_index)):
            w = f"{where}[{n}] (device {iface.device_index})"
            subnet = self.subnet(iface.subnet, f"{w}.subnet") if online else self._declared(iface.subnet)
            groups = [self.group(g, subnet.vpc, f"{w}.security_groups") for g in iface.security_groups] if online else []
            self._check_addresses(iface, subnet, w)
            out.append(ResolvedInterface(iface, subnet, [g for g in groups if g]))
        self._check_one_place(out, where)
        if online:
            self._check_limits(spec, where)
            for r in out:
                if new_instances and r.subnet.id and not r.spec.persistent:
                    self._check_free(r, where)
            for r in out:
                self._find_persistent(tier, r, where)
        return out

    def _check_addresses(self, iface: Interface, subnet: SubnetInfo, w: str) -> None:
        for ip in iface.ips():
            if subnet.cidr and ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network(subnet.cidr):
                raise ConfigError(f"{w}: {ip} is outside subnet {iface.subnet} ({subnet.cidr})")

    @staticmethod
    def _check_one_place(out: list[ResolvedInterface], where: str) -> None:
        """Every ENI of an instance is in the instance's AZ, and in one VPC."""
        azs = {r.subnet.az for r in out if r.subnet.az}
        if len(azs) > 1:
            raise ConfigError(f"{where}: interfaces span availability zones {', '.join(sorted(azs))}; "
                              "every ENI must be in the instance's AZ")
        vpcs = {r.subnet.vpc for r in out if r.subnet.vpc}
        if len(vpcs) > 1:
            raise ConfigError(f"{where}: interfaces are in different VPCs ({', '.join(sorted(vpcs))})")

    def _check_limits(self, spec: Tier, where: str) -> None:
        """EC2's per-type interface limits for a type the vendored data lacks (a newer one):
        the environment applied the rest as it loaded."""
        if interface_limits(spec.instance_type) is not None:
            return
        problem = spec.interface_limit_problem(self.ec2.instance_type_network_limits(spec.instance_type))
        if problem:
            raise ConfigError(f"{where}{format_path(problem[0]).removeprefix('interfaces')}: {problem[1]}")

    def _check_free(self, r: ResolvedInterface, where: str) -> None:
        """A fixed address already held by another ENI would fail RunInstances late (InvalidIPAddress.InUse)."""
        for ip in r.spec.ips():
            used = self.ec2.network_interfaces(field_filter("subnet-id", r.subnet.id),
                                               field_filter("addresses.private-ip-address", ip))
            if used:
                holder = (used[0].get("Attachment") or {}).get("InstanceId") or "no instance"
                raise ConfigError(f"{where}: {ip} is already in use by {used[0]['NetworkInterfaceId']} ({holder}); "
                                  "a fixed address can belong to one interface only")

    def _find_persistent(self, tier: str, r: ResolvedInterface, where: str) -> None:
        """The persistent ENI and the Elastic IP an interface names must exist (network.up made them)."""
        if r.spec.persistent:
            r.eni_id = self.find_id("eni", f"{tier}/{r.spec.device_index}")
            if r.eni_id is None:
                raise ConfigError(f"{where}: persistent interface {r.spec.device_index} of tier {tier} does "
                                  f"not exist yet: run invoke network.up --env {self.env.name}")
        if r.spec.elastic_ip:
            r.eip_allocation = self.find_id("eip", r.spec.elastic_ip.name)
            if r.eip_allocation is None:
                raise ConfigError(f"{where}: Elastic IP {r.spec.elastic_ip.name!r} does not exist yet: "
                                  f"run invoke network.up --env {self.env.name}")
