"""The instance metadata service inside every local instance, as EC2's: IMDSv2 sessions, tokens
required when the instance says so, the documented paths, an instance profile's credentials."""

from __future__ import annotations

import json

import boto3
import pytest

from bakery.bake.run import bake
from bakery.config.settings import Settings
from bakery.local.sandbox import Sandbox
from bakery.progress import Reporter
from tests.local.conftest import sandbox_recipe
from tests.support import write_recipe

pytestmark = pytest.mark.local

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl imds-test"
URL = "http://169.254.169.254"


@pytest.fixture(scope="module")
def world(cloud, tmp_path_factory):
    work = tmp_path_factory.mktemp("imds")
    write_recipe(work / "recipes", "meta", sandbox_recipe("{name: none, shell: 'true'}"))
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=work, recipes_dir=work / "recipes",
                        state_dir=work / "state")
    image = bake(settings, "meta", {}, report=Reporter(quiet=True)).ami_id
    kw = dict(endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1", aws_access_key_id="local",
              aws_secret_access_key="local")
    ec2, iam = boto3.client("ec2", **kw), boto3.client("iam", **kw)
    iam.create_role(RoleName="meta-role", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="meta-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="meta-profile", RoleName="meta-role")
    ec2.import_key_pair(KeyName="meta", PublicKeyMaterial=KEY.encode())
    return ec2, image


def launch(cloud, world, **options) -> Sandbox:
    ec2, image = world
    iid = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName="meta",
                            UserData="#cloud-config\n# the user data, as given\n", **options)["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    return Sandbox.attach(iid, cloud.instances_dir)


def curl(box: Sandbox, *args: str) -> tuple[str, str]:
    """(body, HTTP status) of curl run inside the instance."""
    out = box.exec(["curl", "-s", "-m", "5", "-w", "\n%{http_code}", *args], timeout=20).stdout
    body, _, status = out.rpartition("\n")
    return body, status


def token(box: Sandbox, ttl: int = 60) -> str:
    body, status = curl(box, "-X", "PUT", "-H", f"X-aws-ec2-metadata-token-ttl-seconds: {ttl}", f"{URL}/latest/api/token")
    assert status == "200"
    return body


def test_imdsv2_required_refuses_a_request_without_a_token_and_answers_with_one(cloud, world):
    box = launch(cloud, world, MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
                 IamInstanceProfile={"Name": "meta-profile"})
    try:
        assert curl(box, f"{URL}/latest/meta-data/instance-id") == ("Unauthorized", "401")
        assert curl(box, "-H", "X-aws-ec2-metadata-token: forged", f"{URL}/latest/meta-data/instance-id")[1] == "401"
        t = token(box)

        def get(path: str) -> str:
            body, status = curl(box, "-H", f"X-aws-ec2-metadata-token: {t}", f"{URL}/latest/{path}")
            assert status == "200", (path, body)
            return body

        ec2, image = world
        inst = ec2.describe_instances(InstanceIds=[box.name])["Reservations"][0]["Instances"][0]
        assert get("meta-data/instance-id") == box.name
        assert get("meta-data/ami-id") == image
        assert get("meta-data/instance-type") == "t3.micro"
        assert get("meta-data/local-ipv4") == inst["PrivateIpAddress"]
        mac = get("meta-data/mac")
        assert get("meta-data/network/interfaces/macs/") == f"{mac}/"
        assert get(f"meta-data/network/interfaces/macs/{mac}/local-ipv4s") == inst["PrivateIpAddress"]
        assert get(f"meta-data/network/interfaces/macs/{mac}/subnet-id") == inst["SubnetId"]
        assert get("meta-data/placement/availability-zone") == inst["Placement"]["AvailabilityZone"]
        assert get("meta-data/public-keys/") == "0=meta"
        assert get("meta-data/public-keys/0/openssh-key") == KEY
        assert get("user-data") == "#cloud-config\n# the user data, as given\n"
        assert json.loads(get("dynamic/instance-identity/document"))["instanceId"] == box.name
        assert get("meta-data/iam/security-credentials/") == "meta-role"
        creds = json.loads(get("meta-data/iam/security-credentials/meta-role"))
        assert creds["Code"] == "Success" and creds["AccessKeyId"] and creds["Token"]
        assert curl(box, "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 0", f"{URL}/latest/api/token")[1] == "400"
    finally:
        world[0].terminate_instances(InstanceIds=[box.name])


def test_with_tokens_optional_imdsv1_answers_and_without_a_profile_there_are_no_credentials(cloud, world):
    box = launch(cloud, world, MetadataOptions={"HttpTokens": "optional"})
    try:
        assert curl(box, f"{URL}/latest/meta-data/instance-id") == (box.name, "200")
        assert curl(box, f"{URL}/latest/meta-data/iam/security-credentials/")[1] == "404"
    finally:
        world[0].terminate_instances(InstanceIds=[box.name])


def test_cloud_init_finds_the_instance_through_its_ec2_datasource_and_the_service_lives_outside_it(cloud, world):
    """As on EC2: no seed on the disk, cloud-init's Ec2 datasource (platform aws, so IMDSv2 tokens)
    installs the key pair and runs the user data; nothing of the metadata service is inside the
    instance, so the image's own services may bind port 80 on every address."""
    box = launch(cloud, world, MetadataOptions={"HttpTokens": "required"})
    other = launch(cloud, world, MetadataOptions={"HttpTokens": "required"})
    try:
        wait = box.exec(["cloud-init", "status", "--wait", "--long"], timeout=120).stdout
        assert "status: done" in wait and "DataSourceEc2" in wait
        assert box.exec(["cloud-init", "query", "v1.cloud_name"], timeout=20).stdout.strip() == "aws"
        assert not box.exec(["ls", "/var/lib/cloud/seed/nocloud"], timeout=20).stdout.strip()
        assert KEY in box.exec(["cat", "/home/admin/.ssh/authorized_keys"], timeout=20).stdout
        listening = box.exec(["ss", "-Hltn"], timeout=20).stdout
        assert "169.254.169.254" not in listening
        assert "169.254.169.254" not in box.exec(["ip", "-br", "address"], timeout=20).stdout
        bind80 = box.exec(["python3", "-c", "import socket; s = socket.socket(); s.bind(('0.0.0.0', 80)); s.listen()"],
                          timeout=20)
        assert bind80.returncode == 0, bind80.stderr
        assert curl(other, "-H", f"X-aws-ec2-metadata-token: {token(box)}",
                    f"{URL}/latest/meta-data/instance-id") == ("Unauthorized", "401")  # a token is its instance's
        assert curl(other, "-H", f"X-aws-ec2-metadata-token: {token(other)}",
                    f"{URL}/latest/meta-data/instance-id") == (other.name, "200")
    finally:
        world[0].terminate_instances(InstanceIds=[box.name, other.name])
