"""EC2 networking calls: VPCs, subnets, security groups, network ACLs, Elastic IPs, ENIs, internet
and NAT gateways, route tables.

A mixin of the EC2 facade (bakery/cloud/ec2.py): every method goes through `self.call` or
`self.describe_all`, so errors are mapped and retried in one place. What is API-level stays
here: request shapes, protocol numbers, an endpoint's quirks, and which error codes mean
"already done". What a name in an environment means is bakery/network's.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from bakery.cloud.tags import network_filters, tag_specs, tags_of
from bakery.config.ec2data import InterfaceLimits
from bakery.errors import CloudError, ConfigError
from bakery.waits import Backoff, wait_for

# Each kind of declared network resource (the KIND of a NETWORK_NAME tag): its Describe*, the
# response's list and the id field of an item
KINDS = {"vpc": ("describe_vpcs", "Vpcs", "VpcId"),
         "subnet": ("describe_subnets", "Subnets", "SubnetId"),
         "sg": ("describe_security_groups", "SecurityGroups", "GroupId"),
         "acl": ("describe_network_acls", "NetworkAcls", "NetworkAclId"),
         "eip": ("describe_addresses", "Addresses", "AllocationId"),
         "eni": ("describe_network_interfaces", "NetworkInterfaces", "NetworkInterfaceId"),
         "igw": ("describe_internet_gateways", "InternetGateways", "InternetGatewayId"),
         "nat": ("describe_nat_gateways", "NatGateways", "NatGatewayId"),
         "rtb": ("describe_route_tables", "RouteTables", "RouteTableId")}
IP_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "all": "-1"}   # security group rules
ACL_PROTOCOLS = {"tcp": "6", "udp": "17", "icmp": "1", "all": "-1"}        # network ACL entries


def field_filter(name: str, *values: str) -> dict:
    """A Describe* filter on a field (subnet-id, vpc-id, ...); tags.tag_filter is the one on a tag."""
    return {"Name": name, "Values": list(values)}


class VpcAPI:
    """Networking operations of the EC2 facade."""

    # ---- finding ------------------------------------------------------------------------

    def find_tagged(self, kind: str, env: str, name: str) -> dict | None:
        """The network resource `network.up` made for KIND/NAME of an environment, if any."""
        operation, key, _ = KINDS[kind]
        filters = network_filters(env, kind, name)
        found = self.nat_gateways(*filters) if kind == "nat" else self._describe(operation, key, filters)
        return found[0] if found else None

    def find_tagged_id(self, kind: str, env: str, name: str) -> str | None:
        """The id (the allocation id of an Elastic IP) of what `find_tagged` finds."""
        found = self.find_tagged(kind, env, name)
        return found[KINDS[kind][2]] if found else None

    def subnets(self, *filters: dict, ids: list[str] | None = None) -> list[dict]:
        return self._describe("describe_subnets", "Subnets", filters, SubnetIds=ids)

    def subnet(self, subnet_id: str) -> dict:
        return self.subnets(ids=[subnet_id])[0]

    def default_subnet(self, where: str) -> dict:
        """The default VPC's first default subnet (by AZ): where an instance goes when nothing says."""
        subnets = sorted(self.subnets(field_filter("default-for-az", "true")),
                         key=lambda s: (s.get("AvailabilityZone", ""), s["SubnetId"]))
        if not subnets:
            raise ConfigError(f"{where}: not set and region {self.region} has no default VPC; set it to a subnet id")
        return subnets[0]

    def security_groups(self, *filters: dict) -> list[dict]:
        return self._describe("describe_security_groups", "SecurityGroups", filters)

    def network_interfaces(self, *filters: dict, ids: list[str] | None = None) -> list[dict]:
        return self._describe("describe_network_interfaces", "NetworkInterfaces", filters, NetworkInterfaceIds=ids)

    def network_interface(self, eni_id: str) -> dict:
        return self.network_interfaces(ids=[eni_id])[0]

    def addresses(self, *filters: dict) -> list[dict]:
        return self._describe("describe_addresses", "Addresses", filters)

    def instance_type_network_limits(self, itype: str) -> InterfaceLimits:
        resp = self.call("describe-instance-types", self.client.describe_instance_types, InstanceTypes=[itype])
        info = resp["InstanceTypes"][0]["NetworkInfo"]
        return InterfaceLimits(info["MaximumNetworkInterfaces"], info["Ipv4AddressesPerInterface"])

    def _describe(self, operation: str, key: str, filters: Iterable[dict], **ids: list[str] | None) -> list[dict]:
        kw = {name: value for name, value in ids.items() if value}
        if filters:
            kw["Filters"] = list(filters)
        return self.call(operation.replace("_", "-"), getattr(self.client, operation), **kw)[key]

    # ---- VPC, subnets -------------------------------------------------------------------

    def create_vpc(self, cidr: str, tags: dict[str, str]) -> str:
        resp = self.call("create-vpc", self.client.create_vpc, CidrBlock=cidr, TagSpecifications=tag_specs(tags, "vpc"))
        return resp["Vpc"]["VpcId"]

    def create_subnet(self, vpc_id: str, cidr: str, tags: dict[str, str], *, az: str | None = None,
                      public: bool = False) -> str:
        """A subnet; a public one gives its instances a public IP unless their interface says otherwise."""
        kw = {"AvailabilityZone": az} if az else {}
        subnet_id = self.call("create-subnet", self.client.create_subnet, VpcId=vpc_id, CidrBlock=cidr,
                              TagSpecifications=tag_specs(tags, "subnet"), **kw)["Subnet"]["SubnetId"]
        if public:
            self.call("modify-subnet-attribute", self.client.modify_subnet_attribute, SubnetId=subnet_id,
                      MapPublicIpOnLaunch={"Value": True})
        return subnet_id

    # ---- security groups ----------------------------------------------------------------

    def authorize(self, group_id: str, *, egress: bool, protocol: str, ports: tuple[int, int],
                  cidr: str | None = None, source_group: str | None = None, description: str = "") -> bool:
        """Allow one rule (from a CIDR or from another group); False when it was already there."""
        low, high = ports
        permission: dict = {"IpProtocol": IP_PROTOCOLS[protocol], "FromPort": low, "ToPort": high}
        if cidr:
            permission["IpRanges"] = [{"CidrIp": cidr, "Description": description}]
        else:
            permission["UserIdGroupPairs"] = [{"GroupId": source_group, "Description": description}]
        call = self.client.authorize_security_group_egress if egress else self.client.authorize_security_group_ingress
        try:
            self.call("authorize-security-group-rule", call, GroupId=group_id, IpPermissions=[permission])
        except CloudError as exc:
            if self.code_of(exc) != "InvalidPermission.Duplicate":
                raise
            return False  # already there: authorizing is idempotent
        return True

    def revoke_default_egress(self, group_id: str) -> bool:
        """Remove EC2's default rule of a new group (all traffic out to 0.0.0.0/0), so the group's
        egress is what was authorized and no more; False when it was not there."""
        try:
            self.call("revoke-security-group-egress", self.client.revoke_security_group_egress, GroupId=group_id,
                      IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        except CloudError as exc:
            if self.code_of(exc) != "InvalidPermission.NotFound":
                raise
            return False
        return True

    # ---- network ACLs -------------------------------------------------------------------

    def create_network_acl(self, vpc_id: str, tags: dict[str, str]) -> str:
        resp = self.call("create-network-acl", self.client.create_network_acl, VpcId=vpc_id,
                         TagSpecifications=tag_specs(tags, "network-acl"))
        return resp["NetworkAcl"]["NetworkAclId"]

    def add_network_acl_entry(self, acl_id: str, *, rule: int, action: str, egress: bool, protocol: str,
                              cidr: str, ports: tuple[int, int]) -> None:
        """One numbered entry; `ports` counts for tcp and udp only."""
        low, high = ports
        kw = {"PortRange": {"From": low, "To": high}} if protocol in ("tcp", "udp") else {}
        self.call("create-network-acl-entry", self.client.create_network_acl_entry, NetworkAclId=acl_id,
                  RuleNumber=rule, Protocol=ACL_PROTOCOLS[protocol], RuleAction=action, Egress=egress,
                  CidrBlock=cidr, **kw)

    def network_acl(self, acl_id: str) -> dict | None:
        found = self._describe("describe_network_acls", "NetworkAcls", [], NetworkAclIds=[acl_id])
        return found[0] if found else None

    def associate_network_acl(self, acl_id: str, subnet_id: str) -> None:
        """Make the ACL the subnet's: a subnet always has one, so its association is replaced."""
        current = self._describe("describe_network_acls", "NetworkAcls",
                                 [field_filter("association.subnet-id", subnet_id)])
        for acl in current:
            for assoc in acl.get("Associations", []):
                if assoc.get("SubnetId") == subnet_id:
                    self.call("replace-network-acl-association", self.client.replace_network_acl_association,
                              AssociationId=assoc["NetworkAclAssociationId"], NetworkAclId=acl_id)

    # ---- Elastic IPs --------------------------------------------------------------------

    def allocate_address(self, tags: dict[str, str]) -> str:
        """A VPC Elastic IP; its allocation id."""
        resp = self.call("allocate-address", self.client.allocate_address, Domain="vpc",
                         TagSpecifications=tag_specs(tags, "elastic-ip"))
        return resp["AllocationId"]

    def associate_address(self, allocation_id: str, eni_id: str, private_ip: str | None) -> None:
        """Put the Elastic IP on one address of an ENI, taking it from wherever it is."""
        self.call("associate-address", self.client.associate_address, AllocationId=allocation_id,
                  NetworkInterfaceId=eni_id, PrivateIpAddress=private_ip, AllowReassociation=True)

    def disassociate_address(self, association_id: str) -> None:
        self.call("disassociate-address", self.client.disassociate_address, AssociationId=association_id)

    # ---- internet gateways, NAT gateways, route tables ------------------------------------

    def internet_gateway_of(self, vpc_id: str) -> str | None:
        """The internet gateway attached to the VPC, if any (a VPC has at most one)."""
        found = self._describe("describe_internet_gateways", "InternetGateways",
                               [field_filter("attachment.vpc-id", vpc_id)])
        return found[0]["InternetGatewayId"] if found else None

    def create_internet_gateway(self, vpc_id: str, tags: dict[str, str]) -> str:
        """An internet gateway, attached to the VPC."""
        igw = self.call("create-internet-gateway", self.client.create_internet_gateway,
                        TagSpecifications=tag_specs(tags, "internet-gateway"))["InternetGateway"]["InternetGatewayId"]
        self.call("attach-internet-gateway", self.client.attach_internet_gateway, InternetGatewayId=igw, VpcId=vpc_id)
        return igw

    def nat_gateways(self, *filters: dict) -> list[dict]:
        """NAT gateways that exist (pending or available: a deleted one stays listed for an hour),
        matching every tag filter, checked here too (some endpoints, moto, ignore them)."""
        found = self.call("describe-nat-gateways", self.client.describe_nat_gateways, Filter=list(filters))["NatGateways"]
        wanted = {f["Name"][4:]: f["Values"] for f in filters if f["Name"].startswith("tag:")}
        return [n for n in found if n.get("State") in ("pending", "available")
                and all(tags_of(n).get(key) in values for key, values in wanted.items())]

    def create_nat_gateway(self, subnet_id: str, allocation_id: str, tags: dict[str, str],
                           timeout: float = 600) -> str:
        """A public NAT gateway in the subnet with this Elastic IP, once it is available (EC2 takes
        a minute or two: routes to it carry nothing before)."""
        nat = self.call("create-nat-gateway", self.client.create_nat_gateway, SubnetId=subnet_id,
                        AllocationId=allocation_id, TagSpecifications=tag_specs(tags, "natgateway"))["NatGateway"]
        nat_id = nat["NatGatewayId"]

        def check():
            found = self.call("describe-nat-gateways", self.client.describe_nat_gateways,
                              NatGatewayIds=[nat_id])["NatGateways"]
            state = found[0].get("State") if found else "missing"
            if state in ("failed", "deleting", "deleted", "missing"):
                reason = found[0].get("FailureMessage", "") if found else ""
                raise CloudError(f"NAT gateway {nat_id} is {state}{f': {reason}' if reason else ''}")
            return found[0] if state == "available" else None
        wait_for(check, what=f"NAT gateway {nat_id} to become available", timeout=timeout,
                 backoff=Backoff(initial=0.2, max_interval=10))
        return nat_id

    def create_route_table(self, vpc_id: str, tags: dict[str, str]) -> str:
        resp = self.call("create-route-table", self.client.create_route_table, VpcId=vpc_id,
                         TagSpecifications=tag_specs(tags, "route-table"))
        return resp["RouteTable"]["RouteTableId"]

    def create_route(self, route_table_id: str, cidr: str, *, internet_gateway: str | None = None,
                     nat_gateway: str | None = None) -> None:
        """One route: to an internet gateway or to a NAT gateway."""
        target = {"GatewayId": internet_gateway} if internet_gateway else {"NatGatewayId": nat_gateway}
        self.call("create-route", self.client.create_route, RouteTableId=route_table_id,
                  DestinationCidrBlock=cidr, **target)

    def associate_route_table(self, route_table_id: str, subnet_id: str) -> None:
        """Make the route table the subnet's: one it is explicitly associated with is replaced."""
        current = self._describe("describe_route_tables", "RouteTables",
                                 [field_filter("association.subnet-id", subnet_id)])
        for table in current:
            for assoc in table.get("Associations", []):
                if assoc.get("SubnetId") == subnet_id and not assoc.get("Main"):
                    if table["RouteTableId"] != route_table_id:
                        self.call("replace-route-table-association", self.client.replace_route_table_association,
                                  AssociationId=assoc["RouteTableAssociationId"], RouteTableId=route_table_id)
                    return
        self.call("associate-route-table", self.client.associate_route_table, RouteTableId=route_table_id,
                  SubnetId=subnet_id)

    # ---- network interfaces -------------------------------------------------------------

    def create_network_interface(self, subnet_id: str, group_ids: list[str], description: str,
                                 tags: dict[str, str], *, private_ip: str | None = None,
                                 secondary_ips: Sequence[str] = (), secondary_ip_count: int = 0,
                                 source_dest_check: bool = True) -> str:
        """An ENI with its addresses and source/dest check as asked; its id."""
        kw: dict = {"PrivateIpAddress": private_ip} if private_ip else {}
        if secondary_ips:
            kw = {"PrivateIpAddresses": [{"PrivateIpAddress": private_ip, "Primary": True}] + [
                {"PrivateIpAddress": ip, "Primary": False} for ip in secondary_ips]}
        elif secondary_ip_count:
            kw["SecondaryPrivateIpAddressCount"] = secondary_ip_count
        eni = self.call("create-network-interface", self.client.create_network_interface, SubnetId=subnet_id,
                        Groups=group_ids, Description=description,
                        TagSpecifications=tag_specs(tags, "network-interface"), **kw)["NetworkInterface"]
        eni_id = eni["NetworkInterfaceId"]
        have = {a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])}
        missing = [ip for ip in secondary_ips if ip not in have]
        if missing:  # some endpoints (moto) ignore secondaries at create time
            self.assign_private_ips(eni_id, missing)
        if not source_dest_check:
            self.set_source_dest_check(eni_id, False)
        return eni_id

    def assign_private_ips(self, eni_id: str, ips: list[str] | None = None, *, count: int = 0) -> None:
        """Add these secondary addresses to an ENI, or `count` more that EC2 picks."""
        kw = {"PrivateIpAddresses": ips} if ips else {"SecondaryPrivateIpAddressCount": count}
        self.call("assign-private-ip-addresses", self.client.assign_private_ip_addresses,
                  NetworkInterfaceId=eni_id, **kw)

    def set_source_dest_check(self, eni_id: str, enabled: bool) -> None:
        self.call("modify-network-interface-attribute", self.client.modify_network_interface_attribute,
                  NetworkInterfaceId=eni_id, SourceDestCheck={"Value": enabled})

    def attach_network_interface(self, eni_id: str, instance_id: str, device_index: int) -> None:
        self.call("attach-network-interface", self.client.attach_network_interface, NetworkInterfaceId=eni_id,
                  InstanceId=instance_id, DeviceIndex=device_index)

    def detach_network_interface(self, attachment_id: str, *, force: bool) -> None:
        self.call("detach-network-interface", self.client.detach_network_interface,
                  AttachmentId=attachment_id, Force=force)
