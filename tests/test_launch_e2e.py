"""Launching environments against a moto server: bake first, then launch the tiers.

Health checks are left out here on purpose: moto's instance addresses are not real
hosts (and may be public addresses), so nothing may dial them. The local cloud tests
cover health checks against real sandboxes.
"""

from __future__ import annotations

import base64
import gzip
import io

import pytest

from bakery.bake.run import bake
from bakery.errors import CloudError, ConfigError
from bakery.cloud.connect import open_cloud
from bakery.launch.run import Launch, launch
from bakery.config.environment import load_environment
from bakery.progress import Reporter
from tests.faults import Fault
from tests.support import recipe_text, write_recipe

pytestmark = pytest.mark.e2e

WEB_TEMPLATE = """\
#cloud-config
{# variables: greeting, environment, tier, instance_index #}
write_files:
  - path: /etc/bakery/env
    content: {{ ("ENVIRONMENT=" ~ environment ~ "\\nTIER=" ~ tier ~ "\\nGREETING=" ~ greeting ~ "\\nINDEX="
                 ~ instance_index ~ "\\n") | yaml }}
runcmd:
  - [sh, -c, 'echo {{ image_id }} > /etc/bakery/image']
"""

MOTD = """#!/bin/sh
echo "{{ environment | shquote }} {{ tier | shquote }}" > /etc/motd
"""

ENV = """\
description: test environment
variables: {{greeting: hello}}
tags: {{cost-center: platform}}
tiers:
  web:
    image: {{recipe: web}}
    instance_type: t3.small
    count: 2
    subnets: [web-a, web-b]
    security_groups: [web-sg]
    tags: {{role: frontend}}
    user_data:
      parts: [web.yaml.j2, motd.sh.j2]
      variables: {{greeting: {greeting}}}
  app:
    image: {{recipe: app}}
    count: 1
    subnets: [app-a]
    security_groups: [app-sg]
    user_data:
      parts: [web.yaml.j2]
{extra}"""


@pytest.fixture
def world(moto, tmp_path, builder_host, settings_for):
    """Two baked recipes, a VPC with named subnets and groups, templates and environments."""
    recipes = tmp_path / "recipes"
    for name in ("web", "app"):
        write_recipe(recipes, name, recipe_text(builder_host.port, f"  - {{name: hi, shell: echo {name}}}\n"))
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata/web.yaml.j2").write_text(WEB_TEMPLATE)
    (tmp_path / "userdata/motd.sh.j2").write_text(MOTD)
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "prod.yaml").write_text(ENV.format(greeting="bonjour", extra=""))
    (envs / "staging.yaml").write_text(ENV.format(greeting="hallo", extra=""))

    ec2 = moto.client()
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = {}
    for name, cidr, az in (("web-a", "10.20.1.0/24", "us-east-1a"), ("web-b", "10.20.2.0/24", "us-east-1b"),
                           ("app-a", "10.20.3.0/24", "us-east-1a")):
        sid = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=az)["Subnet"]["SubnetId"]
        ec2.create_tags(Resources=[sid], Tags=[{"Key": "Name", "Value": name}])
        subnets[name] = sid
    groups = {n: ec2.create_security_group(GroupName=n, Description=n, VpcId=vpc)["GroupId"] for n in ("web-sg", "app-sg")}

    settings = settings_for(recipes, envs_dir=envs, userdata_dir=tmp_path / "userdata")
    images = {n: bake(settings, n, {}, report=Reporter(quiet=True)).ami_id for n in ("web", "app")}
    return {"settings": settings, "ec2": ec2, "subnets": subnets, "groups": groups, "images": images, "envs": envs}


def instances(ec2, env: str, states=("pending", "running")) -> list[dict]:
    resp = ec2.describe_instances(Filters=[{"Name": "tag:bakery:environment", "Values": [env]},
                                           {"Name": "instance-state-name", "Values": list(states)}])
    return sorted((i for r in resp["Reservations"] for i in r["Instances"]),
                  key=lambda i: ({t["Key"]: t["Value"] for t in i["Tags"]}["Name"]))


def user_data_of(ec2, instance_id: str) -> str:
    raw = base64.b64decode(ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
                           ["UserData"]["Value"])
    return gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()


