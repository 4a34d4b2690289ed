"""Environment: where and how the baked images run, loaded from envs/NAME.yaml.

An environment names its tiers; each tier says which image (newest of a recipe, a
pinned AMI, or an SSM parameter), how many instances, where (subnets, security groups),
which provisioning strategy, and which user data templates with which variables.
Environment-wide variables are shared by all tiers; a tier's own override them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from bakery.config.yamlfile import FieldError, format_path, load_yaml, validate
from bakery.errors import ConfigError
from bakery.config.models import MAX_USER_TAGS, SSM_PATH, Strict, UserTags, exactly_one
from bakery.config.ec2data import InterfaceLimits, interface_limits, zones
from bakery.config.patterns import AMI_RE, NAME_RE, named_file
from bakery.config.recipe import Bastion, RootVolume

VAR_NAME = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]
RESERVED_VARS = ("environment", "tier", "region", "image_id", "recipe", "instance_index")


class ImageRef(Strict):
    """Exactly one of: the newest finished image of a recipe, a pinned AMI, an SSM parameter."""

    recipe: Annotated[str, Field(pattern=NAME_RE)] | None = None
    ami: Annotated[str, Field(pattern=AMI_RE)] | None = None
    ssm_parameter: SSM_PATH | None = None

    @model_validator(mode="after")
    def _one(self) -> "ImageRef":
        exactly_one(self, "recipe", "ami", "ssm_parameter")
        return self


class HealthCheck(Strict):
    #: cloud-init: ready once cloud-init finished without a failed module, as the instance's console
    #: says (GetConsoleOutput); port, path and address do not apply
    type: Literal["http", "tcp", "cloud-init"] = "http"
    port: int = Field(80, ge=1, le=65535)
    path: str = Field("/health", pattern=r"^/")
    expect_status: int = Field(200, ge=100, le=599)
    timeout: float = Field(300, gt=0, le=3600, description="seconds from launch until the check must pass")
    address: Literal["private_ip", "public_ip"] = "private_ip"
    #: the interface (device index) whose address is probed; a hot standby, which holds the tier's
    #: persistent interfaces only once it takes over, is probed at its primary (device 0)
    interface: int = Field(0, ge=0, le=15)
    #: where the check is made from: a running instance of this tier, with its place in the network
    #: (subnet, security groups, address), so the check passes only when the environment lets that
    #: client in. Without it: from outside any instance (the internet for a public address, a host
    #: on the instance's own subnet in no security group for a private one; on AWS, where bakery runs)
    from_: Annotated[str, Field(pattern=NAME_RE)] | None = Field(None, alias="from")

    @model_validator(mode="after")
    def _cloud_init(self) -> "HealthCheck":
        if self.type == "cloud-init" and (self.from_ or self.interface):
            raise ValueError("a cloud-init check reads the console: 'from' and 'interface' do not apply")
        return self


class UserDataSpec(Strict):
    parts: list[str] = Field(default_factory=list, description="templates under userdata/, in order")
    variables: dict[VAR_NAME, object] = {}

    @field_validator("parts")
    @classmethod
    def _parts(cls, v: list[str]) -> list[str]:
        for p in v:
            if p.startswith("/") or ".." in Path(p).parts:
                raise ValueError(f"template {p!r} must be a path inside userdata/ (no '..', not absolute)")
        return v


def _cidr(value: str) -> str:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {value!r}: {exc}") from None
    return value


def _ip(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"invalid IPv4 address {value!r}") from None
    return value


def _block_size(value: str) -> str:
    prefix = ipaddress.IPv4Network(value).prefixlen
    if not 16 <= prefix <= 28:
        raise ValueError(f"{value}: EC2 takes VPC and subnet blocks from /16 (65,536 addresses) to /28 (16)")
    return value


def _ports(value: str | int) -> str | int:
    first, last = port_range(value, (0, 0))
    if first < 0 or last > 65535:
        raise ValueError(f"ports {value}: a port is 0 to 65535")
    if first > last:
        raise ValueError(f"ports {value}: the range is reversed (write {last}-{first})")
    return value


CIDR = Annotated[str, AfterValidator(_cidr)]
BLOCK = Annotated[str, AfterValidator(_cidr), AfterValidator(_block_size)]  # a VPC's or a subnet's
IP = Annotated[str, AfterValidator(_ip)]
NET_NAME = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
PORTS = Annotated[Annotated[str, Field(pattern=r"^\d{1,5}(-\d{1,5})?$")] | int, AfterValidator(_ports)]


def port_range(ports: str | int | None, default: tuple[int, int]) -> tuple[int, int]:
    if ports is None:
        return default
    if isinstance(ports, int):
        return ports, ports
    low, _, high = ports.partition("-")
    return int(low), int(high or low)


class VpcSpec(Strict):
    """The environment's VPC: created by `network.up` (cidr) or an existing one (id)."""

    cidr: BLOCK | None = None
    id: Annotated[str, Field(pattern=r"^vpc-[0-9a-f]+$")] | None = None

    @model_validator(mode="after")
    def _one(self) -> "VpcSpec":
        exactly_one(self, "cidr", "id")
        return self


