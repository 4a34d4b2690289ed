"""An environment's network: VPC, subnets, security groups, network ACLs, Elastic IPs and
the persistent ENIs that carry a tier's addresses from instance to instance.

Everything is found again by its tags (`bakery:environment`, `bakery:network-name`), so
`network.up` is idempotent and `launch`/`failover` resolve names without a state file.
Checks that AWS would only make late (or never) run before anything is created:
interfaces in another AZ than the instance, more ENIs or addresses than the instance
type allows, addresses outside their subnet, an Elastic IP bound to an address the ENI
does not have, security groups from another VPC.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from bakery.cloud.waits import Backoff, wait_for
from bakery.config.environment import Environment, Interface, NetworkSpec, Tier
from bakery.errors import CloudError, ConfigError
from bakery.progress import Reporter

PROTOCOLS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "all": "-1"}
ACL_PROTOCOLS = {"tcp": "6", "udp": "17", "icmp": "1", "all": "-1"}


@dataclass
class Action:
    kind: str
    name: str
    status: str  # exists | create | created
    id: str | None = None

    def line(self) -> str:
        return f"{self.status:8} {self.kind:15} {self.name}{f'  {self.id}' if self.id else ''}"


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


class Network:
    """Name -> resource lookups and the idempotent creation of one environment's network."""

    def __init__(self, ec2, env: Environment, report: Reporter | None = None):
        self.ec2, self.env, self.c = ec2, env, ec2.client
        self.spec: NetworkSpec | None = env.network
        self.report = report or Reporter(quiet=True)

    # ---- lookups ------------------------------------------------------------------------

    def tags(self, kind: str, name: str, **extra: str) -> dict[str, str]:
        return {"Name": f"{self.env.name}-{name}", "bakery:environment": self.env.name,
                "bakery:network-name": f"{kind}/{name}", **extra}

    def _filters(self, kind: str, name: str) -> list[dict]:
        return [{"Name": "tag:bakery:environment", "Values": [self.env.name]},
                {"Name": "tag:bakery:network-name", "Values": [f"{kind}/{name}"]}]

    def find(self, kind: str, name: str) -> dict | None:
        api = {"vpc": ("describe_vpcs", "Vpcs"), "subnet": ("describe_subnets", "Subnets"),
               "sg": ("describe_security_groups", "SecurityGroups"), "acl": ("describe_network_acls", "NetworkAcls"),
               "eip": ("describe_addresses", "Addresses"),
               "eni": ("describe_network_interfaces", "NetworkInterfaces")}[kind]
        found = self.ec2.call(api[0], getattr(self.c, api[0]), Filters=self._filters(kind, name))[api[1]]
        return found[0] if found else None

    def vpc_id(self) -> str | None:
        if self.spec is None:
            return None
        if self.spec.vpc.id:
            return self.spec.vpc.id
        vpc = self.find("vpc", "vpc")
        return vpc["VpcId"] if vpc else None

    def subnet(self, ref: str, where: str) -> SubnetInfo:
        """A declared subnet name (created or not yet), a subnet id, or a Name tag."""
        if self.spec and ref in self.spec.subnets:
            decl = self.spec.subnets[ref]
            found = self.find("subnet", ref) if decl.cidr else None
            if decl.id or found:
                sid = decl.id or found["SubnetId"]
                got = self.ec2.call("describe-subnets", self.c.describe_subnets, SubnetIds=[sid])["Subnets"][0]
                return SubnetInfo(sid, got["CidrBlock"], got["AvailabilityZone"], got["VpcId"])
            return SubnetInfo(None, decl.cidr, decl.az, self.vpc_id())
        filters = ([{"Name": "subnet-id", "Values": [ref]}] if ref.startswith("subnet-")
                   else [{"Name": "tag:Name", "Values": [ref]}])
        found = self.ec2.call("describe-subnets", self.c.describe_subnets, Filters=filters)["Subnets"]
        if len(found) != 1:
            raise ConfigError(f"{where}: subnet {ref!r} matches {len(found)} subnets (expected one)")
        got = found[0]
        return SubnetInfo(got["SubnetId"], got["CidrBlock"], got["AvailabilityZone"], got["VpcId"])

    def group(self, ref: str, vpc: str | None, where: str) -> str | None:
        """A declared group name (None before network.up), a group id, or a group name in the VPC."""
        if self.spec and ref in self.spec.security_groups:
            found = self.find("sg", ref)
            if found and vpc and found["VpcId"] != vpc:
                raise ConfigError(f"{where}: security group {ref!r} is in {found['VpcId']}, not the subnet's {vpc}")
            return found["GroupId"] if found else None
        key = "group-id" if ref.startswith("sg-") else "group-name"
        filters = [{"Name": key, "Values": [ref]}] + ([{"Name": "vpc-id", "Values": [vpc]}] if vpc else [])
        found = self.ec2.call("describe-security-groups", self.c.describe_security_groups, Filters=filters)
        if len(found["SecurityGroups"]) != 1:
            raise ConfigError(f"{where}: {ref!r} is not a security group of {vpc or 'this region'}"
                              f"{' (security groups must be in the same VPC as the subnet)' if vpc else ''}")
        return found["SecurityGroups"][0]["GroupId"]

    # ---- checks -------------------------------------------------------------------------

    def resolve_interfaces(self, tier: str, spec: Tier, *, online: bool = True,
                           new_instances: bool = True) -> list[ResolvedInterface]:
        """Resolve a tier's interfaces and refuse what EC2 would reject late or silently."""
        where = f"{self.env.path}: tiers.{tier}.interfaces"
        out = []
        for n, iface in enumerate(sorted(spec.interfaces, key=lambda i: i.device_index)):
            w = f"{where}[{n}] (device {iface.device_index})"
            subnet = self.subnet(iface.subnet, f"{w}.subnet") if online else self._declared(iface.subnet, w)
            groups = [self.group(g, subnet.vpc, f"{w}.security_groups") for g in iface.security_groups] if online else []
            for ip in iface.ips():
                if subnet.cidr and ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network(subnet.cidr):
                    raise ConfigError(f"{w}: {ip} is outside subnet {iface.subnet} ({subnet.cidr})")
            if iface.elastic_ip:
                if self.spec is None or iface.elastic_ip.name not in self.spec.elastic_ips:
                    raise ConfigError(f"{w}.elastic_ip: {iface.elastic_ip.name!r} is not in network.elastic_ips")
                bound = iface.elastic_ip.private_ip or iface.private_ip
                if bound is None or bound not in iface.ips():
                    raise ConfigError(f"{w}.elastic_ip: bound to {bound or 'an unknown primary address'}, which "
                                      f"interface {iface.device_index} does not have ({', '.join(iface.ips()) or 'no static IPs'})")
            out.append(ResolvedInterface(iface, subnet, [g for g in groups if g]))
        azs = {r.subnet.az for r in out if r.subnet.az}
        if len(azs) > 1:
            raise ConfigError(f"{where}: interfaces span availability zones {', '.join(sorted(azs))}; "
                              "every ENI must be in the instance's AZ")
        vpcs = {r.subnet.vpc for r in out if r.subnet.vpc}
        if len(vpcs) > 1:
            raise ConfigError(f"{where}: interfaces are in different VPCs ({', '.join(sorted(vpcs))})")
        if online:
            self._check_limits(tier, spec, where)
            for r in out:
                if new_instances and r.subnet.id and not r.spec.persistent:
                    self._check_free(r, where)
            for r in out:
                if r.spec.persistent:
                    eni = self.find("eni", f"{tier}/{r.spec.device_index}")
                    if eni is None:
                        raise ConfigError(f"{where}: persistent interface {r.spec.device_index} of tier {tier} does "
                                          f"not exist yet: run invoke network.up --env {self.env.name}")
                    r.eni_id = eni["NetworkInterfaceId"]
                if r.spec.elastic_ip:
                    eip = self.find("eip", r.spec.elastic_ip.name)
                    if eip is None:
                        raise ConfigError(f"{where}: Elastic IP {r.spec.elastic_ip.name!r} does not exist yet: "
                                          f"run invoke network.up --env {self.env.name}")
                    r.eip_allocation = eip["AllocationId"]
        return out

    def _check_free(self, r: ResolvedInterface, where: str) -> None:
        """A fixed address already held by another ENI would fail RunInstances late (InvalidIPAddress.InUse)."""
        for ip in r.spec.ips():
            used = self.ec2.call("describe-network-interfaces", self.c.describe_network_interfaces, Filters=[
                {"Name": "subnet-id", "Values": [r.subnet.id]},
                {"Name": "addresses.private-ip-address", "Values": [ip]}])["NetworkInterfaces"]
            if used:
                holder = (used[0].get("Attachment") or {}).get("InstanceId") or "no instance"
                raise ConfigError(f"{where}: {ip} is already in use by {used[0]['NetworkInterfaceId']} ({holder}); "
                                  "a fixed address can belong to one interface only")

    def _declared(self, ref: str, where: str) -> SubnetInfo:
        if self.spec and ref in self.spec.subnets:
            decl = self.spec.subnets[ref]
            return SubnetInfo(decl.id, decl.cidr, decl.az, None)
        return SubnetInfo(None, None, None, None)

    def _check_limits(self, tier: str, spec: Tier, where: str) -> None:
        resp = self.ec2.call("describe-instance-types", self.c.describe_instance_types,
                             InstanceTypes=[spec.instance_type])
        info = resp["InstanceTypes"][0]["NetworkInfo"]
        max_enis, max_ips = info["MaximumNetworkInterfaces"], info["Ipv4AddressesPerInterface"]
        if len(spec.interfaces) > max_enis:
            raise ConfigError(f"{where}: {len(spec.interfaces)} interfaces, but {spec.instance_type} allows {max_enis}")
        for iface in spec.interfaces:
            wanted = 1 + len(iface.secondary_ips) + iface.secondary_ip_count
            if wanted > max_ips:
                raise ConfigError(f"{where}: interface {iface.device_index} wants {wanted} private IPs, but "
                                  f"{spec.instance_type} allows {max_ips} per interface")

    # ---- network.up ---------------------------------------------------------------------

    def up(self, dry_run: bool) -> list[Action]:
        """Create what is missing, in dependency order; report what exists and what was made."""
        if self.spec is None:
            raise ConfigError(f"{self.env.path}: environment {self.env.name!r} declares no network")
        actions: list[Action] = []
        net = self.spec
        for tier, spec in self.env.tiers.items():  # refuse bad interfaces before creating anything
            self.resolve_interfaces(tier, spec, online=False)

        vpc = self.vpc_id()
        actions.append(Action("vpc", "vpc", "exists" if vpc else "create", vpc))
        if not vpc and not dry_run:
            vpc = self.ec2.call("create-vpc", self.c.create_vpc, CidrBlock=net.vpc.cidr, TagSpecifications=[
                _spec("vpc", self.tags("vpc", "vpc"))])["Vpc"]["VpcId"]
            actions[-1] = Action("vpc", "vpc", "created", vpc)
        subnet_ids: dict[str, str | None] = {}
        for name, decl in net.subnets.items():
            found = decl.id or (self.find("subnet", name) or {}).get("SubnetId")
            actions.append(Action("subnet", name, "exists" if found else "create", found))
            if not found and not dry_run:
                kw = {"AvailabilityZone": decl.az} if decl.az else {}
                found = self.ec2.call("create-subnet", self.c.create_subnet, VpcId=vpc, CidrBlock=decl.cidr,
                                      TagSpecifications=[_spec("subnet", self.tags("subnet", name))], **kw)["Subnet"]["SubnetId"]
                if decl.public:
                    self.ec2.call("modify-subnet-attribute", self.c.modify_subnet_attribute, SubnetId=found,
                                  MapPublicIpOnLaunch={"Value": True})
                actions[-1] = Action("subnet", name, "created", found)
            subnet_ids[name] = found
        groups: dict[str, str | None] = {}
        for name, decl in net.security_groups.items():
            found = (self.find("sg", name) or {}).get("GroupId")
            actions.append(Action("security-group", name, "exists" if found else "create", found))
            if not found and not dry_run:
                found = self.ec2.call("create-security-group", self.c.create_security_group,
                                      GroupName=f"{self.env.name}-{name}", Description=decl.description, VpcId=vpc,
                                      TagSpecifications=[_spec("security-group", self.tags("sg", name))])["GroupId"]
                actions[-1] = Action("security-group", name, "created", found)
            groups[name] = found
        if not dry_run:
            for name, decl in net.security_groups.items():
                self._rules(groups[name], decl, groups)
        for name, decl in net.network_acls.items():
            found = (self.find("acl", name) or {}).get("NetworkAclId")
            actions.append(Action("network-acl", name, "exists" if found else "create", found))
            if not found and not dry_run:
                found = self.ec2.call("create-network-acl", self.c.create_network_acl, VpcId=vpc, TagSpecifications=[
                    _spec("network-acl", self.tags("acl", name))])["NetworkAcl"]["NetworkAclId"]
                for egress, entries in ((False, decl.ingress), (True, decl.egress)):
                    for e in entries:
                        low, high = e.port_range()
                        kw = {"PortRange": {"From": low, "To": high}} if e.protocol in ("tcp", "udp") else {}
                        self.ec2.call("create-network-acl-entry", self.c.create_network_acl_entry, NetworkAclId=found,
                                      RuleNumber=e.rule, Protocol=ACL_PROTOCOLS[e.protocol], RuleAction=e.action,
                                      Egress=egress, CidrBlock=e.cidr, **kw)
                for subnet in decl.subnets:
                    self._associate_acl(found, subnet_ids[subnet])
                actions[-1] = Action("network-acl", name, "created", found)
        for name in net.elastic_ips:
            found = (self.find("eip", name) or {}).get("AllocationId")
            actions.append(Action("elastic-ip", name, "exists" if found else "create", found))
            if not found and not dry_run:
                found = self.ec2.call("allocate-address", self.c.allocate_address, Domain="vpc", TagSpecifications=[
                    _spec("elastic-ip", self.tags("eip", name))])["AllocationId"]
                actions[-1] = Action("elastic-ip", name, "created", found)
        for tier, spec in self.env.tiers.items():
            for iface in spec.interfaces:
                if not iface.persistent:
                    continue
                label = f"{tier}/{iface.device_index}"
                found = (self.find("eni", label) or {}).get("NetworkInterfaceId")
                actions.append(Action("interface", label, "exists" if found else "create", found))
                if not found and not dry_run:
                    found = self._create_eni(tier, iface, subnet_ids, groups)
                    actions[-1] = Action("interface", label, "created", found)
        return actions

    def _rules(self, group_id: str, decl, groups: dict[str, str | None]) -> None:
        for egress, rules in ((False, decl.ingress), (True, decl.egress or [])):
            for rule in rules:
                low, high = rule.port_range()
                perm = {"IpProtocol": PROTOCOLS[rule.protocol], "FromPort": low, "ToPort": high}
                if rule.cidr:
                    perm["IpRanges"] = [{"CidrIp": rule.cidr, "Description": rule.description}]
                else:
                    perm["UserIdGroupPairs"] = [{"GroupId": groups[rule.group], "Description": rule.description}]
                call = self.c.authorize_security_group_egress if egress else self.c.authorize_security_group_ingress
                try:
                    self.ec2.call("authorize-security-group-rule", call, GroupId=group_id, IpPermissions=[perm])
                except CloudError as exc:
                    if self.ec2.code_of(exc) != "InvalidPermission.Duplicate":  # already there: idempotent
                        raise

    def _associate_acl(self, acl_id: str, subnet_id: str) -> None:
        current = self.ec2.call("describe-network-acls", self.c.describe_network_acls, Filters=[
            {"Name": "association.subnet-id", "Values": [subnet_id]}])["NetworkAcls"]
        for acl in current:
            for assoc in acl.get("Associations", []):
                if assoc.get("SubnetId") == subnet_id:
                    self.ec2.call("replace-network-acl-association", self.c.replace_network_acl_association,
                                  AssociationId=assoc["NetworkAclAssociationId"], NetworkAclId=acl_id)

    def _create_eni(self, tier: str, iface: Interface, subnet_ids: dict, groups: dict) -> str:
        subnet = subnet_ids.get(iface.subnet) or self.subnet(iface.subnet, f"tiers.{tier}").id
        group_ids = [groups.get(g) or self.group(g, None, f"tiers.{tier}") for g in iface.security_groups]
        kw: dict = {"PrivateIpAddress": iface.private_ip}
        if iface.secondary_ips:
            kw["PrivateIpAddresses"] = [{"PrivateIpAddress": iface.private_ip, "Primary": True}] + [
                {"PrivateIpAddress": ip, "Primary": False} for ip in iface.secondary_ips]
            del kw["PrivateIpAddress"]
        elif iface.secondary_ip_count:
            kw["SecondaryPrivateIpAddressCount"] = iface.secondary_ip_count
        eni = self.ec2.call("create-network-interface", self.c.create_network_interface, SubnetId=subnet,
                            Groups=group_ids, Description=iface.description or f"bakery {self.env.name} {tier}",
                            TagSpecifications=[_spec("network-interface", self.tags(
                                "eni", f"{tier}/{iface.device_index}", **{"bakery:tier": tier}))], **kw)["NetworkInterface"]
        eni_id = eni["NetworkInterfaceId"]
        have = {a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])}
        missing = [ip for ip in iface.secondary_ips if ip not in have]
        if missing:  # some endpoints (moto) ignore secondaries at create time
            self.ec2.call("assign-private-ip-addresses", self.c.assign_private_ip_addresses,
                          NetworkInterfaceId=eni_id, PrivateIpAddresses=missing)
        if not iface.source_dest_check:
            self.ec2.call("modify-network-interface-attribute", self.c.modify_network_interface_attribute,
                          NetworkInterfaceId=eni_id, SourceDestCheck={"Value": False})
        return eni_id

    # ---- moving ENIs --------------------------------------------------------------------

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
                eni_id = by_index[r.spec.device_index]["NetworkInterfaceId"]
                have = {a["PrivateIpAddress"] for a in by_index[r.spec.device_index].get("PrivateIpAddresses", [])}
                missing = [ip for ip in r.spec.secondary_ips if ip not in have]
                if missing:
                    self.ec2.call("assign-private-ip-addresses", self.c.assign_private_ip_addresses,
                                  NetworkInterfaceId=eni_id, PrivateIpAddresses=missing)
                elif r.spec.secondary_ip_count and len(have) < 1 + r.spec.secondary_ip_count:
                    self.ec2.call("assign-private-ip-addresses", self.c.assign_private_ip_addresses,
                                  NetworkInterfaceId=eni_id,
                                  SecondaryPrivateIpAddressCount=1 + r.spec.secondary_ip_count - len(have))
                if not r.spec.source_dest_check:
                    self.ec2.call("modify-network-interface-attribute", self.c.modify_network_interface_attribute,
                                  NetworkInterfaceId=eni_id, SourceDestCheck={"Value": False})
            if r.spec.elastic_ip and (active or not r.spec.persistent):
                self.associate_eip(r, eni_id)

    def associate_eip(self, r: ResolvedInterface, eni_id: str) -> None:
        private = r.spec.elastic_ip.private_ip or r.spec.private_ip
        self.ec2.call("associate-address", self.c.associate_address, AllocationId=r.eip_allocation,
                      NetworkInterfaceId=eni_id, PrivateIpAddress=private, AllowReassociation=True)

    def attach(self, eni_id: str, instance_id: str, device_index: int, timeout: float = 120) -> None:
        self.ec2.call("attach-network-interface", self.c.attach_network_interface, NetworkInterfaceId=eni_id,
                      InstanceId=instance_id, DeviceIndex=device_index)
        self._wait_eni(eni_id, lambda e: e.get("Attachment", {}).get("Status") == "attached"
                       and e["Attachment"].get("InstanceId") == instance_id, f"{eni_id} to attach to {instance_id}", timeout)

    def detach(self, eni: dict, force: bool, timeout: float = 120) -> None:
        attachment = eni.get("Attachment") or {}
        if not attachment.get("AttachmentId"):
            return
        self.ec2.call("detach-network-interface", self.c.detach_network_interface,
                      AttachmentId=attachment["AttachmentId"], Force=force)
        self._wait_eni(eni["NetworkInterfaceId"], lambda e: e.get("Status") == "available",
                       f"{eni['NetworkInterfaceId']} to detach", timeout)

    def describe_eni(self, eni_id: str) -> dict:
        return self.ec2.call("describe-network-interfaces", self.c.describe_network_interfaces,
                             NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]

    def _wait_eni(self, eni_id: str, ready, what: str, timeout: float) -> dict:
        def check():
            e = self.describe_eni(eni_id)
            return e if ready(e) else None
        return wait_for(check, what=what, timeout=timeout, backoff=Backoff(initial=0.05, factor=1.5, max_interval=1.0))


