"""The local endpoint's corrections to moto, on moto alone (no machines): addresses as EC2 hands
them out, instances without a subnet in their zone's default subnet, a restored subnet that goes
on where it stopped, the default VPC's internet gateway, Elastic IPs on the private address asked
for, NAT gateways' addresses from their subnet."""

from __future__ import annotations

import ipaddress

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from bakery.local import moto_extensions
from bakery.local import moto_state as M
from bakery.local.cloud import LocalCloud
from bakery.local.persist import Snapshots
from bakery.local.vpcnet import PUBLIC_RANGES


@pytest.fixture
def ec2(tmp_path):
    with mock_aws():
        undo = moto_extensions.install(LocalCloud(tmp_path))
        try:
            yield boto3.client("ec2", region_name="us-east-1")
        finally:
            undo()


def image(ec2, architecture: str = "x86_64", platform: str | None = None) -> str:
    """One of moto's default images (RegisterImage keeps no architecture)."""
    return next(i["ImageId"] for i in ec2.describe_images(Owners=["amazon"])["Images"]
                if i.get("Architecture") == architecture and i.get("Platform") == platform)


def subnet(ec2, cidr: str) -> str:
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    return ec2.create_subnet(VpcId=vpc, CidrBlock=cidr)["Subnet"]["SubnetId"]


def usable(cidr: str, ip: str) -> bool:
    """In the subnet and not one of the five addresses EC2 reserves."""
    net = ipaddress.ip_network(cidr)
    return ipaddress.ip_address(ip) in net and net.network_address + 3 < ipaddress.ip_address(ip) < net[-1]


def test_every_private_address_ec2_picks_is_unique_and_not_reserved(ec2):
    sub = subnet(ec2, "10.9.1.0/28")  # 11 usable addresses: collisions would show
    ips = []
    for _ in range(3):
        inst = ec2.run_instances(ImageId=image(ec2), MinCount=1, MaxCount=1,
                                 NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": sub},
                                                    {"DeviceIndex": 1, "SubnetId": sub}])["Instances"][0]
        ips += [n["PrivateIpAddress"] for n in inst["NetworkInterfaces"]]
    eni = ec2.create_network_interface(SubnetId=sub)["NetworkInterface"]["NetworkInterfaceId"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=2)
    ips += [a["PrivateIpAddress"] for a in
            ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]["PrivateIpAddresses"]]
    assert len(ips) == len(set(ips)) == 9
    assert all(usable("10.9.1.0/28", ip) for ip in ips), ips


def test_an_address_let_go_can_be_handed_out_again(ec2):
    sub = subnet(ec2, "10.9.1.0/28")
    eni = ec2.create_network_interface(SubnetId=sub)["NetworkInterface"]["NetworkInterfaceId"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, SecondaryPrivateIpAddressCount=7)
    held = [a["PrivateIpAddress"] for a in
            ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]["PrivateIpAddresses"]]
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=[held[-1]])
    again = ec2.create_network_interface(SubnetId=sub)["NetworkInterface"]["PrivateIpAddress"]
    assert again == held[-1]