class SubnetSpec(Strict):
    cidr: BLOCK | None = None
    id: Annotated[str, Field(pattern=r"^subnet-[0-9a-f]+$")] | None = None
    az: str | None = Field(None, pattern=r"^[a-z]{2}-[a-z]+-\d[a-z]$")
    public: bool = False  # MapPublicIpOnLaunch: instances get a public IP unless an interface says otherwise

    @model_validator(mode="after")
    def _one(self) -> "SubnetSpec":
        exactly_one(self, "cidr", "id")
        return self


class Rule(Strict):
    """A security group rule: protocol and ports from a CIDR or from another group of the environment."""

    protocol: Literal["tcp", "udp", "icmp", "all"] = "tcp"
    ports: PORTS | None = None
    cidr: CIDR | None = None
    group: NET_NAME | None = None
    description: str = ""

    @model_validator(mode="after")
    def _source(self) -> "Rule":
        exactly_one(self, "cidr", "group")
        if self.protocol in ("tcp", "udp") and self.ports is None:
            raise ValueError(f"protocol {self.protocol} needs ports (e.g. 443 or 8000-8100)")
        return self

    def port_range(self) -> tuple[int, int]:
        return port_range(self.ports, (-1, -1))


class GroupSpec(Strict):
    description: str = "managed by bakery"
    ingress: list[Rule] = []
    egress: list[Rule] | None = None  # None: EC2's default, all outbound allowed


class AclEntry(Strict):
    rule: int = Field(ge=1, le=32766)
    action: Literal["allow", "deny"]
    protocol: Literal["tcp", "udp", "icmp", "all"] = "all"
    ports: PORTS | None = None
    cidr: CIDR

    def port_range(self) -> tuple[int, int]:
        return port_range(self.ports, (0, 65535))


class AclSpec(Strict):
    """A network ACL: stateless, numbered rules evaluated lowest first, both directions declared."""

    subnets: list[NET_NAME] = Field(min_length=1)
    ingress: list[AclEntry] = []
    egress: list[AclEntry] = []

    @model_validator(mode="after")
    def _numbers(self) -> "AclSpec":
        for direction in ("ingress", "egress"):
            numbers = [e.rule for e in getattr(self, direction)]
            if len(numbers) != len(set(numbers)):
                raise ValueError(f"{direction}: duplicate rule numbers {sorted(numbers)}")
        return self


class ElasticIP(Strict):
    description: str = ""


class NatGatewaySpec(Strict):
    """A NAT gateway: what a route table sends to it reaches the internet from its Elastic IP."""

    subnet: NET_NAME      # where it lives: a subnet whose route table goes to the internet gateway
    elastic_ip: NET_NAME  # its public address: an entry of network.elastic_ips, for it alone


class RouteSpec(Strict):
    """One route of a route table: a destination to the internet gateway or to a NAT gateway."""

    cidr: CIDR
    internet_gateway: Literal[True] | None = None
    nat_gateway: NET_NAME | None = None

    @model_validator(mode="after")
    def _target(self) -> "RouteSpec":
        exactly_one(self, "internet_gateway", "nat_gateway")
        return self


class RouteTableSpec(Strict):
    """A route table and the subnets it governs (the others keep the VPC's main table: local only)."""

    subnets: list[NET_NAME] = Field(min_length=1)
    routes: list[RouteSpec] = []

    @model_validator(mode="after")
    def _unique(self) -> "RouteTableSpec":
        cidrs = [r.cidr for r in self.routes]
        if len(cidrs) != len(set(cidrs)):
            raise ValueError(f"routes: more than one route to {sorted(c for c in cidrs if cidrs.count(c) > 1)[0]}")
        return self


