"""The local cloud is an EC2 for any client: the AWS CLI alone (its own venv, no bakery code in the
client) runs, stops, starts, reboots and terminates machines, images one, and deregisters the image
for good; an Auto Scaling group made with it runs real machines and scales them away. OpenSSH
reaches the machine through its network namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from bakery.bake.run import bake
from bakery.config.settings import Settings
from bakery.local.procs import alive
from bakery.local.vpcnet import PUBLIC_RANGES
from bakery.progress import Reporter
from tests.local.conftest import netns_names, sandbox_recipe
from tests.support import ROOT, write_recipe

pytestmark = pytest.mark.local

AWS = ROOT / ".venv-aws/bin/aws"
RECIPE = sandbox_recipe("{name: mark, shell: echo baked > /etc/baked-marker}")


@pytest.fixture(scope="module")
def aws(cloud):
    """`aws ec2 ...` against the local endpoint; JSON out, parsed."""
    assert AWS.is_file(), f"{AWS} is missing: scripts/install.sh installs the AWS CLI in .venv-aws"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "AWS_ACCESS_KEY_ID": "local",
           "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": cloud.endpoint.running_url()}

    def run(*args: str, ok: bool = True, service: str = "ec2"):
        out = subprocess.run([str(AWS), service, *args, "--output", "json"], env=env, capture_output=True, text=True,
                             timeout=300)
        if ok:
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout) if out.stdout.strip() else None
        return out
    return run


@pytest.fixture(scope="module")
def image(cloud, tmp_path_factory) -> str:
    """A baked image to start from (baked by bakery: the operations under test are the CLI's)."""
    work = tmp_path_factory.mktemp("anyclient")
    write_recipe(work / "recipes", "cli", RECIPE)
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=work, recipes_dir=work / "recipes",
                        state_dir=work / "state")
    return bake(settings, "cli", {}, report=Reporter(quiet=True)).ami_id


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("key") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def ssh(instance_id: str, key: Path, command: str, timeout: float = 60) -> str:
    """OpenSSH as the image's default user, into the instance's namespace (retried while it boots)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["ip", "netns", "exec", f"bakery-{instance_id}", "ssh", "-i", str(key),
                              "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                              "admin@127.0.0.1", command], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            return out.stdout
        assert time.monotonic() < deadline, f"ssh to {instance_id}: {out.stderr}"
        time.sleep(0.2)


def machine_pids(cloud, instance_id: str) -> list[tuple[int, int]]:
    pids = []
    for f in (cloud.instances_dir / instance_id / "pids").glob("*.pid"):
        pid, start = f.read_text().split()
        pids.append((int(pid), int(start)))
    return pids


def state(aws, instance_id: str) -> str:
    return aws("describe-instances", "--instance-ids", instance_id)["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_the_aws_cli_alone_runs_stops_starts_reboots_images_and_terminates_a_machine(cloud, aws, image, ssh_key):
    aws("import-key-pair", "--key-name", "cli", "--public-key-material", f"fileb://{ssh_key}.pub")
    iid = aws("run-instances", "--image-id", image, "--instance-type", "t3.micro", "--key-name", "cli",
              "--count", "1")["Instances"][0]["InstanceId"]
    aws("wait", "instance-running", "--instance-ids", iid)
    # no subnet given: its zone's default subnet, an address from it, a public one from the documentation ranges
    inst = aws("describe-instances", "--instance-ids", iid)["Reservations"][0]["Instances"][0]
    subnet = aws("describe-subnets", "--subnet-ids", inst["SubnetId"])["Subnets"][0]
    assert subnet["DefaultForAz"] and subnet["AvailabilityZone"] == inst["Placement"]["AvailabilityZone"]
    assert ipaddress.ip_address(inst["PrivateIpAddress"]) in ipaddress.ip_network(subnet["CidrBlock"])
    assert any(ipaddress.ip_address(inst["PublicIpAddress"]) in ipaddress.ip_network(r) for r in PUBLIC_RANGES)
    assert ssh(iid, ssh_key, "cat /etc/baked-marker; sudo sh -c 'echo kept > /root/kept'") == "baked\n"
    # the machine's own console, not moto's canned log: cloud-init prints the host keys as its last
    # stage ends, which may be after sshd answers (so ask as a user would, until they are there)
    deadline = time.monotonic() + 60
    while "HOST KEY" not in (console := aws("get-console-output", "--instance-id", iid).get("Output", "")):
        assert time.monotonic() < deadline, console[-2000:]
        time.sleep(0.5)
    assert "Cloud-init" in console

    aws("stop-instances", "--instance-ids", iid)
    aws("wait", "instance-stopped", "--instance-ids", iid)
    assert f"bakery-{iid}" not in netns_names()
    assert not any(alive(pid, start) for pid, start in machine_pids(cloud, iid))

    aws("start-instances", "--instance-ids", iid)
    aws("wait", "instance-running", "--instance-ids", iid)
    assert ssh(iid, ssh_key, "sudo cat /root/kept") == "kept\n"  # the same disk

    boot = ssh(iid, ssh_key, "cat /proc/1/stat | cut -d' ' -f22")  # PID 1's start time: a new boot changes it
    aws("reboot-instances", "--instance-ids", iid)
    deadline = time.monotonic() + 60
    while ssh(iid, ssh_key, "cat /proc/1/stat | cut -d' ' -f22") == boot:
        assert time.monotonic() < deadline, "reboot-instances did not reboot the machine"
        time.sleep(0.2)
    assert state(aws, iid) == "running"

    new = aws("create-image", "--instance-id", iid, "--name", "cli-made")["ImageId"]
    aws("wait", "image-available", "--image-ids", new)
    assert state(aws, iid) == "running"  # rebooted for a consistent copy, and running again
    assert (cloud.layers.root / new).is_dir()

    pids = machine_pids(cloud, iid)
    assert pids and all(alive(pid, start) for pid, start in pids)
    aws("terminate-instances", "--instance-ids", iid)
    aws("wait", "instance-terminated", "--instance-ids", iid)
    assert f"bakery-{iid}" not in netns_names()
    assert not any(alive(pid, start) for pid, start in pids)
    assert not (cloud.instances_dir / iid).exists()

    aws("deregister-image", "--image-id", new)
    cloud.down()
    cloud.up()
    gone = aws("describe-images", "--image-ids", new, ok=False)  # EC2 answers [] or NotFound for a deregistered id
    assert (gone.returncode == 0 and json.loads(gone.stdout)["Images"] == []) or "InvalidAMIID.NotFound" in gone.stderr
    assert new not in [i["ImageId"] for i in aws("describe-images", "--owners", "self")["Images"]]
    assert not (cloud.layers.root / new).exists()


def test_an_auto_scaling_group_made_with_the_aws_cli_runs_real_machines_and_scales_them_away(
        cloud, aws, image, ssh_key):
    import boto3

    aws("import-key-pair", "--key-name", "asg", "--public-key-material", f"fileb://{ssh_key}.pub")
    subnet = aws("describe-subnets", "--filters", "Name=default-for-az,Values=true",
                 "Name=availability-zone,Values=us-east-1a")["Subnets"][0]["SubnetId"]
    aws("create-launch-template", "--launch-template-name", "asg-cli", "--launch-template-data", json.dumps(
        {"ImageId": image, "InstanceType": "t3.micro", "KeyName": "asg", "MetadataOptions": {"HttpTokens": "required"}}))
    ec2 = boto3.client("ec2", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
    scaling = boto3.client("autoscaling", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="local")
    scaling.create_auto_scaling_group(AutoScalingGroupName="cli-group", MinSize=1, MaxSize=2, DesiredCapacity=1,
                                      LaunchTemplate={"LaunchTemplateName": "asg-cli", "Version": "$Latest"},
                                      VPCZoneIdentifier=subnet)
    [member] = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["cli-group"])["AutoScalingGroups"][0][
        "Instances"]
    iid = member["InstanceId"]
    # as EC2 shows a new instance: pending until its machine has booted (the group launched it, no
    # RunInstances request of anyone's), then running and reachable like any other
    assert ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"] == "pending"
    aws("wait", "instance-running", "--instance-ids", iid)
    assert ssh(iid, ssh_key, "cat /etc/baked-marker") == "baked\n"
    aws("update-auto-scaling-group", "--auto-scaling-group-name", "cli-group", "--min-size", "0",
        "--desired-capacity", "0", service="autoscaling")
    aws("wait", "instance-terminated", "--instance-ids", iid)
    assert f"bakery-{iid}" not in netns_names() and not (cloud.instances_dir / iid).exists()
    aws("delete-auto-scaling-group", "--auto-scaling-group-name", "cli-group", "--force-delete", service="autoscaling")


def clients_and_subnet(cloud):
    """boto3's EC2 and Auto Scaling clients on the local endpoint, and us-east-1a's default subnet."""
    import boto3

    kw = dict(endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1", aws_access_key_id="local",
              aws_secret_access_key="local")
    ec2, scaling = boto3.client("ec2", **kw), boto3.client("autoscaling", **kw)
    subnet = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]},
                                           {"Name": "availability-zone", "Values": ["us-east-1a"]}])["Subnets"][0]
    return ec2, scaling, subnet


def test_an_instance_refresh_replaces_a_groups_machines_in_batches_keeping_the_minimum_healthy(cloud, image):
    """moto has no instance refresh: the local endpoint's (bakery/local/refresh.py), as AWS documents it."""
    from botocore.exceptions import ClientError

    ec2, scaling, subnet = clients_and_subnet(cloud)
    ec2.create_launch_template(LaunchTemplateName="refresh", LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"})
    scaling.create_auto_scaling_group(AutoScalingGroupName="refreshed", MinSize=1, MaxSize=3, DesiredCapacity=2,
                                      LaunchTemplate={"LaunchTemplateName": "refresh", "Version": "1"},
                                      VPCZoneIdentifier=subnet["SubnetId"], HealthCheckGracePeriod=0)

    def members() -> list[str]:
        group = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["refreshed"])["AutoScalingGroups"][0]
        return [i["InstanceId"] for i in group["Instances"]]

    def running(ids: list[str]) -> int:
        found = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]] if ids else []
        return sum(i["State"]["Name"] == "running" for i in found)

    old = members()
    deadline = time.monotonic() + 120
    while running(old) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    ec2.create_launch_template_version(LaunchTemplateName="refresh", LaunchTemplateData={
        "ImageId": image, "InstanceType": "t3.micro", "UserData": "I2Nsb3VkLWNvbmZpZwo="})
    refresh = scaling.start_instance_refresh(
        AutoScalingGroupName="refreshed",
        DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateName": "refresh", "Version": "2"}},
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 1})["InstanceRefreshId"]
    with pytest.raises(ClientError, match="InstanceRefreshInProgress"):
        scaling.start_instance_refresh(AutoScalingGroupName="refreshed")
    fewest, statuses = 2, []
    while True:
        [seen] = scaling.describe_instance_refreshes(AutoScalingGroupName="refreshed")["InstanceRefreshes"]
        statuses.append(seen["Status"])
        if seen["Status"] not in ("Pending", "InProgress"):
            break
        fewest = min(fewest, running(members()))
        assert time.monotonic() < deadline + 240, seen
        time.sleep(0.2)
    assert (seen["InstanceRefreshId"], seen["Status"], seen["PercentageComplete"]) == (refresh, "Successful", 100)
    assert "InProgress" in statuses and fewest >= 1  # half of the desired two in service throughout
    now = members()
    assert len(now) == 2 and not set(now) & set(old) and running(now) == 2
    assert all(not (cloud.instances_dir / iid).exists() for iid in old)  # the old machines are gone
    group = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["refreshed"])["AutoScalingGroups"][0]
    assert group["LaunchTemplate"]["Version"] == "2"  # the desired configuration is the group's now
    # instances already on the desired version are skipped when asked; nothing to cancel once it ended
    again = scaling.start_instance_refresh(AutoScalingGroupName="refreshed", Preferences={"SkipMatching": True})
    while (seen := scaling.describe_instance_refreshes(AutoScalingGroupName="refreshed", InstanceRefreshIds=[
            again["InstanceRefreshId"]])["InstanceRefreshes"][0])["Status"] in ("Pending", "InProgress"):
        time.sleep(0.2)
    assert seen["Status"] == "Successful" and members() == now
    with pytest.raises(ClientError, match="ActiveInstanceRefreshNotFound"):
        scaling.cancel_instance_refresh(AutoScalingGroupName="refreshed")
    scaling.delete_auto_scaling_group(AutoScalingGroupName="refreshed", ForceDelete=True)


