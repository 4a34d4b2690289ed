"""Where moto answers with a stand-in and EC2 has a real answer, the local endpoint gives the real one.

Installed once, in the endpoint's process only (server.py), on moto's own handlers and models, so
moto still parses the request, finds the instance (or answers InvalidInstanceID.NotFound) and
serialises the answer as EC2 does:

- GetConsoleOutput is the machine's console (moto: a canned 2006 Xen boot log);
- an instance launched without a subnet goes into its zone's default subnet, with an address from
  it, as in every account since EC2-Classic retired (moto: EC2-Classic, an address from nowhere,
  so the instance had no network and no metadata service);
- public addresses (an instance's, an Elastic IP's) come from the documentation ranges, the only
  ones the local cloud may use, less what this machine really reaches there (internet.reserved)
  (moto: 54.214.x.x and random addresses);
- the default VPC has an internet gateway, and its main route table a default route to it, as in
  every account (moto: none, so a default subnet's instances could not reach out); a saved state
  from before gets them once (``give_default_vpcs_internet_gateways``);
- an Elastic IP associated with one private IP of an ENI (AssociateAddress PrivateIpAddress) is on
  that address (moto: always the ENI's primary one), and one moved to another ENI leaves the first
  (moto: both kept showing it);
- a NAT gateway's private address comes from its subnet (moto: any 10.x.x.x);
- a private address EC2 picks for an ENI (a second interface, CreateNetworkInterface or
  AssignPrivateIpAddresses without addresses) comes from its subnet's allocator, never one of the
  addresses EC2 reserves or one in use, and every address an ENI holds is taken in its subnet
  until it is let go (moto: any random address of the CIDR, x.x.x.1 and duplicates included);
- RunInstances refuses, with EC2's errors and before anything is made, what no machine could run:
  an image that does not exist, an unknown instance type, an instance type and an image of
  different architectures; and, as the local cloud's own limits, a Windows image or an
  architecture other than the host's (moto: an instance of anything, with no machine behind it).
"""

from __future__ import annotations

import contextvars
import ipaddress
import platform
import random
from typing import Callable

from bakery.local import moto_state as M
from bakery.local.cloud import LocalCloud
from bakery.local.internet import is_reserved
from bakery.local.vpcnet import PUBLIC_RANGES