class NetworkSpec(Strict):
    vpc: VpcSpec
    subnets: dict[NET_NAME, SubnetSpec] = Field(min_length=1)
    security_groups: dict[NET_NAME, GroupSpec] = {}
    network_acls: dict[NET_NAME, AclSpec] = {}
    elastic_ips: dict[NET_NAME, ElasticIP] = {}
    internet_gateway: bool = False  # attached to the VPC by network.up (an existing VPC's attached one is used)
    nat_gateways: dict[NET_NAME, NatGatewaySpec] = {}
    route_tables: dict[NET_NAME, RouteTableSpec] = {}

    @model_validator(mode="after")
    def _refs(self) -> "NetworkSpec":
        for name, group in self.security_groups.items():
            for rule in group.ingress + (group.egress or []):
                if rule.group and rule.group not in self.security_groups:
                    raise ValueError(f"security_groups.{name}: rule refers to unknown group {rule.group!r}")
        for name, acl in self.network_acls.items():
            for subnet in acl.subnets:
                if subnet not in self.subnets:
                    raise ValueError(f"network_acls.{name}.subnets: unknown subnet {subnet!r}")
        if self.vpc.cidr:
            vpc = ipaddress.IPv4Network(self.vpc.cidr)
            for name, subnet in self.subnets.items():
                if subnet.cidr and not ipaddress.IPv4Network(subnet.cidr).subnet_of(vpc):
                    raise ValueError(f"subnets.{name}: {subnet.cidr} is not inside the VPC's {self.vpc.cidr}")
        blocks = [(name, ipaddress.IPv4Network(sub.cidr)) for name, sub in self.subnets.items() if sub.cidr]
        for i, (name, net) in enumerate(blocks):
            for other, other_net in blocks[:i]:
                if net.overlaps(other_net):
                    raise FieldError(("subnets", name), f"{net} overlaps subnet {other} ({other_net}): "
                                     "a VPC's subnets cannot share addresses")
        self._check_routes()
        return self

    def _check_routes(self) -> None:
        """What EC2 would accept and then not carry, or refuse late: a route to a gateway that is not
        declared, a subnet in two route tables, a NAT gateway that cannot reach the internet itself."""
        table_of: dict[str, str] = {}
        for name, table in self.route_tables.items():
            where = f"route_tables.{name}"
            for subnet in table.subnets:
                if subnet not in self.subnets:
                    raise ValueError(f"{where}.subnets: unknown subnet {subnet!r}")
                if subnet in table_of:
                    raise ValueError(f"{where}.subnets: {subnet!r} is already in route table {table_of[subnet]!r} "
                                     "(a subnet has one route table)")
                table_of[subnet] = name
            for n, route in enumerate(table.routes):
                if route.internet_gateway and not self.internet_gateway:
                    raise ValueError(f"{where}.routes[{n}]: a route to the internet gateway needs "
                                     "network.internet_gateway: true")
                if route.nat_gateway and route.nat_gateway not in self.nat_gateways:
                    raise ValueError(f"{where}.routes[{n}]: unknown NAT gateway {route.nat_gateway!r}")
                if self.vpc.cidr and ipaddress.IPv4Network(route.cidr).subnet_of(ipaddress.IPv4Network(self.vpc.cidr)):
                    raise ValueError(f"{where}.routes[{n}]: {route.cidr} is inside the VPC's {self.vpc.cidr}, "
                                     "which its local route carries")
        eips: dict[str, str] = {}
        for name, nat in self.nat_gateways.items():
            where = f"nat_gateways.{name}"
            if nat.subnet not in self.subnets:
                raise ValueError(f"{where}.subnet: unknown subnet {nat.subnet!r}")
            if nat.elastic_ip not in self.elastic_ips:
                raise ValueError(f"{where}.elastic_ip: {nat.elastic_ip!r} is not in network.elastic_ips")
            if nat.elastic_ip in eips:
                raise ValueError(f"{where}.elastic_ip: {nat.elastic_ip!r} is already NAT gateway {eips[nat.elastic_ip]!r}'s")
            eips[nat.elastic_ip] = name
            table = self.route_tables.get(table_of.get(nat.subnet, ""))
            if table is None or not any(r.internet_gateway and r.cidr == "0.0.0.0/0" for r in table.routes):
                raise ValueError(f"{where}.subnet: subnet {nat.subnet!r} has no route 0.0.0.0/0 to the internet "
                                 "gateway, so a NAT gateway there reaches nothing (put it in a public subnet)")