def test_a_rolled_back_instance_refresh_puts_back_the_groups_template_and_replaces_what_it_made(cloud, image):
    from botocore.exceptions import ClientError

    ec2, scaling, subnet = clients_and_subnet(cloud)
    ec2.create_launch_template(LaunchTemplateName="backwards", LaunchTemplateData={"ImageId": image,
                                                                                   "InstanceType": "t3.micro"})
    ec2.create_launch_template_version(LaunchTemplateName="backwards", LaunchTemplateData={
        "ImageId": image, "InstanceType": "t3.small"})
    scaling.create_auto_scaling_group(AutoScalingGroupName="backwards", MinSize=1, MaxSize=3, DesiredCapacity=2,
                                      LaunchTemplate={"LaunchTemplateName": "backwards", "Version": "1"},
                                      VPCZoneIdentifier=subnet["SubnetId"], HealthCheckGracePeriod=0)

    def members() -> set[str]:
        group = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["backwards"])["AutoScalingGroups"][0]
        return {i["InstanceId"] for i in group["Instances"]}

    old = members()
    with pytest.raises(ClientError, match="IrreversibleInstanceRefresh"):
        scaling.start_instance_refresh(AutoScalingGroupName="backwards", Preferences={"InstanceWarmup": 30})
        scaling.rollback_instance_refresh(AutoScalingGroupName="backwards")
    scaling.cancel_instance_refresh(AutoScalingGroupName="backwards")
    while scaling.describe_instance_refreshes(AutoScalingGroupName="backwards")["InstanceRefreshes"][0]["Status"] \
            not in ("Cancelled", "Successful"):
        time.sleep(0.2)
    old = members()
    scaling.start_instance_refresh(AutoScalingGroupName="backwards", Preferences={
        "MinHealthyPercentage": 50, "InstanceWarmup": 8},
        DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateName": "backwards", "Version": "2"}})
    deadline = time.monotonic() + 180
    while not (made := members() - old):  # the first batch's replacement is up: roll back while it warms
        assert time.monotonic() < deadline
        time.sleep(0.2)
    scaling.rollback_instance_refresh(AutoScalingGroupName="backwards")
    while (seen := scaling.describe_instance_refreshes(AutoScalingGroupName="backwards")["InstanceRefreshes"][0])[
            "Status"] in ("InProgress", "RollbackInProgress"):
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert seen["Status"] == "RollbackSuccessful", seen
    group = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["backwards"])["AutoScalingGroups"][0]
    assert group["LaunchTemplate"]["Version"] == "1"
    now = members()
    assert len(now) == 2 and not now & made and len(now & old) == 1  # what it made is gone; the other never moved
    types = {i["InstanceType"] for r in ec2.describe_instances(InstanceIds=list(now))["Reservations"]
             for i in r["Instances"]}
    assert types == {"t3.micro"}
    scaling.delete_auto_scaling_group(AutoScalingGroupName="backwards", ForceDelete=True)