def test_an_instance_without_a_subnet_goes_into_its_zones_default_subnet_with_a_documentation_public_ip(ec2):
    inst = ec2.run_instances(ImageId=image(ec2), MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": "us-east-1b"})["Instances"][0]
    sub = ec2.describe_subnets(SubnetIds=[inst["SubnetId"]])["Subnets"][0]
    assert sub["DefaultForAz"] and sub["AvailabilityZone"] == "us-east-1b"
    assert usable(sub["CidrBlock"], inst["PrivateIpAddress"])
    docs = [ipaddress.ip_network(r) for r in PUBLIC_RANGES]
    assert any(ipaddress.ip_address(inst["PublicIpAddress"]) in net for net in docs)
    eips = {ec2.allocate_address(Domain="vpc")["PublicIp"] for _ in range(20)}
    assert len(eips) == 20 and all(any(ipaddress.ip_address(ip) in net for net in docs) for ip in eips)


def test_a_restored_subnet_goes_on_past_the_addresses_it_gave_out(ec2, tmp_path):
    sub = subnet(ec2, "10.9.1.0/24")

    def run() -> str:
        return ec2.run_instances(ImageId=image(ec2), MinCount=1, MaxCount=1,
                                 NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": sub}])["Instances"][0]["PrivateIpAddress"]

    before = [run() for _ in range(3)]
    snapshots = Snapshots(tmp_path / "state.pkl")
    snapshots.save()
    assert snapshots.restore()
    M.resume_address_allocation()
    after = [run() for _ in range(2)]
    assert all(usable("10.9.1.0/24", ip) for ip in after) and not set(after) & set(before), (before, after)


def refusal(ec2, **kwargs) -> tuple[str, str]:
    before = len(ec2.describe_instances()["Reservations"])
    with pytest.raises(ClientError) as caught:
        ec2.run_instances(MinCount=1, MaxCount=1, **kwargs)
    assert len(ec2.describe_instances()["Reservations"]) == before  # nothing half-made
    return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]


def test_run_instances_refuses_what_no_local_machine_could_run_with_ec2s_errors(ec2):
    x86, arm = image(ec2), image(ec2, "arm64")
    assert refusal(ec2, ImageId="ami-0123456789abcdef0", InstanceType="t3.micro") == (
        "InvalidAMIID.NotFound", "The image id '[ami-0123456789abcdef0]' does not exist")
    assert refusal(ec2, ImageId=x86, InstanceType="zz9.large") == (
        "InvalidParameterValue", "Invalid value 'zz9.large' for InstanceType.")
    code, message = refusal(ec2, ImageId=arm, InstanceType="t3.micro")
    assert code == "InvalidParameterValue" and "architecture 'x86_64' of the specified instance type does not match " \
        "the architecture 'arm64' of the specified AMI" in message
    # an arm64 image on an arm64 type is EC2-valid, but this host's machines are x86_64
    code, message = refusal(ec2, ImageId=arm, InstanceType="t4g.micro")
    assert code == "Unsupported" and "runs x86_64 instances only, and t4g.micro is arm64" in message
    # a launch template's image and type count as if given
    template = ec2.create_launch_template(LaunchTemplateName="arm", LaunchTemplateData={
        "ImageId": arm, "InstanceType": "t4g.micro"})["LaunchTemplate"]["LaunchTemplateId"]
    assert refusal(ec2, LaunchTemplate={"LaunchTemplateId": template})[0] == "Unsupported"
    code, message = refusal(ec2, ImageId=image(ec2, platform="windows"), InstanceType="t3.micro")
    assert code == "Unsupported" and "Linux images only" in message
    # what a machine can run still runs
    assert ec2.run_instances(ImageId=x86, InstanceType="t3.micro", MinCount=1, MaxCount=1)["Instances"]


def test_the_default_vpc_reaches_the_internet_through_its_own_internet_gateway(ec2):
    vpc = next(v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v["IsDefault"])
    igws = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc]}])["InternetGateways"]
    assert len(igws) == 1
    main = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                              {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]
    assert {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": igws[0]["InternetGatewayId"]}.items() <= \
        next(r for r in main["Routes"] if r["DestinationCidrBlock"] == "0.0.0.0/0").items()


def test_a_default_vpc_from_a_state_saved_before_gets_its_internet_gateway_once(ec2):
    ec2.describe_vpcs()  # moto makes a region's backend at its first request
    backend = M.backends()[0]
    vpc = backend.get_default_vpc()
    igw = next(g for g in backend.internet_gateways.values() if g.vpc is vpc)
    main = next(t for t in backend.route_tables.values() if t.vpc_id == vpc.id and t.main_association_id)
    main._routes = {k: r for k, r in main._routes.items() if r.destination_cidr_block != "0.0.0.0/0"}
    backend.detach_internet_gateway(igw.id, vpc.id)
    del vpc.bakery_internet_gateway_given  # as a VPC saved before the local endpoint gave them
    moto_extensions.give_default_vpcs_internet_gateways()
    assert [g.vpc for g in backend.internet_gateways.values()].count(vpc) == 1
    assert any(r.destination_cidr_block == "0.0.0.0/0" for r in main.routes)
    attached = next(g for g in backend.internet_gateways.values() if g.vpc is vpc)
    ec2.detach_internet_gateway(InternetGatewayId=attached.id, VpcId=vpc.id)  # a user's choice: it stays so
    moto_extensions.give_default_vpcs_internet_gateways()
    assert vpc not in [g.vpc for g in backend.internet_gateways.values()]


def test_a_nat_gateways_address_comes_from_its_subnet(ec2):
    sub = subnet(ec2, "10.9.1.0/28")
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=sub, AllocationId=eip)["NatGateway"]
    assert usable("10.9.1.0/28", nat["NatGatewayAddresses"][0]["PrivateIp"])