@pytest.mark.parametrize("env, greeting", [("prod", "bonjour"), ("staging", "hallo")])
def test_tiers_launch_with_their_images_network_tags_and_user_data(world, env, greeting):
    report = launch(world["settings"], env, report=Reporter(quiet=True))
    ec2 = world["ec2"]
    launched = instances(ec2, env)
    assert len(launched) == 3 == len(report.instances)
    # no health check, and EC2's console is not read by default: not checked, never "ready"
    assert [(r.health, r.ready_s) for r in report.instances] == [("not checked", None)] * 3
    by_tier: dict[str, list[dict]] = {}
    for inst in launched:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        by_tier.setdefault(tags["bakery:tier"], []).append(inst)
        assert tags["cost-center"] == "platform" and tags["bakery:environment"] == env
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        assert inst["ImageId"] == world["images"][tags["bakery:tier"]]
        groups = [g["GroupId"] for g in inst["NetworkInterfaces"][0]["Groups"]]
        assert groups == [world["groups"][f"{tags['bakery:tier']}-sg"]]
        text = user_data_of(ec2, inst["InstanceId"])
        # web overrides the environment's greeting, app inherits it; "\\n" as the yaml filter escapes it
        expected = greeting if tags["bakery:tier"] == "web" else "hello"
        assert f"TIER={tags['bakery:tier']}\\nGREETING={expected}\\n" in text
        assert f"INDEX={tags['bakery:slot']}\\n" in text  # each instance renders with its own instance_index
        assert inst["ImageId"] in text  # the template saw the image id it was launched with
    web, app = by_tier["web"], by_tier["app"]
    assert [i["SubnetId"] for i in web] == [world["subnets"]["web-a"], world["subnets"]["web-b"]]
    assert app[0]["SubnetId"] == world["subnets"]["app-a"]
    assert {t["Key"]: t["Value"] for t in web[0]["Tags"]}["role"] == "frontend"

    web_text = user_data_of(ec2, web[0]["InstanceId"])
    assert "Content-Type: multipart/mixed" in web_text and "text/x-shellscript" in web_text
    plan = next(p for p in report.plans if p.tier == "web")
    assert plan.user_data_sha256 and plan.user_data_size <= 16383
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [web[0]["InstanceId"]]}])
    assert all(v["Encrypted"] for v in volumes["Volumes"])


def test_launch_is_idempotent_and_dry_run_creates_nothing(world):
    ec2 = world["ec2"]
    dry = launch(world["settings"], "prod", dry_run=True, report=Reporter(quiet=True))
    assert instances(ec2, "prod") == [] and [len(p.missing_slots) for p in dry.plans] == [2, 1]
    launch(world["settings"], "prod", report=Reporter(quiet=True))
    again = launch(world["settings"], "prod", report=Reporter(quiet=True))
    assert again.instances == [] and len(instances(ec2, "prod")) == 3
    # a lost instance is replaced in its own slot, and only that one
    lost = instances(ec2, "prod")[0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[lost])
    refill = launch(world["settings"], "prod", report=Reporter(quiet=True))
    assert len(refill.instances) == 1 and len(instances(ec2, "prod")) == 3


def test_only_the_named_tier_launches(world):
    launch(world["settings"], "prod", tier="app", report=Reporter(quiet=True))
    tiers = {t["Value"] for i in instances(world["ec2"], "prod") for t in i["Tags"] if t["Key"] == "bakery:tier"}
    assert tiers == {"app"}


def test_a_failure_midway_rolls_back_what_this_run_launched(world):
    env = load_environment(world["settings"].envs, "prod")
    launcher = Launch(world["settings"], env, report=Reporter(quiet=True), cloud=open_cloud(world["settings"]))
    plans = launcher.plan(env.tiers)
    Fault(launcher.ec2.client, "RunInstances", "UnauthorizedOperation", status=403, times=None, after=2)
    with pytest.raises(CloudError, match="not authorised"):
        launcher.launch(plans)
    assert instances(world["ec2"], "prod") == []


def test_a_roll_back_whose_terminate_is_refused_says_so_and_the_sweep_by_tag_still_ends_the_instance(world):
    env = load_environment(world["settings"].envs, "prod")
    out = io.StringIO()
    launcher = Launch(world["settings"], env, report=Reporter(stream=out), cloud=open_cloud(world["settings"]))
    plans = launcher.plan(env.tiers)
    Fault(launcher.ec2.client, "RunInstances", "UnauthorizedOperation", status=403, times=None, after=2)
    refused = Fault(launcher.ec2.client, "TerminateInstances", "UnauthorizedOperation", status=403, times=1)
    with pytest.raises(CloudError, match="run-instances .*not authorised"):  # the cause, not the clean-up's
        launcher.launch(plans)
    assert refused.injected == 1 and instances(world["ec2"], "prod") == []
    log = out.getvalue()
    refused_id = log.split("clean-up of instance ")[1].split()[0]
    assert f"removed what the clean-up had missed (found by the run's tag): instance {refused_id}" in log
    assert f"1 clean-up step(s) of {launcher.launch_id} failed" in log and "run invoke janitor" in log


