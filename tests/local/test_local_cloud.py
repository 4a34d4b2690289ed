"""The local cloud end to end: bake over SSH into a real sandbox, capture the image,
boot it with real cloud-init, and leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from bakery.bake.run import bake
from bakery.cloud.connect import open_cloud
from bakery.errors import CloudError, StepFailed, WaitTimeout
from bakery.local.sandbox import Sandbox
from bakery.progress import Reporter
from bakery.config.settings import Settings
from tests.local.conftest import netns_names
from tests.support import ROOT, write_recipe

pytestmark = pytest.mark.local

RECIPE = """\
source:
  filter: {{name: "debian-12-amd64-*", owners: ["136693071363"]}}
builder:
  ssh: {{user: admin, timeout: 60}}
steps:
  - name: write marker
    shell: echo "baked by {{{{ recipe }}}}" > /etc/bakery-marker && echo "$(id -un) on $(hostname)"
  - name: upload tree
    upload: {{source: files/tree, dest: /opt/tree, mode: "0644"}}
{extra}"""

USER_DATA = """\
#cloud-config
write_files:
  - {path: /etc/app/app.env, content: "APP_ENV=local-test\\n"}
runcmd:
  - [sh, -c, 'cat /etc/bakery-marker > /run/seen-marker']
"""


def layer_listing(layer: Path) -> list[str]:
    out = subprocess.run(["tar", "--zstd", "-tf", str(layer)], capture_output=True, text=True, check=True).stdout
    return [line.removeprefix("./") for line in out.splitlines()]


def layer_file(layer: Path, member: str) -> bytes:
    return subprocess.run(["tar", "--zstd", "-xOf", str(layer), f"./{member}"], capture_output=True,
                          check=True).stdout


@pytest.fixture
def settings(cloud, tmp_path):
    recipes = tmp_path / "recipes"
    (recipes / "files/tree").mkdir(parents=True)
    (recipes / "files/tree/a.txt").write_text("tree file\n")
    return Settings(cloud="local", data_dir=cloud.data_dir, project_dir=tmp_path, recipes_dir=recipes,
                    state_dir=tmp_path / "state")


def terminate(ec2, ids: list[str]) -> None:
    """Terminate and wait: the endpoint takes machines down after answering, as EC2 does."""
    ec2.client.terminate_instances(InstanceIds=ids)
    for iid in ids:
        ec2.wait_instance_state(iid, "terminated", timeout=60)


def assert_no_sandboxes(cloud):
    left = [(box.name, box.is_running()) for box in cloud.sandboxes()]
    assert left == [], f"sandboxes left behind: {left}"
    assert not {f"bakery-{d.name}" for d in (cloud.data_dir / "instances").glob("i-*")} & netns_names()


def test_bake_runs_in_a_sandbox_and_the_image_is_a_clean_layer(cloud, settings):
    write_recipe(settings.recipes, "t1", RECIPE.format(extra=""))
    log = Reporter(stream=open(os.devnull, "w"))
    manifest = bake(settings, "t1", {}, report=log)

    record = cloud.layers.meta(manifest.ami_id)
    assert record["kind"] == "layer" and record["meta"]["ec2"]["tags"]["bakery:complete"] == "true"
    layer = cloud.layers.layer_file(manifest.ami_id)
    names = layer_listing(layer)
    assert layer_file(layer, "etc/bakery-marker") == b"baked by t1\n"
    assert layer_file(layer, "opt/tree/a.txt") == b"tree file\n"
    # hygiene: nothing of this build's identity or secrets is in the image
    leaked = [n for n in names if n.endswith("authorized_keys") or n.startswith("etc/ssh/ssh_host_")
              or n.startswith("var/lib/cloud/seed/nocloud/") or n.startswith("var/lib/cloud/instance")
              or n.endswith("_history") or "/.aws/" in n]
    assert leaked == []
    if "etc/machine-id" in names:  # the base has none; a bake that created one leaves it empty
        assert layer_file(layer, "etc/machine-id") == b""
    # nor the builder's name: cloud-init wrote it in /etc/hostname and as 127.0.1.1 in /etc/hosts
    assert "etc/hostname" not in names or layer_file(layer, "etc/hostname") == b"localhost\n"
    hosts = layer_file(layer, "etc/hosts").decode() if "etc/hosts" in names else ""
    assert "127.0.1.1" not in hosts, hosts
    assert_no_sandboxes(cloud)


def test_a_builder_pinned_from_its_console_gets_no_key_in_its_user_data_and_its_smoke_instance_neither(
        cloud, settings):
    """`builder.host_key: console` (issue 18 item 5): the builder and the smoke instance make their
    own host keys; bakery pins the ones cloud-init printed on their consoles before connecting, and
    nothing secret travels in their user data (readable through DescribeInstanceAttribute)."""
    import base64
    import io

    text = RECIPE.format(extra="checks:\n  commands: [{name: marker, shell: test -s /etc/bakery-marker}]\n")
    write_recipe(settings.recipes, "t1", text.replace("  ssh: {user: admin, timeout: 60}\n",
                                                      "  ssh: {user: admin, timeout: 60}\n  host_key: console\n"))
    out = io.StringIO()
    manifest = bake(settings, "t1", {}, report=Reporter(stream=out))
    log = out.getvalue()
    pinned = [line for line in log.splitlines() if "read host key from console" in line]
    assert len(pinned) == 2 and all("SHA256:" in line for line in pinned), log  # the builder's, the smoke's
    assert "smoke test: SSH" in log and manifest.ami_id
    ec2 = open_cloud(settings).ec2.client
    made = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
        {"Name": "tag:bakery:build-id", "Values": [manifest.build_id]}])["Reservations"] for i in r["Instances"]]
    assert len(made) == 2
    for iid in made:
        value = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData").get("UserData", {}).get("Value")
        assert value is None or b"PRIVATE KEY" not in base64.b64decode(value)
    assert_no_sandboxes(cloud)


def test_an_instance_boots_the_image_with_real_cloud_init(cloud, settings):
    write_recipe(settings.recipes, "t2", RECIPE.format(extra=""))
    manifest = bake(settings, "t2", {}, report=Reporter(quiet=True))
    ec2 = open_cloud(settings).ec2
    inst = ec2.client.run_instances(ImageId=manifest.ami_id, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                    UserData=USER_DATA)["Instances"][0]
    assert inst["State"]["Name"] == "pending"
    ec2.wait_instance_state(inst["InstanceId"], "running", timeout=60)
    box = Sandbox.attach(inst["InstanceId"], cloud.instances_dir)
    deadline = time.monotonic() + 60
    while "done" not in box.boot_status():
        assert time.monotonic() < deadline, box.boot_log()
        time.sleep(0.05)
    assert box.boot_status()["final"] == 0, box.boot_log()
    assert box.exec(["cat", "/etc/app/app.env"], timeout=10).stdout == "APP_ENV=local-test\n"
    assert box.exec(["cat", "/run/seen-marker"], timeout=10).stdout == "baked by t2\n"  # the baked layer is there

    terminate(ec2, [inst["InstanceId"]])
    assert_no_sandboxes(cloud)


def test_images_survive_an_endpoint_restart(cloud, settings):
    write_recipe(settings.recipes, "t3", RECIPE.format(extra=""))
    manifest = bake(settings, "t3", {}, report=Reporter(quiet=True))
    cloud.down()
    cloud.up()
    image = open_cloud(settings).ec2.client.describe_images(ImageIds=[manifest.ami_id])["Images"][0]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert tags["bakery:inputs-hash"] == manifest.inputs_hash and tags["bakery:complete"] == "true"
    again = bake(settings, "t3", {}, report=Reporter(quiet=True))
    assert again.skipped and again.ami_id == manifest.ami_id


def test_a_second_local_cloud_never_takes_the_firsts_endpoint_for_its_own(cloud, tmp_path, monkeypatch):
    """Two data dirs on one machine (a user's second project, parallel tests) racing for one free
    port: the loser's server cannot bind it while the winner's answers there. The loser must not
    take the winner's EC2 for its own; it starts again on another port."""
    from bakery.local import endpoint

    first = cloud.endpoint.state()
    picks = iter([first.port])  # the race, made certain: the probe found the port free, then lost it
    real_pick = endpoint._pick_port
    monkeypatch.setattr(endpoint, "_pick_port", lambda preferred: next(picks, None) or real_pick(preferred))
    other = endpoint.Endpoint(tmp_path / "other")
    other.dir.mkdir(parents=True)
    try:
        url = other.up([])
        assert url != first.url and other.running_url() == url
        assert cloud.endpoint.running_url() == first.url  # each still knows its own
    finally:
        other.down()


def test_a_failing_step_leaves_no_sandbox(cloud, settings):
    write_recipe(settings.recipes, "t4", RECIPE.format(extra="  - name: fails\n    shell: exit 9\n"))
    with pytest.raises(StepFailed, match="fails exited with status 9"):
        bake(settings, "t4", {}, report=Reporter(quiet=True))
    assert_no_sandboxes(cloud)
    ec2 = open_cloud(settings).ec2.client
    live = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] != "terminated"]
    assert live == []