def install(machines: LocalCloud) -> Callable[[], None]:
    """Put the real answers in place; returns what takes moto's own back (tests share a process)."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.models import elastic_ip_addresses, elastic_network_interfaces
    from moto.ec2.models.instances import Instance, InstanceBackend
    from moto.ec2.responses.general import General
    from moto.ec2.utils import Base64EncodedString

    def get_console_output(self) -> ActionResult:
        """The machine's console: its boot, cloud-init's output and host key fingerprints."""
        instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
        read = console_read.get()  # by the control plane, before the request came into moto
        text = read[1] if read is not None and read[0] == instance.id else machines.console_output(instance.id)
        return ActionResult({"InstanceId": instance.id, "Timestamp": utcnow(),
                             "Output": Base64EncodedString.from_raw_string(text)})

    _set(General, "get_console_output", get_console_output)

    moto_init = Instance.__init__

    def instance_init(self, ec2_backend, image_id, user_data, security_groups, **kwargs) -> None:
        nics = kwargs.get("nics") or {}
        nic_list = nics.values() if isinstance(nics, dict) else nics
        if not kwargs.get("subnet_id") and not any(n.get("SubnetId") for n in nic_list):
            zone = kwargs.get("placement") or f"{ec2_backend.region_name}a"
            subnet = ec2_backend.get_default_subnets().get(zone)
            if subnet is not None:  # no default VPC: moto's own error follows
                kwargs["subnet_id"] = subnet.id
        moto_init(self, ec2_backend, image_id, user_data, security_groups, **kwargs)

    _set(Instance, "__init__", instance_init)

    moto_run_instances = InstanceBackend.run_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        runnable(self, image_id, kwargs)
        return moto_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)

    _set(InstanceBackend, "run_instances", run_instances)
    _set(elastic_ip_addresses, "random_ip", _public_address)
    _set(elastic_network_interfaces, "random_public_ip", _public_address)

    ENI, Backend = elastic_network_interfaces.NetworkInterface, elastic_network_interfaces.NetworkInterfaceBackend
    moto_random_private_ip = elastic_network_interfaces.random_private_ip
    moto_eni_init, moto_assign = ENI.__init__, Backend.assign_private_ip_addresses
    moto_unassign = Backend.unassign_private_ip_addresses

    def private_address(cidr: str, ipv6: bool = False) -> str:
        subnet = _subnet_in_play.get()
        if ipv6 or subnet is None or subnet.cidr_block != cidr:
            return moto_random_private_ip(cidr, ipv6)
        return subnet.get_available_subnet_ip(instance=None)  # taken in the subnet from now on

    def eni_init(self, ec2_backend, subnet, *args, **kwargs) -> None:
        token = _subnet_in_play.set(ec2_backend.get_subnet(subnet) if isinstance(subnet, str) else subnet)
        try:
            moto_eni_init(self, ec2_backend, subnet, *args, **kwargs)
        finally:
            _subnet_in_play.reset(token)
        _take(self)

    def assign(self, eni_id: str, *args, **kwargs):
        token = _subnet_in_play.set(self.get_network_interface(eni_id).subnet)
        try:
            eni = moto_assign(self, eni_id, *args, **kwargs)
        finally:
            _subnet_in_play.reset(token)
        _take(eni)
        return eni

    def unassign(self, eni_id: str, private_ip_address=None):
        eni = self.get_network_interface(eni_id)
        before = set(_addresses(eni))
        eni = moto_unassign(self, eni_id, private_ip_address)
        for ip in before - set(_addresses(eni)):
            eni.subnet.del_subnet_ip(ip)
        return eni

    from moto.ec2.models.launch_templates import LaunchTemplate
    from moto.ec2.utils import parse_user_data

    moto_create_version = LaunchTemplate.create_version

    def create_version(self, data: dict, description: str):
        """CreateLaunchTemplateVersion keeps UserData as the string it was sent, where
        CreateLaunchTemplate decodes it: an instance launched from such a version (by RunInstances
        or an Auto Scaling group) then fails inside moto. Both take it the same way here."""
        if isinstance(data.get("UserData"), str) and not isinstance(data["UserData"], Base64EncodedString):
            data = {**data, "UserData": parse_user_data(data["UserData"])}
        return moto_create_version(self, data, description)

    install_api_answers()
    _set(LaunchTemplate, "create_version", create_version)
    _set(elastic_network_interfaces, "random_private_ip", private_address)
    _set(ENI, "__init__", eni_init)
    _set(Backend, "assign_private_ip_addresses", assign)
    _set(Backend, "unassign_private_ip_addresses", unassign)
    _install_gateways()
    return _uninstall


def install_api_answers() -> Callable[[], None]:
    """The endpoint's answers that need no machine, as EC2 gives them where moto has none:
    DeleteLaunchTemplateVersions, and the tags CopyImage and CreateImage are asked to put on. Returns what takes moto's
    own back. Also for a test's moto server or in-process moto that must behave as EC2 there."""
    from moto.core.responses import ActionResult
    from moto.ec2.models.launch_templates import LaunchTemplateBackend
    from moto.ec2.responses.launch_templates import LaunchTemplates

    moto_versions = LaunchTemplateBackend.describe_launch_template_versions

    def describe_versions(self, *args, **kwargs):
        return [(t, v) for t, v in moto_versions(self, *args, **kwargs) if not getattr(v, "bakery_deleted", False)]

    def delete_launch_template_versions(self) -> ActionResult:
        """DeleteLaunchTemplateVersions (moto has none), answered as EC2 does: each version is
        deleted or reported unsuccessful with EC2's code (one that does not exist; the default
        version, which must not be deleted while it is the default)."""
        name, tid = self._get_param("LaunchTemplateName"), self._get_param("LaunchTemplateId")
        [template] = self.ec2_backend.describe_launch_templates(template_names=[name] if name else None,
                                                                template_ids=[tid] if tid else None)
        done, failed = [], []
        for raw in self._get_param("Versions", []):
            number = int(raw) if str(raw).isdigit() else 0
            version = template.versions[number - 1] if 1 <= number <= len(template.versions) else None
            which = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name, "VersionNumber": number}
            if version is None or getattr(version, "bakery_deleted", False):
                failed.append({**which, "ResponseError": {"Code": "launchTemplateVersionDoesNotExist",
                                                          "Message": f"version {raw} does not exist"}})
            elif template.is_default(version):
                failed.append({**which, "ResponseError": {"Code": "unexpectedError",
                                                          "Message": "the default version cannot be deleted"}})
            else:
                version.bakery_deleted = True
                done.append(which)
        return ActionResult({"SuccessfullyDeletedLaunchTemplateVersions": done,
                             "UnsuccessfullyDeletedLaunchTemplateVersions": failed})

    from moto.ec2.responses.amis import AmisResponse

    moto_copy_image = AmisResponse.copy_image

    def copy_image(self) -> ActionResult:
        """CopyImage tags the copy and its snapshots as its TagSpecifications ask (moto ignores them)."""
        answer = moto_copy_image(self)
        ami = self.ec2_backend.amis[answer.result["ImageId"]]
        for spec in self._get_param("TagSpecifications", []):
            target = {"image": ami, "snapshot": getattr(ami, "ebs_snapshot", None)}.get(spec.get("ResourceType"))
            for tag in spec.get("Tags", []) if target is not None else []:
                target.add_tag(tag["Key"], tag["Value"])
        return answer

    _set(LaunchTemplateBackend, "describe_launch_template_versions", describe_versions)
    _set(LaunchTemplates, "delete_launch_template_versions", delete_launch_template_versions)
    _set(AmisResponse, "copy_image", copy_image)
    install_snapshot_tags()
    return _uninstall