class EipBinding(Strict):
    name: NET_NAME                   # an entry of network.elastic_ips
    private_ip: IP | None = None     # default: the interface's primary private IP


class Interface(Strict):
    """One ENI of a tier's instance (the seed's unit of networking)."""

    device_index: int = Field(ge=0, le=31)
    subnet: str
    security_groups: list[str] = []
    private_ip: IP | None = None
    secondary_ips: list[IP] = []
    secondary_ip_count: int = Field(0, ge=0, le=49)
    source_dest_check: bool = True
    persistent: bool = False  # created once by network.up, survives instances, moves on failover
    public_ip: bool | None = None
    elastic_ip: EipBinding | None = None
    description: str = ""

    @model_validator(mode="after")
    def _checks(self) -> "Interface":
        if self.secondary_ips and self.secondary_ip_count:
            raise ValueError("give secondary_ips or secondary_ip_count, not both")
        if self.persistent and self.device_index == 0:
            raise ValueError("a persistent interface cannot be device_index 0: EC2 never detaches an "
                             "instance's primary interface, so it could not fail over (use 1 or more)")
        if len(set(self.ips())) != len(self.ips()):
            raise ValueError(f"an address is given twice ({', '.join(self.ips())}): each private IP once, "
                             "the primary not again among secondary_ips")
        if self.persistent and self.private_ip is None:
            raise ValueError("a persistent interface needs a static private_ip (clients keep using it)")
        return self

    def ips(self) -> list[str]:
        return ([self.private_ip] if self.private_ip else []) + list(self.secondary_ips)


class LaunchTemplateSpec(Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9()./_-]{3,128}$")
    set_default: bool = True


class AutoScalingSpec(Strict):
    """The tier as an Auto Scaling group on its launch template: `count` is its desired capacity."""
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.()/ -]{1,255}$", description="default: bakery-ENV-TIER")
    min: int = Field(ge=0, le=100)
    max: int = Field(ge=1, le=100)
    health_check_grace: int = Field(60, ge=0, le=7200, description="seconds before EC2 health counts")
    # an instance refresh (invoke rollout) keeps this share of the desired capacity in service
    min_healthy_percentage: int = Field(90, ge=0, le=100)
    # seconds a new instance is given before the refresh's next batch: long enough for the tier's
    # health check to pass, or the next batch goes before bakery has seen the last one healthy
    instance_warmup: int = Field(60, ge=0, le=3600)


