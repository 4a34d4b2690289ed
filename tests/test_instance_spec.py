"""One RunInstances request for every instance bakery starts, and one way to reach it.

The request fields a builder, a smoke instance and a tier instance depend on are pinned here,
client tokens included: a changed token formula would let two launchers of different versions
start two instances for one slot."""

from __future__ import annotations

import uuid

from bakery.cloud import tags as T
from bakery.cloud.instances import InstanceSpec, Nic, Volume, client_token
from bakery.remote.dial import Machine, Route, TcpDial


def spec(**kw) -> InstanceSpec:
    base = dict(image_id="ami-12345678", instance_types=("t3.micro", "t3.small"),
                nics=(Nic(0, "subnet-1", ("sg-1",), public_ip=True),), volume=Volume(8, "gp3", True, None, "/dev/xvda"),
                tags={"Name": "x", T.ROLE: "builder"}, token="b-1/builder")
    return InstanceSpec(**{**base, **kw})


def test_every_instance_requires_imdsv2_is_tagged_at_creation_and_names_its_volume():
    req = spec(imds_hop_limit=1, terminate_on_shutdown=True).request("t3.micro", "tok")
    assert req["MetadataOptions"] == {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}
    assert [t["ResourceType"] for t in req["TagSpecifications"]] == ["instance", "volume", "network-interface"]
    assert all(t["Tags"] == [{"Key": "Name", "Value": "x"}, {"Key": T.ROLE, "Value": "builder"}]
               for t in req["TagSpecifications"])
    assert req["BlockDeviceMappings"] == [{"DeviceName": "/dev/xvda", "Ebs": {
        "VolumeSize": 8, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}]
    assert req["NetworkInterfaces"] == [{"DeviceIndex": 0, "SubnetId": "subnet-1", "Groups": ["sg-1"],
                                         "DeleteOnTermination": True, "AssociatePublicIpAddress": True}]
    assert req["InstanceInitiatedShutdownBehavior"] == "terminate" and (req["MinCount"], req["MaxCount"]) == (1, 1)
    assert "UserData" not in req and "KeyName" not in req and "IamInstanceProfile" not in req


def test_client_tokens_keep_their_formulas():
    """A builder's token is per build, role and instance type (each fallback type is its own request);
    a tier slot's is the world it saw, alone, so concurrent launchers agree on it."""
    assert client_token("b-1/builder", "t3.small") == str(uuid.uuid5(uuid.NAMESPACE_URL, "bakery/b-1/builder/t3.small"))
    world = "prod/web/0/i-1,i-2/ami-1/abc"
    assert client_token(world) == str(uuid.uuid5(uuid.NAMESPACE_URL, f"bakery/{world}"))


def test_a_launch_template_says_what_run_instances_says_but_the_per_launch_tags():
    s = spec(instance_types=("t3.small",), user_data=b"#cloud-config\n", key_name="ops", instance_profile="web",
             imds_hop_limit=2, template_tags={T.ENVIRONMENT: "prod", T.TIER: "web"})
    data = s.template_data()
    req = s.request("t3.small", "tok")
    for key in ("ImageId", "InstanceType", "MetadataOptions", "BlockDeviceMappings", "KeyName", "IamInstanceProfile"):
        assert data[key] == req[key], key
    assert data["UserData"] == "I2Nsb3VkLWNvbmZpZwo="  # base64 that the caller encodes, unlike RunInstances
    assert data["SecurityGroupIds"] == ["sg-1"]
    assert [t["ResourceType"] for t in data["TagSpecifications"]] == ["instance", "volume"]
    assert data["TagSpecifications"][0]["Tags"] == [{"Key": T.ENVIRONMENT, "Value": "prod"}, {"Key": T.TIER, "Value": "web"}]


def test_the_tunnel_setting_reaches_builders_only_and_a_fleet_at_its_own_addresses():
    dial = TcpDial(tunnel_host="127.0.0.1", tunnel_ssh_port=2222)
    web = Machine("i-1", private_ip="10.0.1.5", public_ip="203.0.113.9")
    assert dial(web, 22, Route("public_ip", builder=True), ssh=True).where == "127.0.0.1:2222"
    assert dial(web, 80, Route("public_ip", builder=True)).where == "127.0.0.1:80"
    assert dial(web, 80, Route("private_ip")).where == "10.0.1.5:80"       # a launched instance's health check
    assert dial(web, 80, Route("public_ip")).host == "203.0.113.9"
    assert TcpDial()(web, 22, Route("host", host="bastion.local"), ssh=True).where == "bastion.local:22"


def test_an_instance_without_the_address_asked_for_is_one_error_naming_it():
    import pytest

    from bakery.errors import RemoteError

    with pytest.raises(RemoteError, match=r"^i-1 has no public ip to reach \(use interface: private_ip"):
        TcpDial()(Machine("i-1", "10.0.0.1"), 22, Route("public_ip", builder=True), ssh=True)
    with pytest.raises(RemoteError, match=r"^i-1 has no public ip to reach$"):
        TcpDial()(Machine("i-1", "10.0.0.1"), 80, Route("public_ip"))