def install_snapshot_tags() -> Callable[[], None]:
    """CreateImage tags the image's snapshots too when asked, as EC2 does (moto raises
    NotImplementedError for a snapshot TagSpecification); returns what takes moto's back. Also
    for moto in a test's own process, which plays AWS (bakery then asks for it)."""
    from moto.ec2.models.amis import AmiBackend

    moto_create_image = AmiBackend.create_image

    def create_image(self, instance_id, name, description, tag_specifications):
        snapshot_tags = [t for spec in tag_specifications if spec.get("ResourceType") == "snapshot"
                         for t in spec.get("Tags", [])]
        ami = moto_create_image(self, instance_id, name, description,
                                [spec for spec in tag_specifications if spec.get("ResourceType") != "snapshot"])
        snapshot = getattr(ami, "ebs_snapshot", None)
        for tag in snapshot_tags if snapshot is not None else []:
            snapshot.add_tag(tag["Key"], tag["Value"])
        return ami

    _set(AmiBackend, "create_image", create_image)
    return _uninstall


#: what this host's machines run (an instance is a container: it shares the host's kernel)
HOST_ARCHITECTURE = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def runnable(backend, image_id: str | None, kwargs: dict) -> None:
    """Raise EC2's error for a RunInstances no machine could run (the template's values count)."""
    from moto.ec2.exceptions import EC2ClientError, InvalidAMIIdError
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    template = backend._get_template_from_args(kwargs["launch_template"]).data if kwargs.get("launch_template") else {}
    image_id = image_id or template.get("ImageId")
    instance_type = kwargs.get("instance_type", "m1.small")
    if kwargs.get("is_instance_type_default", True) and template.get("InstanceType"):
        instance_type = template["InstanceType"]
    image = backend.amis.get(image_id) if image_id else None
    if image is None:
        raise InvalidAMIIdError(image_id or "")
    info = INSTANCE_TYPES.get(instance_type)
    if info is None:
        raise EC2ClientError("InvalidParameterValue", f"Invalid value '{instance_type}' for InstanceType.")
    type_archs = info.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"])
    image_arch = image.architecture or "x86_64"
    if image_arch not in type_archs:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"The architecture '{type_archs[0]}' of the specified instance type does not match the architecture "
            f"'{image_arch}' of the specified AMI. Specify an instance type and an AMI that have matching "
            "architectures, and try again.")
    if (image.platform or "").lower() == "windows":
        raise EC2ClientError("Unsupported", f"The requested configuration is currently not supported: the local "
                                            f"cloud runs Linux images only, and {image_id} is a Windows image.")
    if HOST_ARCHITECTURE not in type_archs:
        raise EC2ClientError("Unsupported", f"The requested configuration is currently not supported: the local "
                                            f"cloud runs {HOST_ARCHITECTURE} instances only, and {instance_type} "
                                            f"is {'/'.join(type_archs)}.")