def test_an_instance_whose_image_cannot_boot_ends_terminated_with_the_reason(cloud, settings):
    """As on EC2: RunInstances answers, then the instance goes to terminated, its state reason saying why."""
    write_recipe(settings.recipes, "t5", RECIPE.format(extra=""))
    manifest = bake(settings, "t5", {}, report=Reporter(quiet=True))
    layer = cloud.layers.layer_file(manifest.ami_id)
    layer.write_bytes(layer.read_bytes()[:100])
    ec2 = open_cloud(settings).ec2
    iid = ec2.client.run_instances(ImageId=manifest.ami_id, InstanceType="t3.micro", MinCount=1,
                                   MaxCount=1)["Instances"][0]["InstanceId"]
    with pytest.raises(CloudError, match=f"is terminated instead of running: Server.InternalError: .*"
                                         f"layer for {manifest.ami_id} is missing or corrupt"):
        ec2.wait_instance_state(iid, "running", timeout=60)
    assert ec2.describe_instance(iid)["StateReason"]["Code"] == "Server.InternalError"
    # its console says why too (GetConsoleOutput: through plain boto3, bakery never calls it)
    plain = boto3.client("ec2", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                         aws_access_key_id="local", aws_secret_access_key="local")
    console = plain.get_console_output(InstanceId=iid)["Output"]
    assert "the instance did not boot: " in console and f"layer for {manifest.ami_id} is missing or corrupt" in console
    assert_no_sandboxes(cloud)