def test_a_token_ec2_answers_with_a_terminated_instance_is_asked_again_under_a_derived_token(world):
    """After a roll-back, the same world derives the same client token, and AWS (not moto, which
    ignores tokens) answers it with the instance it terminated: stand in for that answer once."""
    import uuid

    env = load_environment(world["settings"].envs, "prod")
    launcher = Launch(world["settings"], env, report=Reporter(quiet=True), cloud=open_cloud(world["settings"]))
    plans = [p for p in launcher.plan(env.tiers) if p.tier == "app"]
    tokens, dead = [], []

    def record(params, **_):
        tokens.append(params["ClientToken"])

    def answer_with_a_dead_instance_once(parsed, **_):
        if not dead:
            dead.append(parsed["Instances"][0]["InstanceId"])
            parsed["Instances"][0]["State"] = {"Code": 48, "Name": "terminated"}
    launcher.ec2.client.meta.events.register("before-parameter-build.ec2.RunInstances", record)
    launcher.ec2.client.meta.events.register("after-call.ec2.RunInstances", answer_with_a_dead_instance_once)
    (launched,) = launcher.launch(plans)
    assert tokens[1] == str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tokens[0]}/{dead[0]}")) and len(tokens) == 2
    assert launched.instance_id not in dead


CRASH_MID_LAUNCH = """
import os, sys
from pathlib import Path
from bakery.launch.run import launch
from bakery.progress import Reporter
from bakery.config.settings import Settings
calls = []
def crash(**_):  # the process dies on the third RunInstances: no rollback, no clean-up code runs
    calls.append(1)
    if len(calls) == 3:
        os._exit(9)
import bakery.cloud.ec2 as ec2
real = ec2.EC2.__init__
def hooked(self, *a, **kw):
    real(self, *a, **kw)
    self.client.meta.events.register("before-send.ec2.RunInstances", crash)
ec2.EC2.__init__ = hooked
d = sys.argv[1:]
launch(Settings(cloud="aws", region="us-east-1", endpoint_url=d[0], project_dir=Path(d[1]), recipes_dir=Path(d[2]),
                envs_dir=Path(d[3]), userdata_dir=Path(d[4]), state_dir=Path(d[5])), "prod", report=Reporter(quiet=True))
"""