#: on a VPC object: the local cloud gave this default VPC its internet gateway (once, ever)
_GIVEN_IGW = "bakery_internet_gateway_given"


def _install_gateways() -> None:
    from moto.ec2.exceptions import InvalidParameterValueError
    from moto.ec2.models import nat_gateways, vpcs
    from moto.ec2.models.elastic_ip_addresses import ElasticAddress, ElasticAddressBackend
    from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses

    moto_default_vpc = vpcs.VPCBackend.create_default_vpc

    def create_default_vpc(self):
        vpc = moto_default_vpc(self)
        _give_internet_gateway(self, vpc)
        return vpc

    _set(vpcs.VPCBackend, "create_default_vpc", create_default_vpc)

    moto_nat_init, moto_nat_private_ip = nat_gateways.NatGateway.__init__, nat_gateways.random_private_ip

    def nat_init(self, backend, subnet_id: str, *args, **kwargs) -> None:
        token = _subnet_in_play.set(backend.get_subnet(subnet_id))
        try:
            moto_nat_init(self, backend, subnet_id, *args, **kwargs)
        finally:
            _subnet_in_play.reset(token)

    def nat_private_ip(cidr=None, ipv6=False) -> str:
        subnet = _subnet_in_play.get()
        if subnet is None or cidr or ipv6:
            return moto_nat_private_ip(cidr, ipv6)
        return subnet.get_available_subnet_ip(instance=None)

    _set(nat_gateways.NatGateway, "__init__", nat_init)
    _set(nat_gateways, "random_private_ip", nat_private_ip)

    moto_associate = ElasticIPAddresses.associate_address

    def associate_address(self):
        """moto's association, on the private IP asked for (one of the ENI's, else EC2's error)."""
        private_ip = self._get_param("PrivateIpAddress")
        if private_ip:
            if "NetworkInterfaceId" in self._get_params():
                eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
            else:
                eni = self.ec2_backend.get_instance(self._get_param("InstanceId")).nics[0]
            if private_ip not in _addresses(eni):
                raise InvalidParameterValueError(f"PrivateIpAddress {private_ip} is not an address of {eni.id}")
        result = moto_associate(self)
        eip = next((a for a in self.ec2_backend.addresses if a.association_id == result.result.get("AssociationId")), None)
        if eip is not None:
            eip.bakery_private_ip = private_ip or None
        return result

    def eip_private_ip(self) -> str | None:
        if self.eni is None:
            return None
        chosen = getattr(self, "bakery_private_ip", None)
        return chosen if chosen in _addresses(self.eni) else self.eni.private_ip_address

    moto_backend_associate = ElasticAddressBackend.associate_address

    def backend_associate(self, instance=None, eni=None, address=None, allocation_id=None, reassociate=False):
        """As a disassociation would, first: the ENI the address leaves shows it no more (and gets an
        automatic public IP back if it had one)."""
        eips = self.address_by_ip([address]) if address else self.address_by_allocation([allocation_id])
        before = eips[0].eni if eips else None
        eip = moto_backend_associate(self, instance=instance, eni=eni, address=address, allocation_id=allocation_id,
                                     reassociate=reassociate)
        if before is not None and before is not eip.eni and before.public_ip == eip.public_ip:
            before.public_ip = None
            if before.instance is not None and M.state(before.instance) == "running":
                before.check_auto_public_ip()
        return eip

    _set(ElasticAddressBackend, "associate_address", backend_associate)
    _set(ElasticIPAddresses, "associate_address", associate_address)
    _set(ElasticAddress, "private_ip_address", property(eip_private_ip))