def test_deregistering_an_image_removes_its_layer(cloud, settings):
    write_recipe(settings.recipes, "t6", RECIPE.format(extra=""))
    manifest = bake(settings, "t6", {}, report=Reporter(quiet=True))
    assert (cloud.layers.root / manifest.ami_id).is_dir()
    open_cloud(settings).ec2.deregister_image(manifest.ami_id)
    assert not (cloud.layers.root / manifest.ami_id).exists()


def cli(args: list[str], cloud, settings, timeout: float = 600,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(cloud.data_dir),
           "INVOKE_BAKERY_STATE_DIR": str(settings.state), **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_shipped_user_data_passes_the_real_cloud_init_schema_check(cloud, tmp_path):
    """`cloud-init schema -c` of Debian's cloud-init (the base image's own) on every rendered cloud-config."""
    import email

    from bakery.config.environment import list_environments, load_environment
    from bakery.render.tier import render_tier

    rootfs = Path(str(cloud.layers.meta(cloud.ensure_base())["path"]))
    settings = Settings(cloud="local", project_dir=ROOT)
    checked = 0
    for name in list_environments(settings.envs):
        env = load_environment(settings.envs, name)
        for tier in env.tiers:
            user_data = render_tier(settings, env, tier, "ami-00000000000000000", "us-east-1")
            if user_data is None:
                continue
            msg = email.message_from_string(user_data.text)
            parts = [p.get_payload() for p in msg.walk() if p.get_content_type() == "text/cloud-config"] \
                if msg.is_multipart() else [user_data.text]
            for i, text in enumerate(p for p in parts if p.startswith("#cloud-config")):
                path = tmp_path / f"{name}-{tier}-{i}.yaml"
                path.write_text(text)
                out = subprocess.run(
                    ["unshare", "-m", "--propagation", "private", "sh", "-c",
                     'mount --bind "$1" "$2/mnt" && chroot "$2" cloud-init schema -c "/mnt/$3"', "sh",
                     str(tmp_path), str(rootfs), path.name], capture_output=True, text=True, timeout=60)
                assert out.returncode == 0 and "Valid cloud-config" in out.stdout, (path.name, out.stdout, out.stderr)
                checked += 1
    assert checked >= 7


def test_a_sandbox_whose_sshd_never_starts_times_out_and_leaves_nothing(cloud, settings):
    write_recipe(settings.recipes, "nossh", RECIPE.format(extra="  - name: break sshd\n    shell: rm -f /usr/sbin/sshd\n"))
    broken = bake(settings, "nossh", {}, report=Reporter(quiet=True))
    body = RECIPE.format(extra="").replace('filter: {name: "debian-12-amd64-*", owners: ["136693071363"]}',
                                           f"ami: {broken.ami_id}").replace("timeout: 60", "timeout: 5")
    write_recipe(settings.recipes, "onbroken", body)
    with pytest.raises(WaitTimeout, match="waiting for SSH on builder i-"):
        bake(settings, "onbroken", {}, report=Reporter(quiet=True))
    assert_no_sandboxes(cloud)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_local_bake_leaves_no_sandbox(cloud, settings, sig):
    write_recipe(settings.recipes, "slow", RECIPE.format(extra="  - name: long\n    shell: echo started; sleep 60\n"))
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(cloud.data_dir),
           "INVOKE_BAKERY_STATE_DIR": str(settings.state), "INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes)}
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "bake", "--recipe", "slow"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "long | started" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    try:
        assert "long | started" in seen, seen
        assert len(cloud.sandboxes()) == 1, [box.name for box in cloud.sandboxes()]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err
    assert_no_sandboxes(cloud)


FAILOVER_ENV = """\
network:
  vpc: {cidr: 10.40.0.0/16}
  subnets:
    front: {cidr: 10.40.1.0/24, az: us-east-1a}
    back: {cidr: 10.40.2.0/24, az: us-east-1a}
  security_groups:
    any: {ingress: [{protocol: all, cidr: 10.40.0.0/16}]}
tiers:
  app:
    image: {recipe: t7}
    instance_type: t3.small
    count: 1
    standby: 1
    interfaces:
      - {device_index: 0, subnet: back, security_groups: [any]}
      - {device_index: 1, subnet: front, security_groups: [any], private_ip: 10.40.1.20, persistent: true}
    user_data: {parts: [who.yaml.j2]}
    health_check: {type: http, port: 8080, path: /, timeout: 60}
"""

WHO = """\
#cloud-config
runcmd:
  - [sh, -c, 'mkdir -p /srv/who && hostname > /srv/who/index.html && cd /srv/who && (nohup python3 -m http.server 8080 >/dev/null 2>&1 &)']
"""


def test_a_client_keeps_the_same_address_and_mac_through_an_eni_failover(cloud, settings, tmp_path):
    """The seed's HA pattern, for real: the app's ENI (IP and MAC) moves to the hot standby."""
    import threading

    from bakery.launch.run import launch
    from bakery.network import failover

    write_recipe(settings.recipes, "t7", RECIPE.format(extra=""))
    bake(settings, "t7", {}, report=Reporter(quiet=True))
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/ha.yaml").write_text(FAILOVER_ENV)
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata/who.yaml.j2").write_text(WHO)
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=tmp_path, recipes_dir=settings.recipes,
                        envs_dir=tmp_path / "envs", userdata_dir=tmp_path / "userdata", state_dir=settings.state)
    report = launch(settings, "ha", report=Reporter(quiet=True))
    slots = {r.slot: r for r in report.instances}
    active, standby = slots["0"], slots["standby-0"]
    ec2 = open_cloud(settings).ec2
    front = ec2.client.describe_subnets(Filters=[{"Name": "tag:bakery:network-name", "Values": ["subnet/front"]}])
    client = cloud.fabric.client(front["Subnets"][0]["SubnetId"], "10.40.1.50", "ha")
    try:
        def ask() -> str:
            out = subprocess.run(["ip", "netns", "exec", client, "curl", "-s", "-m", "0.3", "http://10.40.1.20:8080/"],
                                 capture_output=True, text=True)
            return out.stdout.strip()

        def host(instance) -> str:
            return Sandbox.attach(instance.instance_id, cloud.instances_dir).exec(["hostname"], timeout=10).stdout.strip()

        assert ask() == host(active)
        mac_before = subprocess.run(["ip", "-n", client, "neigh", "show", "10.40.1.20"], capture_output=True,
                                    text=True).stdout.split("lladdr")[1].split()[0]
        answers: list[tuple[float, str]] = []
        stop = threading.Event()

        def poll():  # a client that keeps talking to the same address during the failover
            while not stop.is_set() and len(answers) < 2000:
                answers.append((time.monotonic(), ask()))
        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.2)
        started = time.monotonic()
        from bakery.config.environment import load_environment
        moved = failover(ec2, load_environment(settings.envs, "ha"), "app", None, Reporter(quiet=True))
        deadline = time.monotonic() + 10
        target = host(standby)
        while not any(t > started and a == target for t, a in answers) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        poller.join()
        first_good = min(t for t, a in answers if t > started and a == target)
        print(f"\nENI failover: API {moved.seconds:.3f}s, client's first good answer {first_good - started:.3f}s "
              f"after failover start")
        assert moved.to_instance == standby.instance_id
        assert ask() == target
        mac_after = subprocess.run(["ip", "-n", client, "neigh", "show", "10.40.1.20"], capture_output=True,
                                   text=True).stdout.split("lladdr")[1].split()[0]
        assert mac_after == mac_before
    finally:
        cloud.fabric.remove_client("ha")
        terminate(open_cloud(settings).ec2, [r.instance_id for r in report.instances])
    assert_no_sandboxes(cloud)