@dataclass
class FailoverReport:
    environment: str
    tier: str
    from_instance: str | None
    to_instance: str
    interfaces: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def _spec(kind: str, tags: dict[str, str]) -> dict:
    return {"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def failover(ec2, env: Environment, tier: str, to: str | None, report: Reporter) -> FailoverReport:
    """Move a tier's persistent ENIs (and their Elastic IPs) to a hot standby."""
    spec = env.select(tier)[tier]
    persistent = [i for i in spec.interfaces if i.persistent]
    if not persistent:
        raise ConfigError(f"{env.path}: tiers.{tier} has no persistent interfaces to fail over")
    net = Network(ec2, env, report)
    resolved = [r for r in net.resolve_interfaces(tier, spec) if r.spec.persistent]
    enis = [net.describe_eni(r.eni_id) for r in resolved]
    current = {e.get("Attachment", {}).get("InstanceId") for e in enis} - {None}
    source = current.pop() if len(current) == 1 else None
    target = to or _standby(ec2, env.name, tier, exclude=source)
    if target == source:
        raise ConfigError(f"failover: {target} already holds tier {tier}'s interfaces")
    started = time.monotonic()
    result = FailoverReport(env.name, tier, source, target)
    source_state = (ec2.describe_instance(source) or {}).get("State", {}).get("Name") if source else None
    force = source_state != "running"  # a failed instance may never answer a polite detach
    with report.stage(f"detach from {source or 'nothing'}{' (forced)' if force else ''}"):
        for eni in enis:
            try:
                net.detach(eni, force=force, timeout=30)
            except CloudError:
                if force:
                    raise
                net.detach(eni, force=True)
    with report.stage(f"attach to {target}"):
        for r in resolved:
            net.attach(r.eni_id, target, r.spec.device_index)
            if r.spec.elastic_ip:
                net.associate_eip(r, r.eni_id)
            result.interfaces.append({"eni": r.eni_id, "device_index": r.spec.device_index,
                                      "ips": r.spec.ips(), "mac": next(e["MacAddress"] for e in enis
                                                                        if e["NetworkInterfaceId"] == r.eni_id)})
    slot_tags = [{"Key": "bakery:slot", "Value": "0"}, {"Key": "bakery:role", "Value": "active"}]
    ec2.call("create-tags", ec2.client.create_tags, Resources=[target], Tags=slot_tags)
    if source:
        ec2.call("create-tags", ec2.client.create_tags, Resources=[source], Tags=[
            {"Key": "bakery:slot", "Value": f"failed-{int(time.time())}"}, {"Key": "bakery:role", "Value": "failed"}])
    result.seconds = round(time.monotonic() - started, 3)
    return result


def _standby(ec2, env: str, tier: str, exclude: str | None) -> str:
    reservations = ec2.describe_all("describe_instances", "Reservations", Filters=[
        {"Name": "tag:bakery:environment", "Values": [env]}, {"Name": "tag:bakery:tier", "Values": [tier]},
        {"Name": "tag:bakery:role", "Values": ["standby"]}, {"Name": "instance-state-name", "Values": ["running"]}])
    ids = sorted(i["InstanceId"] for r in reservations for i in r["Instances"] if i["InstanceId"] != exclude)
    if not ids:
        raise ConfigError(f"failover: tier {tier} of {env} has no running standby instance "
                          "(set standby: 1 and launch, or pass --to INSTANCE)")
    return ids[0]


def status(ec2, env: Environment) -> dict:
    """Every ENI and Elastic IP of the environment, with warnings about idle Elastic IPs."""
    flt = [{"Name": "tag:bakery:environment", "Values": [env.name]}]
    enis = ec2.call("describe-network-interfaces", ec2.client.describe_network_interfaces, Filters=flt)["NetworkInterfaces"]
    # launch-time ENIs carry the instance's tags, not the network's: add those of the environment's instances
    instances = ec2.describe_all("describe_instances", "Reservations", Filters=flt + [
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    states = {i["InstanceId"]: i["State"]["Name"] for r in instances for i in r["Instances"]}
    seen = {e["NetworkInterfaceId"] for e in enis}
    for r in instances:
        for inst in r["Instances"]:
            for nic in inst.get("NetworkInterfaces", []):
                if nic["NetworkInterfaceId"] not in seen:
                    enis += ec2.client.describe_network_interfaces(
                        NetworkInterfaceIds=[nic["NetworkInterfaceId"]])["NetworkInterfaces"]
                    seen.add(nic["NetworkInterfaceId"])
    rows = []
    for e in sorted(enis, key=lambda e: (e.get("Attachment", {}).get("InstanceId", ""),
                                        e.get("Attachment", {}).get("DeviceIndex", 0))):
        tags = {t["Key"]: t["Value"] for t in e.get("TagSet", [])}
        att = e.get("Attachment") or {}
        rows.append({"eni": e["NetworkInterfaceId"], "name": tags.get("bakery:network-name", "").removeprefix("eni/"),
                     "persistent": "bakery:network-name" in tags, "subnet": e["SubnetId"], "mac": e.get("MacAddress"),
                     "private_ips": [a["PrivateIpAddress"] for a in e.get("PrivateIpAddresses", [])],
                     "groups": [g["GroupId"] for g in e.get("Groups", [])], "source_dest_check": e.get("SourceDestCheck"),
                     "instance": att.get("InstanceId"), "device_index": att.get("DeviceIndex"),
                     "attachment": att.get("Status", "detached"), "status": e.get("Status")})
    addresses = ec2.call("describe-addresses", ec2.client.describe_addresses, Filters=flt)["Addresses"]
    eips, warnings = [], []
    holder = {r["eni"]: r["instance"] for r in rows}
    for a in addresses:
        name = {t["Key"]: t["Value"] for t in a.get("Tags", [])}.get("bakery:network-name", "").removeprefix("eip/")
        # An EIP on an ENI follows the ENI's attachment (some endpoints leave InstanceId empty).
        instance = a.get("InstanceId") or holder.get(a.get("NetworkInterfaceId"))
        eips.append({"name": name, "public_ip": a.get("PublicIp"), "allocation": a.get("AllocationId"),
                     "eni": a.get("NetworkInterfaceId"), "private_ip": a.get("PrivateIpAddress"),
                     "instance": instance})
        if not instance or states.get(instance) != "running":
            warnings.append(f"Elastic IP {name} ({a.get('PublicIp')}) is not attached to a running instance: "
                            "it is charged while idle")
    return {"environment": env.name, "interfaces": rows, "elastic_ips": eips, "warnings": warnings}


def open_env(settings, name: str):
    """(EC2 facade, Environment) for the network tasks: the environment is loaded, and bad
    input refused, before any cloud call."""
    from bakery.cloud.ec2 import EC2
    from bakery.config.environment import load_environment

    env = load_environment(settings.envs, name)
    return EC2(settings), env


def __getattr__(name: str):
    # Transitional: render_status is the CLI's now (bakery/cli/network.py); tasks.py still
    # imports it from here. Remove once it imports bakery.cli.network.
    if name == "render_status":
        from bakery.cli.network import render_status

        return render_status
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