def give_default_vpcs_internet_gateways() -> None:
    """A state saved before default VPCs had their internet gateway: give each one (once: one
    detached since stays detached)."""
    for backend in M.backends():
        vpc = backend.get_default_vpc()
        if vpc is not None and not getattr(vpc, _GIVEN_IGW, False):
            _give_internet_gateway(backend, vpc)


def _give_internet_gateway(backend, vpc) -> None:
    """As in every account: an internet gateway attached to the default VPC, and its main route
    table's default route to it (unless the VPC already has either)."""
    igw = next((g for g in list(backend.internet_gateways.values()) if g.vpc is not None and g.vpc.id == vpc.id), None)
    if igw is None:
        igw = backend.create_internet_gateway()
        backend.attach_internet_gateway(igw.id, vpc.id)
    main = next((t for t in list(backend.route_tables.values())
                 if t.vpc_id == vpc.id and t.main_association_id is not None), None)
    if main is not None and not any(r.destination_cidr_block == "0.0.0.0/0" for r in main.routes):
        backend.create_route(main.id, "0.0.0.0/0", gateway_id=igw.id)
    setattr(vpc, _GIVEN_IGW, True)


_installed: list[tuple[object, str, object]] = []


_ABSENT = object()  # what moto did not have: removed again on uninstall


def _set(owner: object, name: str, value: object) -> None:
    _installed.append((owner, name, getattr(owner, name, _ABSENT)))
    setattr(owner, name, value)


def _uninstall() -> None:
    while _installed:
        owner, name, original = _installed.pop()
        if original is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


#: (instance id, its console) read by the control plane before it let a GetConsoleOutput into moto:
#: reading a running machine's console asks its systemd (seconds at worst), which must not hold up
#: every other request while moto answers one at a time (control.py OneRequestAtATime)
console_read: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("console_read", default=None)

#: the subnet whose ENI is being given addresses (moto's address helper is told only the CIDR)
_subnet_in_play: contextvars.ContextVar = contextvars.ContextVar("subnet_in_play", default=None)


def _addresses(eni) -> list[str]:
    return [a["PrivateIpAddress"] for a in list(eni.private_ip_addresses) if a.get("PrivateIpAddress")]


def _take(eni) -> None:
    """Every address the ENI holds is taken in its subnet (the instance allocator skips it)."""
    for ip in _addresses(eni):
        if ip not in eni.subnet._subnet_ips:
            try:
                eni.subnet.request_ip(ip, instance=None)
            except Exception:  # noqa: BLE001 - outside the CIDR: moto's own validation answers the client
                pass


def _public_address() -> str:
    """A free address of the documentation ranges (not held by an Elastic IP or an ENI, and not one
    this machine really reaches: internet.reserved)."""
    taken = M.public_addresses()
    pool = [ipaddress.IPv4Network(r) for r in PUBLIC_RANGES]
    for _ in range(64):  # a random pick first, as EC2's addresses look; the pool is ~760 addresses
        net = random.choice(pool)
        candidate = str(net[random.randrange(1, net.num_addresses - 1)])
        if candidate not in taken and not is_reserved(candidate, wait=5.0):
            return candidate
    for net in pool:
        for host in net.hosts():
            if str(host) not in taken and not is_reserved(str(host)):
                return str(host)
    raise RuntimeError("the local cloud's public address pool (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) is used up")
