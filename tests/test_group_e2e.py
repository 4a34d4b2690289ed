"""A tier that is an Auto Scaling group (`auto_scaling:`, bakery/launch/group.py) against a moto
server: launched as a group on a launch template version, resized, taken back when its launch
fails or its process dies. Moving one by instance refresh needs the refresh, which moto lacks: the
local cloud's tests do it (tests/local/test_firewall_prod.py)."""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys

import boto3
import pytest

from bakery.cloud.ec2 import EC2
from bakery.housekeeping.janitor import janitor
from bakery.launch.rollout import rollout
from bakery.launch.run import launch
from bakery.launch.status import fleet_status
from bakery.network import open_env
from bakery.progress import Reporter
from bakery.errors import CloudError
from tests.faults import Fault
from tests.support import ROOT
from tests.test_launch_e2e import CRASH_MID_LAUNCH, ENV, instances, user_data_of, world  # noqa: F401 - the launch tests' world
from tests.test_rollout_e2e import rebake_web

pytestmark = pytest.mark.e2e

GROUP_LINE = "    auto_scaling: {min: 1, max: 3, health_check_grace: 30, min_healthy_percentage: 50, instance_warmup: 5}\n"
# the launch tests' environment, its web tier an Auto Scaling group of `count`
SHOP = ENV.format(greeting="hello", extra="").replace("    tags: {role: frontend}\n",
                                                      "    tags: {role: frontend}\n" + GROUP_LINE)
GROUP, TEMPLATE = "bakery-shop-web", "bakery-shop-web"


@pytest.fixture
def shop(world):
    (world["envs"] / "shop.yaml").write_text(SHOP)
    return world