def test_an_elastic_ip_is_on_the_private_address_it_was_associated_with_and_leaves_the_eni_it_moves_from(ec2):
    sub = subnet(ec2, "10.9.1.0/24")
    eni = ec2.create_network_interface(SubnetId=sub, PrivateIpAddress="10.9.1.20")["NetworkInterface"][
        "NetworkInterfaceId"]
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni, PrivateIpAddresses=["10.9.1.21"])
    other = ec2.create_network_interface(SubnetId=sub, PrivateIpAddress="10.9.1.30")["NetworkInterface"][
        "NetworkInterfaceId"]
    eip = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=eip["AllocationId"], NetworkInterfaceId=eni, PrivateIpAddress="10.9.1.21")
    assert ec2.describe_addresses()["Addresses"][0]["PrivateIpAddress"] == "10.9.1.21"
    with pytest.raises(ec2.exceptions.ClientError, match="InvalidParameterValue"):
        ec2.associate_address(AllocationId=eip["AllocationId"], NetworkInterfaceId=eni,
                              PrivateIpAddress="10.9.1.99", AllowReassociation=True)
    ec2.associate_address(AllocationId=eip["AllocationId"], NetworkInterfaceId=other, AllowReassociation=True)
    assert ec2.describe_addresses()["Addresses"][0]["PrivateIpAddress"] == "10.9.1.30"
    first = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]
    assert "Association" not in first  # moto kept showing the address on both


def test_public_addresses_avoid_what_this_machine_reaches_in_the_documentation_ranges(ec2):
    from bakery.local.internet import INTERNET_HOST, is_reserved, reserved

    assert is_reserved(INTERNET_HOST) and all(any(n.overlaps(ipaddress.ip_network(r)) for r in PUBLIC_RANGES)
                                              for n in reserved())
    eips = [ec2.allocate_address(Domain="vpc")["PublicIp"] for _ in range(40)]
    assert not [ip for ip in eips if is_reserved(ip)]


def test_launch_template_versions_are_deleted_as_ec2_deletes_them_except_the_default(ec2):
    """moto has no DeleteLaunchTemplateVersions; the local endpoint answers it as EC2 does."""
    ec2.create_launch_template(LaunchTemplateName="web-lt", LaunchTemplateData={"InstanceType": "t3.micro"})
    for kind in ("t3.small", "t3.medium"):
        ec2.create_launch_template_version(LaunchTemplateName="web-lt", LaunchTemplateData={"InstanceType": kind})
    out = ec2.delete_launch_template_versions(LaunchTemplateName="web-lt", Versions=["2", "1", "9"])
    assert [v["VersionNumber"] for v in out["SuccessfullyDeletedLaunchTemplateVersions"]] == [2]
    assert {v["VersionNumber"]: v["ResponseError"]["Code"] for v in out["UnsuccessfullyDeletedLaunchTemplateVersions"]} \
        == {1: "unexpectedError", 9: "launchTemplateVersionDoesNotExist"}
    left = ec2.describe_launch_template_versions(LaunchTemplateName="web-lt")["LaunchTemplateVersions"]
    assert sorted(v["VersionNumber"] for v in left) == [1, 3]
    again = ec2.delete_launch_template_versions(LaunchTemplateName="web-lt", Versions=["2"])
    assert again["UnsuccessfullyDeletedLaunchTemplateVersions"][0]["ResponseError"]["Code"] == \
        "launchTemplateVersionDoesNotExist"


def test_create_image_tags_its_snapshots_when_asked_as_ec2_does(ec2):
    """moto raises NotImplementedError for a snapshot TagSpecification; bakery's IAM policy needs
    the snapshots tagged at creation, so the local endpoint does it."""
    iid = ec2.run_instances(ImageId=image(ec2), MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=iid, Name="tagged", TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": "bakery:recipe", "Value": "web"}]},
        {"ResourceType": "snapshot", "Tags": [{"Key": "bakery:recipe", "Value": "web"}]}])["ImageId"]
    [found] = ec2.describe_images(ImageIds=[ami])["Images"]
    snapshot = found["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    tags = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0].get("Tags", [])
    assert {"Key": "bakery:recipe", "Value": "web"} in tags and found["Tags"] == [{"Key": "bakery:recipe", "Value": "web"}]


def test_copy_image_tags_the_copy_and_its_snapshots_when_asked_as_ec2_does(ec2):
    """moto ignores CopyImage's TagSpecifications; bakery tags region copies at creation so the
    janitor finds a killed run's copies, so the local endpoint tags them."""
    iid = ec2.run_instances(ImageId=image(ec2), MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=iid, Name="source")["ImageId"]
    tag = [{"Key": "bakery:run-id", "Value": "42"}]
    west = boto3.client("ec2", region_name="us-west-2")
    copy = west.copy_image(SourceImageId=ami, SourceRegion="us-east-1", Name="copy", TagSpecifications=[
        {"ResourceType": "image", "Tags": tag}, {"ResourceType": "snapshot", "Tags": tag}])["ImageId"]
    [found] = west.describe_images(ImageIds=[copy])["Images"]
    snapshot = found["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert found["Tags"] == tag and west.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["Tags"] == tag