def test_a_launch_that_dies_mid_way_is_rolled_back_by_the_janitor_from_its_ledger(world):
    import subprocess
    import sys

    from bakery.cloud.ec2 import EC2
    from bakery.housekeeping.janitor import janitor
    from tests.support import ROOT

    s = world["settings"]
    died = subprocess.run([sys.executable, "-c", CRASH_MID_LAUNCH, s.endpoint_url, str(s.project_dir),
                           str(s.recipes_dir), str(s.envs_dir), str(s.userdata_dir), str(s.state_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    half = [i["InstanceId"] for i in instances(world["ec2"], "prod")]
    assert len(half) == 2  # a half-launched fleet that never passed its health checks
    report = janitor(EC2(s), older_than=None, run_id=None, dry_run=False, ledger_dir=s.state / "ledger")
    (run, removed), = report.builds.items()
    assert run.startswith("l-") and sorted(r.split()[1] for r in removed) == sorted(half)
    assert instances(world["ec2"], "prod") == [] and list((s.state / "ledger").iterdir()) == []


def test_bootstrap_runs_the_recipe_at_boot_from_the_source_image(world):
    envs = world["envs"]
    (envs / "dev.yaml").write_text("tiers:\n  web:\n    image: {recipe: web}\n    strategy: bootstrap\n"
                                   "    user_data: {parts: [motd.sh.j2]}\n")
    report = launch(world["settings"], "dev", report=Reporter(quiet=True))
    inst = instances(world["ec2"], "dev")[0]
    source = world["ec2"].describe_images(Filters=[{"Name": "name", "Values": ["test-debian-12-amd64-*"]}],
                                          Owners=["self"])["Images"][0]["ImageId"]
    assert inst["ImageId"] == source and report.plans[0].strategy == "bootstrap"
    text = user_data_of(world["ec2"], inst["InstanceId"])
    assert "bakery bootstrap of recipe web" in text and "bakery_step hi" in text


def test_launch_template_version_and_target_group(world, moto):
    elb = moto.client("elbv2")
    vpc = world["ec2"].describe_subnets(SubnetIds=[world["subnets"]["app-a"]])["Subnets"][0]["VpcId"]
    tg = elb.create_target_group(Name="app-tg", Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="instance")
    arn = tg["TargetGroups"][0]["TargetGroupArn"]
    envs = world["envs"]
    (envs / "asg.yaml").write_text(
        "tiers:\n  app:\n    image: {recipe: app}\n    subnets: [app-a]\n    security_groups: [app-sg]\n"
        f"    user_data: {{parts: [web.yaml.j2], variables: {{greeting: hi}}}}\n    target_group_arn: {arn}\n"
        "    launch_template: {name: asg-app}\n")
    report = launch(world["settings"], "asg", report=Reporter(quiet=True))
    assert report.launch_templates == {"app": "asg-app:1"}
    data = world["ec2"].describe_launch_template_versions(LaunchTemplateName="asg-app")["LaunchTemplateVersions"][0]
    assert data["LaunchTemplateData"]["ImageId"] == world["images"]["app"]
    sent = base64.b64decode(data["LaunchTemplateData"]["UserData"])
    sent = gzip.decompress(sent) if sent[:2] == b"\x1f\x8b" else sent
    assert b"#cloud-config" in sent  # base64 encoded by bakery, as launch templates require
    health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    assert [h["Target"]["Id"] for h in health] == [report.instances[0].instance_id]
    launch(world["settings"], "asg", report=Reporter(quiet=True))  # nothing new to launch, still a new version
    versions = world["ec2"].describe_launch_template_versions(LaunchTemplateName="asg-app")["LaunchTemplateVersions"]
    assert len(versions) == 2


@pytest.mark.parametrize("edit, message", [
    (lambda t: t, r"no tier 'nope'"),
    (lambda t: t.replace("[web.yaml.j2, motd.sh.j2]", "[missing.yaml.j2]"), r"missing.yaml.j2"),
    (lambda t: t.replace("greeting: bonjour", "other: 1").replace("{greeting: hello}", "{}"),
     r"'greeting' is undefined"),
    (lambda t: t.replace("greeting: bonjour", "greeting: AKIAIOSFODNN7EXAMPLE"), r"tiers.web"),
    (lambda t: t.replace("security_groups: [web-sg]", "security_groups: [nope-sg]"), r"'nope-sg' is not a security group"),
    (lambda t: t.replace("image: {recipe: app}", "image: {ami: ami-0000000000000beef}"), r"ami-0000000000000beef does not exist"),
    (lambda t: t.replace("count: 2", "count: many"), r"prod.yaml:\d+: tiers.web.count"),
    (lambda t: t.replace("tiers:", "colour: red\ntiers:"), r"prod.yaml:\d+: colour: unknown key"),
])
def test_bad_environments_launch_nothing(world, edit, message):
    path = world["envs"] / "prod.yaml"
    path.write_text(edit(path.read_text()))
    tier = "nope" if "nope'" in message else None
    with pytest.raises(ConfigError, match=message):
        launch(world["settings"], "prod", tier=tier, report=Reporter(stream=io.StringIO()))
    assert instances(world["ec2"], "prod", states=("pending", "running", "stopped", "terminated")) == []


def test_a_recipe_never_baked_is_a_clear_error(world):
    (world["envs"] / "x.yaml").write_text("tiers:\n  db:\n    image: {recipe: db}\n")
    with pytest.raises(ConfigError, match=r"no finished image of recipe 'db'.*invoke bake --recipe db"):
        launch(world["settings"], "x", report=Reporter(quiet=True))


def test_render_works_offline_and_prints_what_launch_sends_but_the_image_id(world, moto):
    """`invoke render` starts no cloud (here the endpoint is unreachable) and prints the tier's user
    data with a marked placeholder for the image id it cannot know; launch sends the same parts
    with the real id."""
    import email
    import os
    import subprocess
    import sys

    from bakery.render.tier import PLACEHOLDER_IMAGE
    from tests.support import ROOT

    settings = world["settings"]
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "aws", "INVOKE_BAKERY_ENDPOINT_URL": "http://127.0.0.1:9",
           "INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes), "INVOKE_BAKERY_ENVS_DIR": str(settings.envs),
           "INVOKE_BAKERY_USERDATA_DIR": str(settings.userdata), "INVOKE_BAKERY_STATE_DIR": str(settings.state)}
    rendered = subprocess.run([sys.executable, "-m", "invoke", "render", "--env", "prod", "--tier", "web"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stderr.count("\n") == 1 and f"image_id is the placeholder {PLACEHOLDER_IMAGE}" in rendered.stderr
    launch(settings, "prod", tier="web", report=Reporter(quiet=True))
    sent = user_data_of(world["ec2"], instances(world["ec2"], "prod")[0]["InstanceId"])

    def parts(text: str) -> list[tuple[str, str]]:
        return [(p.get_filename(), p.get_payload()) for p in email.message_from_string(text).walk()
                if not p.is_multipart()]
    image = world["images"]["web"]
    assert PLACEHOLDER_IMAGE in rendered.stdout and image in sent
    assert [(n, t.replace(PLACEHOLDER_IMAGE, image)) for n, t in parts(rendered.stdout)] == parts(sent)

    env["INVOKE_BAKERY_ENDPOINT_URL"] = moto.url
    missing = subprocess.run([sys.executable, "-m", "invoke", "launch", "--env", "nope"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no such environment 'nope' (known: prod, staging)" in missing.stderr