class Tier(Strict):
    image: ImageRef
    strategy: Literal["combined", "baked", "bootstrap"] = "combined"
    instance_type: str = Field("t3.micro", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
    count: int = Field(1, ge=0, le=100)
    subnets: list[str] = Field(default_factory=list, description="subnet ids or Name tags; default: the default VPC")
    security_groups: list[str] = Field(default_factory=list, description="group ids or names")
    iam_instance_profile: str | None = None
    public_ip: bool | None = None  # None: follow the subnet's MapPublicIpOnLaunch
    key_name: str | None = None
    root_volume: RootVolume | None = None
    tags: UserTags = {}
    user_data: UserDataSpec = UserDataSpec()
    secrets: dict[Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")],
                  Annotated[str, Field(pattern=r"^(ssm:/[\w./-]+|secretsmanager:[\w/+=.@-]+)$")]] = {}
    health_check: HealthCheck | None = None
    interfaces: list[Interface] = []
    standby: int = Field(0, ge=0, le=10, description="hot standby instances for ENI failover")
    target_group_arn: Annotated[str, Field(pattern=r"^arn:aws[\w-]*:elasticloadbalancing:")] | None = None
    launch_template: LaunchTemplateSpec | None = None
    auto_scaling: AutoScalingSpec | None = None

    @model_validator(mode="after")
    def _auto_scaling(self) -> "Tier":
        """What a group cannot do: it launches every instance alike, from its launch template, and
        replaces any of them at will."""
        group = self.auto_scaling
        if group is None:
            return self
        if group.min > group.max:
            raise FieldError(("auto_scaling", "min"), f"{group.min} is more than max ({group.max})")
        if not group.min <= self.count <= group.max:
            raise FieldError(("count",), f"{self.count}: an Auto Scaling tier's count is its desired capacity, "
                             f"between auto_scaling.min ({group.min}) and max ({group.max})")
        for name, why in (("interfaces", "every instance of a group is alike: give subnets and security_groups"),
                          ("standby", "a group replaces its instances itself: no hot standby"),
                          ("public_ip", "a group's instances follow their subnet's MapPublicIpOnLaunch")):
            if getattr(self, name):
                raise FieldError((name,), f"not with auto_scaling: {why}")
        if self.strategy == "bootstrap":
            raise FieldError(("strategy",), "not with auto_scaling: a group launches baked images "
                             "(combined or baked), which invoke rollout moves by instance refresh")
        return self

    @model_validator(mode="after")
    def _interfaces(self) -> "Tier":
        if not self.interfaces:
            if self.standby:
                raise ValueError("standby instances take over persistent interfaces: declare interfaces")
            return self
        if self.subnets or self.security_groups or self.public_ip is not None:
            raise ValueError("with interfaces, give subnet, security_groups and public_ip per interface")
        indexes = [i.device_index for i in self.interfaces]
        if len(indexes) != len(set(indexes)):
            raise ValueError(f"interfaces: duplicate device_index {sorted(indexes)}")
        if 0 not in indexes:
            raise ValueError("interfaces: one interface must be device_index 0 (the primary)")
        static = [i for i in self.interfaces if not i.persistent and (i.private_ip or i.secondary_ips)]
        if static and self.count + self.standby > 1:
            raise ValueError("interfaces: a static private_ip on a non-persistent interface works for one "
                             "instance only (count + standby = 1)")
        if any(i.persistent for i in self.interfaces) and self.count != 1:
            raise ValueError("a tier with persistent interfaces runs one active instance (count: 1) "
                             "plus standby instances")
        return self

    def interface_limit_problem(self, limits: InterfaceLimits) -> tuple[tuple, str] | None:
        """How the interfaces exceed EC2's limits for the instance type (DescribeInstanceTypes'
        NetworkInfo): (the field under the tier, the problem), or None. The environment applies it
        with the vendored limits as it loads; the resolver with EC2's for a type they lack."""
        itype = self.instance_type
        if len(self.interfaces) > limits.interfaces:
            return ("interfaces",), (f"{len(self.interfaces)} interfaces: a {itype} takes at most {limits.interfaces} "
                                     "(EC2's MaximumNetworkInterfaces for the type)")
        for n, iface in enumerate(self.interfaces):
            if iface.device_index >= limits.interfaces:
                return ("interfaces", n, "device_index"), (
                    f"{iface.device_index}: a {itype} takes device indexes 0 to {limits.interfaces - 1} "
                    "(EC2's MaximumNetworkInterfaces for the type)")
            addresses = 1 + len(iface.secondary_ips) + iface.secondary_ip_count
            if addresses > limits.ipv4_per_interface:
                return ("interfaces", n), (f"{addresses} private IPv4 addresses: a {itype}'s interface takes at most "
                                           f"{limits.ipv4_per_interface}, the primary included (EC2's "
                                           "Ipv4AddressesPerInterface for the type)")
        return None

    @model_validator(mode="after")
    def _checked_interface(self) -> "Tier":
        index = self.health_check.interface if self.health_check else 0
        if index and index not in {i.device_index for i in self.interfaces}:
            raise ValueError(f"health_check.interface: the tier declares no interface with device_index {index}")
        return self

    @model_validator(mode="after")
    def _strategy(self) -> "Tier":
        if self.strategy != "combined" and self.image.recipe is None:
            raise ValueError(f"strategy {self.strategy!r} needs image.recipe (it uses the recipe itself)")
        if self.strategy == "baked" and (self.user_data.parts or self.secrets):
            raise ValueError("strategy 'baked' launches the image alone: remove user_data.parts and secrets")
        return self


class Access(Strict):
    """How a person logs in to this environment's instances (`invoke ssh`)."""
    user: str = Field("admin", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    key_file: str | None = Field(None, description="private key of the tiers' key pair (~ and relative paths allowed)")
    bastion: Bastion | None = None


class SecretWaiver(Strict):
    """One secret-lint finding let through: its field and rule exactly as the error prints them
    (`...: <field>: ... [rule <rule>]`), and why it may stay (README, "Waiving a secret-lint finding")."""

    field: str = Field(min_length=1)
    rule: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    reason: str

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a waiver needs a reason: say why this value may sit in the file or the user data")
        return v


class SecretLintSpec(Strict):
    allow: list[SecretWaiver] = []

    @model_validator(mode="after")
    def _once(self) -> "SecretLintSpec":
        seen: dict[tuple[str, str], int] = {}
        for i, waiver in enumerate(self.allow):
            key = (waiver.field, waiver.rule)
            if key in seen:
                raise FieldError(("allow", i), f"waives field {waiver.field!r}, rule {waiver.rule} again "
                                 f"(allow[{seen[key]}] does already)")
            seen[key] = i
        return self


class Environment(Strict):
    name: str
    path: Path
    description: str = ""
    variables: dict[VAR_NAME, object] = {}
    secret_lint: SecretLintSpec = SecretLintSpec()  # waivers of the secret lint (bakery/render/secrets.py)
    tags: UserTags = {}
    ssh: Access = Access()
    network: NetworkSpec | None = None
    # launch only images whose signed provenance verifies with the settings' verify_key (issue 16)
    require_verified_images: bool = False
    tiers: dict[Annotated[str, Field(pattern=NAME_RE)], Tier] = Field(min_length=1)

    @model_validator(mode="after")
    def _verifiable(self) -> "Environment":
        if self.require_verified_images:
            for name, tier in self.tiers.items():
                if tier.strategy == "bootstrap":
                    raise FieldError(("tiers", name, "strategy"), "bootstrap launches the recipe's source image, "
                                     "which bakery did not bake or sign: require_verified_images refuses it")
        return self

    @model_validator(mode="after")
    def _nat_addresses(self) -> "Environment":
        """A NAT gateway's Elastic IP is its own: no interface may take it."""
        taken = {nat.elastic_ip: name for name, nat in (self.network.nat_gateways if self.network else {}).items()}
        for tier_name, tier in self.tiers.items():
            for iface in tier.interfaces:
                if iface.elastic_ip and iface.elastic_ip.name in taken:
                    raise ValueError(f"tiers.{tier_name}.interfaces (device {iface.device_index}).elastic_ip: "
                                     f"{iface.elastic_ip.name!r} is NAT gateway {taken[iface.elastic_ip.name]!r}'s address")
        return self

    @model_validator(mode="after")
    def _interfaces_fit_the_network(self) -> "Environment":
        """What the file alone shows about a tier's interfaces, so no cloud is opened to find it: a
        fixed address outside its declared subnet, an Elastic IP that is not declared or is bound to
        an address its ENI does not have, ENIs in declared subnets of different zones (EC2 puts an
        instance's ENIs in its own AZ and refuses the attach of another's, after the launch)."""
        subnets = self.network.subnets if self.network else {}
        eips = self.network.elastic_ips if self.network else {}
        owners: dict[str, str] = {}  # fixed address -> the interface that has it
        for name, tier in self.tiers.items():
            if len({**self.tags, **tier.tags}) > MAX_USER_TAGS:
                raise FieldError(("tiers", name, "tags"), f"with the environment's tags, {len({**self.tags, **tier.tags})} "
                                 f"tags on each instance: at most {MAX_USER_TAGS} (EC2 allows 50, bakery adds its own)")
            zones: dict[str, str] = {}
            for n, iface in enumerate(tier.interfaces):
                at = ("tiers", name, "interfaces", n)
                declared = subnets.get(iface.subnet)
                if declared and declared.cidr:
                    net = ipaddress.IPv4Network(declared.cidr)
                    outside = [ip for ip in iface.ips() if ipaddress.IPv4Address(ip) not in net]
                    if outside:
                        raise FieldError(at, f"{outside[0]} is outside subnet {iface.subnet} ({declared.cidr})")
                    reserved = [ip for ip in iface.ips() if int(ipaddress.IPv4Address(ip)) - int(net.network_address) < 4
                                or ipaddress.IPv4Address(ip) == net.broadcast_address]
                    if reserved:
                        raise FieldError(at, f"{reserved[0]} is one EC2 reserves in subnet {iface.subnet}: the first "
                                         f"four ({net.network_address}-{net.network_address + 3}) and the last "
                                         f"({net.broadcast_address}) of every subnet")
                for ip in iface.ips():
                    if ip in owners:
                        raise FieldError(at, f"{ip} is also {owners[ip]}'s: an address belongs to one interface")
                    owners[ip] = format_path(at)
                if declared and declared.az:
                    zones.setdefault(declared.az, iface.subnet)
                if iface.elastic_ip:
                    if iface.elastic_ip.name not in eips:
                        raise FieldError(at + ("elastic_ip",),
                                         f"{iface.elastic_ip.name!r} is not in network.elastic_ips")
                    bound = iface.elastic_ip.private_ip or iface.private_ip
                    if bound is None or bound not in iface.ips():
                        raise FieldError(at + ("elastic_ip",), f"bound to {bound or 'an unknown primary address'}, "
                                         f"which the interface does not have ({', '.join(iface.ips()) or 'no static IPs'})")
            if len(zones) > 1:
                where = ", ".join(f"{subnet} in {az}" for az, subnet in sorted(zones.items()))
                raise FieldError(("tiers", name, "interfaces"), f"subnets {where}: every ENI of an instance must be "
                                 "in its availability zone")
        return self

    @model_validator(mode="after")
    def _interfaces_fit_the_type(self) -> "Environment":
        for name, tier in self.tiers.items():
            limits = interface_limits(tier.instance_type)
            problem = limits and tier.interface_limit_problem(limits)
            if problem:
                raise FieldError(("tiers", name) + problem[0], problem[1])
        return self

    def check_region(self, region: str) -> None:
        """The zones the file names belong to the region bakery runs in (EC2 refuses a subnet in
        another region's zone, after the VPC and the subnets before it were made)."""
        known = zones(region)
        for name, subnet in (self.network.subnets if self.network else {}).items():
            if subnet.az is None:
                continue
            if not subnet.az.startswith(region) or (known is not None and subnet.az not in known):
                which = f"zones: {', '.join(known)}" if known else f"a zone's name is {region} and a letter"
                raise ConfigError(f"{self.path}: network.subnets.{name}.az: {subnet.az} is not a zone of "
                                  f"{region}, the region bakery uses ({which})")

    @model_validator(mode="after")
    def _check_vantages(self) -> "Environment":
        for name, tier in self.tiers.items():
            vantage = tier.health_check.from_ if tier.health_check else None
            if vantage is None:
                continue
            if vantage not in self.tiers:
                raise FieldError(("tiers", name, "health_check", "from"), f"no tier {vantage!r} (tiers: {', '.join(self.tiers)})")
            if vantage == name:
                raise FieldError(("tiers", name, "health_check", "from"), "a tier cannot be checked from itself "
                                 "(its first instance would have no one to check it)")
            if not self.tiers[vantage].count:
                raise FieldError(("tiers", name, "health_check", "from"), f"tier {vantage!r} has count 0: "
                                 "no instance to check from")
        return self

    @model_validator(mode="after")
    def _reserved(self) -> "Environment":
        for scope, names in [("variables", self.variables)] + [
                (f"tiers.{t}.user_data.variables", tier.user_data.variables) for t, tier in self.tiers.items()]:
            for key in names:
                if key in RESERVED_VARS:
                    raise ValueError(f"{scope}.{key}: name is reserved ({', '.join(RESERVED_VARS)})")
        return self

    def select(self, tier: str | None) -> dict[str, Tier]:
        if tier is None:
            return dict(self.tiers)
        if tier not in self.tiers:
            raise ConfigError(f"{self.path}: environment {self.name!r} has no tier {tier!r} "
                              f"(tiers: {', '.join(self.tiers)})")
        return {tier: self.tiers[tier]}

    def variables_for(self, tier: str) -> dict[str, object]:
        return {**self.variables, **self.tiers[tier].user_data.variables}


def list_environments(envs_dir: Path) -> list[str]:
    return sorted(p.stem for p in envs_dir.glob("*.yaml")) if envs_dir.is_dir() else []


def load_environment(envs_dir: Path, name: str, region: str | None = None) -> Environment:
    """The environment, validated; with `region` (the settings'), its zones checked against it."""
    path = named_file(envs_dir, name, "environment", "envs_dir")
    data, lines = load_yaml(path)
    if isinstance(data, dict):
        for key in ("name", "path"):
            if key in data:
                raise ConfigError(f"{path}:{lines.line_for((key,))}: {key}: unknown key "
                                  "(an environment's name is its file name)")
        data = {**data, "name": name, "path": path}
        lines.record(("name",), 1)
    env = validate(Environment, data, lines, str(path))
    if region is not None:
        env.check_region(region)
    return env