def scaling(world):
    return boto3.client("autoscaling", endpoint_url=world["settings"].endpoint_url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def group(world) -> dict | None:
    found = scaling(world).describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    return found[0] if found else None


def tier_of(inst: dict) -> str:
    return {t["Key"]: t["Value"] for t in inst["Tags"]}["bakery:tier"]


def test_an_auto_scaling_tier_launches_as_a_group_on_a_version_of_its_launch_template(shop):
    report = launch(shop["settings"], "shop", report=Reporter(quiet=True))
    g = group(shop)
    assert (g["MinSize"], g["MaxSize"], g["DesiredCapacity"], g["HealthCheckGracePeriod"]) == (1, 3, 2, 30)
    assert g["LaunchTemplate"]["LaunchTemplateName"] == TEMPLATE and g["LaunchTemplate"]["Version"] == "1"
    assert set(g["VPCZoneIdentifier"].split(",")) == {shop["subnets"]["web-a"], shop["subnets"]["web-b"]}
    tags = {t["Key"]: (t["Value"], t["PropagateAtLaunch"]) for t in g["Tags"]}
    assert tags["bakery:environment"] == ("shop", True) and tags["bakery:tier"] == ("web", True)
    assert tags["bakery:launch-id"] == (report.launch_id, True) and tags["cost-center"] == ("platform", True)
    # the version: the tier's instance on its image, user data rendered, IMDSv2
    ec2 = shop["ec2"]
    [version] = ec2.describe_launch_template_versions(LaunchTemplateName=TEMPLATE)["LaunchTemplateVersions"]
    data = version["LaunchTemplateData"]
    assert data["ImageId"] == shop["images"]["web"] and data["MetadataOptions"]["HttpTokens"] == "required"
    raw = base64.b64decode(data["UserData"])
    assert "ENVIRONMENT=shop" in (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
    # the group's instances: tagged as the tier's, slot "group", on the image, in the web group
    web = [i for i in instances(ec2, "shop") if tier_of(i) == "web"]
    assert len(web) == 2 and {i["ImageId"] for i in web} == {shop["images"]["web"]}
    for inst in web:
        inst_tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert (inst_tags["bakery:slot"], inst_tags["role"]) == ("group", "frontend")
        assert [x["GroupId"] for x in inst["SecurityGroups"]] == [shop["groups"]["web-sg"]]
        assert "TIER=web" in user_data_of(ec2, inst["InstanceId"])
    assert sorted((r.tier, r.slot) for r in report.instances) == [("app", "0"), ("web", "group"), ("web", "group")]
    assert {r.instance_id for r in report.instances if r.tier == "web"} == {i["InstanceId"] for i in web}
    assert "web" not in report.launch_templates  # its version is the group's, written before it

    again = launch(shop["settings"], "shop", report=Reporter(quiet=True))
    assert again.instances == [] and group(shop)["DesiredCapacity"] == 2  # there already: left as it is

    (shop["envs"] / "shop.yaml").write_text(SHOP.replace("count: 2", "count: 3", 1))
    grown = launch(shop["settings"], "shop", report=Reporter(quiet=True))
    assert [(r.tier, r.slot) for r in grown.instances] == [("web", "group")]
    assert group(shop)["DesiredCapacity"] == 3 and group(shop)["LaunchTemplate"]["Version"] == "1"


def test_a_launch_that_fails_after_making_the_group_deletes_it_its_instances_and_its_template(shop):
    from bakery.config.environment import load_environment
    from bakery.cloud.connect import open_cloud
    from bakery.launch.run import Launch

    env = load_environment(shop["settings"].envs, "shop")
    launcher = Launch(shop["settings"], env, report=Reporter(quiet=True), cloud=open_cloud(shop["settings"]))
    plans = launcher.plan(env.tiers)
    Fault(launcher.ec2.client, "RunInstances", "UnauthorizedOperation", status=403, times=None)  # app's start
    with pytest.raises(CloudError, match="not authorised"):
        launcher.launch(plans)
    assert group(shop) is None and instances(shop["ec2"], "shop") == []
    assert shop["ec2"].describe_launch_templates()["LaunchTemplates"] == []


def test_a_launch_killed_after_making_the_group_is_taken_back_by_the_janitor(shop):
    s = shop["settings"]
    script = CRASH_MID_LAUNCH.replace("len(calls) == 3", "len(calls) == 1").replace('"prod"', '"shop"')
    died = subprocess.run([sys.executable, "-c", script, s.endpoint_url, str(s.project_dir), str(s.recipes_dir),
                           str(s.envs_dir), str(s.userdata_dir), str(s.state_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    assert group(shop) is not None and len(instances(shop["ec2"], "shop")) == 2  # the group's, nothing else
    report = janitor(EC2(s), older_than=None, run_id=None, dry_run=False, ledger_dir=s.state / "ledger")
    (run, removed), = report.builds.items()
    assert sorted(removed) == [f"auto-scaling-group {GROUP} in us-east-1",
                               f"launch-template-version {TEMPLATE}:1 in us-east-1"]
    assert group(shop) is None and instances(shop["ec2"], "shop") == []
    assert list((s.state / "ledger").iterdir()) == []


def test_after_a_rebake_status_and_a_dry_run_rollout_show_the_groups_instances_to_move(shop, builder_host):
    launch(shop["settings"], "shop", report=Reporter(quiet=True))
    web = sorted(i["InstanceId"] for i in instances(shop["ec2"], "shop") if tier_of(i) == "web")
    old, new = shop["images"]["web"], rebake_web(shop, builder_host)
    cloud, env = open_env(shop["settings"], "shop")
    rows = fleet_status(cloud.ec2, env)["instances"]
    assert sorted(r["instance"] for r in rows if r["outdated"]) == web
    assert {r["slot"] for r in rows if r["tier"] == "web"} == {"group"}
    dry = rollout(shop["settings"], "shop", dry_run=True, report=Reporter(quiet=True))
    [web_tier, app_tier] = dry.tiers
    assert (web_tier.how, web_tier.status, web_tier.image_id) == ("instance refresh", "planned", new)
    assert web_tier.stale == [f"group {iid} ({old})" for iid in web] and app_tier.status == "current"


def test_ssh_picks_a_groups_instance_by_its_index_oldest_first(shop):
    from bakery.errors import ConfigError
    from bakery.launch.reach import ssh_command

    launch(shop["settings"], "shop", report=Reporter(quiet=True))
    with pytest.raises(ConfigError, match=r"tiers.web: --index 2: its Auto Scaling group runs 2 instance\(s\), "
                                          r"index 0 to 1 \(oldest first\)"):
        ssh_command(shop["settings"], env_name="shop", tier="web", index="2")
