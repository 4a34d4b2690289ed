"""`network.status`: every network interface and Elastic IP of an environment, as data
(bakery/cli/network.py renders it for people), with a warning for each idle Elastic IP (one a NAT
gateway holds is in use)."""

from __future__ import annotations

from bakery.cloud.tags import ENVIRONMENT, NETWORK_NAME, tag_filter, tags_of
from bakery.config.environment import Environment


def status(ec2, env: Environment) -> dict:
    """Every ENI and Elastic IP of the environment, with warnings about idle Elastic IPs."""
    mine = tag_filter(ENVIRONMENT, env.name)
    enis = ec2.network_interfaces(mine)
    # launch-time ENIs carry the instance's tags, not the network's: add those of the environment's instances
    instances = ec2.instances(mine)
    states = {i["InstanceId"]: i["State"]["Name"] for i in instances}
    seen = {e["NetworkInterfaceId"] for e in enis}
    others = sorted({nic["NetworkInterfaceId"] for i in instances for nic in i.get("NetworkInterfaces", [])} - seen)
    if others:
        enis += ec2.network_interfaces(ids=others)
    rows = [_interface(e) for e in sorted(enis, key=lambda e: (e.get("Attachment", {}).get("InstanceId", ""),
                                                               e.get("Attachment", {}).get("DeviceIndex", 0)))]
    eips, warnings = [], []
    holder = {r["eni"]: r["instance"] for r in rows}
    nat_of = {address.get("AllocationId"): nat["NatGatewayId"] for nat in ec2.nat_gateways(mine)
              for address in nat.get("NatGatewayAddresses", [])}
    for a in ec2.addresses(mine):
        name = tags_of(a).get(NETWORK_NAME, "").removeprefix("eip/")
        # An EIP on an ENI follows the ENI's attachment (some endpoints leave InstanceId empty).
        instance = a.get("InstanceId") or holder.get(a.get("NetworkInterfaceId"))
        nat = nat_of.get(a.get("AllocationId"))
        eips.append({"name": name, "public_ip": a.get("PublicIp"), "allocation": a.get("AllocationId"),
                     "eni": a.get("NetworkInterfaceId"), "private_ip": a.get("PrivateIpAddress"),
                     "instance": instance, **({"nat_gateway": nat} if nat else {})})
        if nat is None and (not instance or states.get(instance) != "running"):
            warnings.append(f"Elastic IP {name} ({a.get('PublicIp')}) is not attached to a running instance: "
                            "it is charged while idle")
    return {"environment": env.name, "interfaces": rows, "elastic_ips": eips, "warnings": warnings}


def _interface(e: dict) -> dict:
    tags = tags_of(e)
    att = e.get("Attachment") or {}
    return {"eni": e["NetworkInterfaceId"], "name": tags.get(NETWORK_NAME, "").removeprefix("eni/"),
            "persistent": NETWORK_NAME in tags, "subnet": e["SubnetId"], "mac": e.get("MacAddress"),
            "private_ips": [a["PrivateIpAddress"] for a in e.get("PrivateIpAddresses", [])],
            "groups": [g["GroupId"] for g in e.get("Groups", [])], "source_dest_check": e.get("SourceDestCheck"),
            "instance": att.get("InstanceId"), "device_index": att.get("DeviceIndex"),
            "attachment": att.get("Status", "detached"), "status": e.get("Status")}
