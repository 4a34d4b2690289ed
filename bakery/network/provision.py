"""`network.up`: create what an environment's network declares and does not exist yet.

In dependency order: the VPC, its internet gateway, subnets, security groups (then their rules,
which may name each other), network ACLs with their entries and subnets, Elastic IPs, NAT
gateways (waited for until available), route tables with their routes and subnets, and the
tiers' persistent ENIs. What exists is found by its tags and left as it is, so running it again creates nothing;
a dry run only says what it would create. Bad interfaces are refused before anything is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bakery.cloud.tags import TIER, network_tags
from bakery.config.environment import Interface
from bakery.errors import ConfigError
from bakery.network.resolve import Resolver


@dataclass
class Action:
    kind: str
    name: str
    status: str  # exists | create | created
    id: str | None = None

    def line(self) -> str:
        return f"{self.status:8} {self.kind:15} {self.name}{f'  {self.id}' if self.id else ''}"


class Provisioner:
    """One `network.up` of one environment: the actions it reported, in order."""

    def __init__(self, names: Resolver, dry_run: bool):
        self.names, self.ec2, self.env = names, names.ec2, names.env
        self.dry_run = dry_run
        self.actions: list[Action] = []

    def tags(self, kind: str, name: str, **extra: str) -> dict[str, str]:
        return network_tags(self.env.name, kind, name, **extra)

    def run(self) -> list[Action]:
        """Create what is missing, in dependency order; report what exists and what was made."""
        net = self.names.spec
        if net is None:
            raise ConfigError(f"{self.env.path}: environment {self.env.name!r} declares no network")
        for tier, spec in self.env.tiers.items():  # refuse bad interfaces before creating anything
            self.names.resolve_interfaces(tier, spec, online=False)

        vpc = self.ensure("vpc", "vpc", self.names.vpc_id(),
                          lambda: self.ec2.create_vpc(net.vpc.cidr, self.tags("vpc", "vpc")))
        igw = None
        if net.internet_gateway:  # a VPC given by id may have one attached already: that one is used
            igw = self.ensure("internet-gateway", "igw",
                              self.names.find_id("igw", "igw") or (vpc and self.ec2.internet_gateway_of(vpc)),
                              lambda: self.ec2.create_internet_gateway(vpc, self.tags("igw", "igw")))
        subnets: dict[str, str | None] = {}
        for name, decl in net.subnets.items():
            subnets[name] = self.ensure("subnet", name, decl.id or self.names.find_id("subnet", name),
                                        lambda: self.ec2.create_subnet(vpc, decl.cidr, self.tags("subnet", name),
                                                                       az=decl.az, public=decl.public))
        groups: dict[str, str | None] = {}
        for name, decl in net.security_groups.items():
            groups[name] = self.ensure("security-group", name, self.names.find_id("sg", name),
                                       lambda: self.ec2.create_security_group(f"{self.env.name}-{name}", vpc,
                                                                              self.tags("sg", name), decl.description))
        if not self.dry_run:  # after every group exists: a rule may name any of them
            for name, decl in net.security_groups.items():
                self.rules(groups[name], decl, groups)
        for name, decl in net.network_acls.items():
            self.ensure("network-acl", name, self.names.find_id("acl", name),
                        lambda: self.create_acl(vpc, name, decl, subnets))
        eips: dict[str, str | None] = {}
        for name in net.elastic_ips:
            eips[name] = self.ensure("elastic-ip", name, self.names.find_id("eip", name),
                                     lambda: self.ec2.allocate_address(self.tags("eip", name)))
        nats: dict[str, str | None] = {}
        for name, decl in net.nat_gateways.items():
            nats[name] = self.ensure("nat-gateway", name, self.names.find_id("nat", name),
                                     lambda: self.ec2.create_nat_gateway(subnets[decl.subnet], eips[decl.elastic_ip],
                                                                         self.tags("nat", name)))
        for name, decl in net.route_tables.items():
            self.ensure("route-table", name, self.names.find_id("rtb", name),
                        lambda: self.create_route_table(vpc, name, decl, subnets, igw, nats))
        for tier, spec in self.env.tiers.items():
            for iface in spec.interfaces:
                if iface.persistent:
                    label = f"{tier}/{iface.device_index}"
                    self.ensure("interface", label, self.names.find_id("eni", label),
                                lambda: self.create_eni(tier, iface, subnets, groups))
        return self.actions

    def ensure(self, kind: str, name: str, found: str | None, create: Callable[[], str]) -> str | None:
        """The resource's id: `found`, or made now by `create` (None in a dry run); one action reported."""
        if found or self.dry_run:
            self.actions.append(Action(kind, name, "exists" if found else "create", found))
            return found
        made = create()
        self.actions.append(Action(kind, name, "created", made))
        return made

    def rules(self, group_id: str, decl, groups: dict[str, str | None]) -> None:
        for egress, rules in ((False, decl.ingress), (True, decl.egress or [])):
            for rule in rules:
                self.ec2.authorize(group_id, egress=egress, protocol=rule.protocol, ports=rule.port_range(),
                                   cidr=rule.cidr, source_group=groups[rule.group] if rule.group else None,
                                   description=rule.description)
        if decl.egress is not None:  # declared egress is all the egress: EC2's allow-all default goes
            self.ec2.revoke_default_egress(group_id)

    def create_acl(self, vpc: str, name: str, decl, subnets: dict[str, str | None]) -> str:
        acl = self.ec2.create_network_acl(vpc, self.tags("acl", name))
        for egress, entries in ((False, decl.ingress), (True, decl.egress)):
            for e in entries:
                self.ec2.add_network_acl_entry(acl, rule=e.rule, action=e.action, egress=egress,
                                               protocol=e.protocol, cidr=e.cidr, ports=e.port_range())
        for subnet in decl.subnets:
            self.ec2.associate_network_acl(acl, subnets[subnet])
        return acl

    def create_route_table(self, vpc: str, name: str, decl, subnets: dict[str, str | None], igw: str | None,
                           nats: dict[str, str | None]) -> str:
        table = self.ec2.create_route_table(vpc, self.tags("rtb", name))
        for route in decl.routes:
            self.ec2.create_route(table, route.cidr, internet_gateway=igw if route.internet_gateway else None,
                                  nat_gateway=nats[route.nat_gateway] if route.nat_gateway else None)
        for subnet in decl.subnets:
            self.ec2.associate_route_table(table, subnets[subnet])
        return table

    def create_eni(self, tier: str, iface: Interface, subnets: dict[str, str | None],
                   groups: dict[str, str | None]) -> str:
        subnet = subnets.get(iface.subnet) or self.names.subnet(iface.subnet, f"tiers.{tier}").id
        group_ids = [groups.get(g) or self.names.group(g, None, f"tiers.{tier}") for g in iface.security_groups]
        return self.ec2.create_network_interface(
            subnet, group_ids, iface.description or f"bakery {self.env.name} {tier}",
            self.tags("eni", f"{tier}/{iface.device_index}", **{TIER: tier}), private_ip=iface.private_ip,
            secondary_ips=iface.secondary_ips, secondary_ip_count=iface.secondary_ip_count,
            source_dest_check=iface.source_dest_check)