READINESS_ENV = """\
tiers:
  fine:
    image: {recipe: t9}
    user_data: {parts: [fine.yaml]}
  broken:
    image: {recipe: t9}
    user_data: {parts: [broken.yaml]}
"""


def test_without_a_health_check_an_instance_is_ready_when_cloud_init_finished_and_a_failed_module_fails_the_launch(
        cloud, settings, tmp_path):
    """No check declared: on the local cloud readiness is cloud-init finished without a failed module
    (its console says so); a failing module fails the launch naming the instance and the module,
    never 'ready'."""
    write_recipe(settings.recipes, "t9", RECIPE.format(extra=""))
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/ready.yaml").write_text(READINESS_ENV)
    (tmp_path / "envs/fine.yaml").write_text(READINESS_ENV.split("  broken:")[0])
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata/fine.yaml").write_text("#cloud-config\nruncmd:\n  - [touch, /run/configured]\n")
    (tmp_path / "userdata/broken.yaml").write_text("#cloud-config\nruncmd:\n  - [sh, -c, 'exit 3']\n")
    env = {"INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes), "INVOKE_BAKERY_ENVS_DIR": str(tmp_path / "envs"),
           "INVOKE_BAKERY_USERDATA_DIR": str(tmp_path / "userdata")}
    assert cli(["bake", "--recipe", "t9"], cloud, settings, extra_env=env).returncode == 0

    out = cli(["launch", "--env", "fine", "--json"], cloud, settings, extra_env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (inst,) = json.loads(out.stdout)["instances"]
    assert inst["health"] == "cloud-init done" and inst["ready_s"] > 0
    assert Sandbox.attach(inst["instance_id"], cloud.instances_dir).exec(
        ["test", "-e", "/run/configured"], timeout=10).returncode == 0
    terminate(open_cloud(settings).ec2, [inst["instance_id"]])

    out = cli(["launch", "--env", "ready"], cloud, settings, extra_env=env)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: i-") and "cloud-init finished with failed module(s): scripts-user" in last, last
    assert "ready" not in out.stdout


VANTAGE_ENV = """\
network:
  vpc: {cidr: 10.50.0.0/16}
  subnets:
    front: {cidr: 10.50.1.0/24, az: us-east-1a, public: true}
    back: {cidr: 10.50.2.0/24, az: us-east-1a}
  internet_gateway: true
  route_tables:
    public: {subnets: [front], routes: [{cidr: 0.0.0.0/0, internet_gateway: true}]}
  security_groups:
    client: {description: "the client tier: no inbound"}
    web: {ingress: [{protocol: tcp, ports: 8080, cidr: 0.0.0.0/0}]}
    svc: {ingress: [{protocol: tcp, ports: 8080, group: client}]}
tiers:
  client:
    image: {recipe: t9}
    interfaces: [{device_index: 0, subnet: front, security_groups: [client]}]
    user_data: {parts: [who.yaml.j2]}
  web:
    image: {recipe: t9}
    interfaces: [{device_index: 0, subnet: front, security_groups: [web]}]
    user_data: {parts: [who.yaml.j2]}
    health_check: {type: http, port: 8080, path: /, address: public_ip, timeout: 60}
  svc:
    image: {recipe: t9}
    interfaces: [{device_index: 0, subnet: back, security_groups: [svc]}]
    user_data: {parts: [who.yaml.j2]}
    health_check: {type: http, port: 8080, path: /, from: client, timeout: 60}
"""


def test_health_checks_are_made_from_where_the_environment_says_and_pass_only_through_its_rules(
        cloud, settings, tmp_path):
    """web is checked at its public address from the internet (its group lets in 0.0.0.0/0), svc
    from a client instance (its group lets in only the client group). The same svc checked from
    outside any instance, or from web, gets no answer: the check crosses the security groups."""
    from bakery.config.environment import load_environment
    from bakery.launch.health import TierCheck

    write_recipe(settings.recipes, "t9", RECIPE.format(extra=""))
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/vantage.yaml").write_text(VANTAGE_ENV)
    # the same environment where svc's check names no vantage: made from its subnet, in no group
    (tmp_path / "envs/closed.yaml").write_text(VANTAGE_ENV.replace("10.50.", "10.51.").replace(
        ", from: client, timeout: 60}", ", timeout: 8}"))
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata/who.yaml.j2").write_text(WHO)
    env = {"INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes), "INVOKE_BAKERY_ENVS_DIR": str(tmp_path / "envs"),
           "INVOKE_BAKERY_USERDATA_DIR": str(tmp_path / "userdata")}
    out = cli(["bake", "--recipe", "t9"], cloud, settings, extra_env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    out = cli(["launch", "--env", "vantage", "--json"], cloud, settings, extra_env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    by_tier = {i["tier"]: i for i in json.loads(out.stdout)["instances"]}
    assert {t: i["health"] for t, i in by_tier.items()} == {
        "client": "cloud-init done", "web": "healthy", "svc": "healthy"}
    try:
        local = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=tmp_path, envs_dir=tmp_path / "envs")
        vantage, svc = load_environment(local.envs, "vantage"), by_tier["svc"]["instance_id"]
        declared = vantage.tiers["svc"].health_check
        problems = {}
        for name, change in {"outside": {"from_": None}, "web": {"from_": "web"}}.items():
            check = declared.model_copy(update=change)
            with pytest.raises(WaitTimeout) as caught:
                TierCheck(open_cloud(local), vantage, "svc", check, tmp_path).until(svc, time.monotonic() + 2)
            problems[name] = caught.value.message
        assert f"checked at {by_tier['svc']['private_ip']}:8080 from a host on subnet-" in problems["outside"]
        assert f"from {by_tier['web']['instance_id']}" in problems["web"]
        assert "timed out" in problems["outside"] and "timed out" in problems["web"]

        out = cli(["launch", "--env", "closed", "--tier", "svc"], cloud, settings, extra_env=env)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: timed out") and "to pass its http health check" in last, last
        assert "connect: timed out; checked at 10.51.2." in last and ":8080 from a host on subnet-" in last, last
    finally:
        terminate(open_cloud(settings).ec2, [i["instance_id"] for i in by_tier.values()])
    assert_no_sandboxes(cloud)


BOOTSTRAP_ENV = """\
tiers:
  boot:
    image: {recipe: tb}
    strategy: bootstrap
    user_data: {parts: [boot.yaml]}
"""


def test_a_bootstrap_tier_boots_with_its_directory_upload_intact(cloud, settings, tmp_path):
    """The bootstrap strategy carries a recipe's directory upload inside the user data (its tar
    stream gzipped and base64'd into the step's script): at first boot every file lands byte for
    byte, with the recipe's modes, in the recipe's order (a later step already sees it)."""
    import hashlib
    import random

    site = settings.recipes / "files/site"
    files = {"index.html": b"<h1>bootstrapped</h1>\n", "img/logo.bin": random.Random(15).randbytes(3000),
             "deep/er/empty": b"", "with space.txt": b"a b\n", "crlf.txt": b"x\r\ny\r\n", "no-newline": b"tail",
             "heredoc.txt": b"BAKERY_DATA\nBAKERY_STEP_1\nEOF\n"}  # its own terminators, as content
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    write_recipe(settings.recipes, "tb", RECIPE.format(extra="").split("steps:")[0] + """steps:
  - {name: before, shell: mkdir -p /srv && echo first > /srv/order}
  - {name: site, upload: {source: files/site, dest: /srv/site, mode: "0640", dir_mode: "0750"}}
  - {name: after, shell: 'test -s /srv/site/img/logo.bin && echo second >> /srv/order'}
""")
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/boot.yaml").write_text(BOOTSTRAP_ENV)
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata/boot.yaml").write_text("#cloud-config\nruncmd:\n  - [touch, /run/configured]\n")
    env = {"INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes), "INVOKE_BAKERY_ENVS_DIR": str(tmp_path / "envs"),
           "INVOKE_BAKERY_USERDATA_DIR": str(tmp_path / "userdata")}

    out = cli(["launch", "--env", "boot", "--json"], cloud, settings, extra_env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (inst,) = json.loads(out.stdout)["instances"]
    box = Sandbox.attach(inst["instance_id"], cloud.instances_dir)
    listing = box.exec(["sh", "-c", "cd /srv/site && find . -type f -print0 | xargs -0 sha256sum"], timeout=10)
    landed = {line[66:].removeprefix("./"): line[:64] for line in listing.stdout.splitlines()}
    assert landed == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    modes = box.exec(["stat", "-c", "%a %n", "/srv/site/index.html", "/srv/site/deep/er", "/srv/site"], timeout=10)
    assert modes.stdout.split("\n")[:3] == ["640 /srv/site/index.html", "750 /srv/site/deep/er", "750 /srv/site"]
    assert box.exec(["cat", "/srv/order"], timeout=10).stdout == "first\nsecond\n"
    assert box.exec(["test", "-e", "/run/configured"], timeout=10).returncode == 0  # the tier's own part ran too
    terminate(open_cloud(settings).ec2, [inst["instance_id"]])


def test_the_local_cloud_keeps_images_evidence_in_its_own_bucket_across_a_restart(cloud, settings, tmp_path):
    """An account's S3, as any client sees it: open_cloud makes the local cloud's evidence bucket,
    and what is kept there is still there after the endpoint restarts."""
    from bakery.evidence.store import EvidenceStore

    ec2 = open_cloud(settings).ec2
    assert ec2.settings.evidence_bucket == "bakery-evidence"
    sha256 = EvidenceStore(ec2, tmp_path / "first").keep("ami-0123456789abcdef0", "sbom", b'{"bomFormat": "x"}')
    cloud.down()
    cloud.up()
    again = EvidenceStore(open_cloud(settings).ec2, tmp_path / "second")
    assert again.find("ami-0123456789abcdef0", "sbom", sha256) == b'{"bomFormat": "x"}'
    s3 = boto3.client("s3", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1", aws_access_key_id="local",
                      aws_secret_access_key="local")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bakery-evidence", Prefix="images/ami-0123456789abcdef0/")
            ["Contents"]]
    assert keys == [f"images/ami-0123456789abcdef0/sbom/{sha256}"]  # as any S3 client sees it


def test_a_silent_step_on_a_real_machine_gets_heartbeats_naming_it_before_its_closing_line(cloud, settings):
    """Issue 20: with stderr not a terminal (CI, a pipe). The interval is a setting: 1 s here, for a
    step silent 4 s; at the default 30 s, a step silent 70 s gets two the same way."""
    write_recipe(settings.recipes, "quiet", 'source:\n  filter: {name: "debian-12-amd64-*", owners: ["136693071363"]}\n'
                 "builder:\n  ssh: {user: admin, timeout: 60}\n"
                 "steps:\n  - {name: think, shell: 'sleep 4 && echo thought'}\n")
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(cloud.data_dir),
           "INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes), "INVOKE_BAKERY_STATE_DIR": str(settings.state),
           "INVOKE_BAKERY_HEARTBEAT": "1"}
    done = subprocess.run([sys.executable, "-m", "invoke", "bake", "--recipe", "quiet", "--no-cache"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    closing = next(i for i, line in enumerate(lines) if line.startswith("[quiet] ✓ step 1/1: think: ok"))
    beats = [line for line in lines[:closing] if line.startswith("[quiet] … still step 1/1: think, ")]
    assert len(beats) >= 2, "\n".join(lines)
    elapsed = [int(line.rsplit(", ", 1)[1].removesuffix("s")) for line in beats]  # its elapsed time, counting
    assert elapsed == sorted(elapsed) and elapsed[0] >= 1 and elapsed[-1] > elapsed[0]
