"""Security groups, network ACLs, the source/dest check and the way out (internet gateway, NAT
gateway, Elastic IP) on the shipped `prod` environment (envs/prod.yaml), baked and launched on a
private local cloud, driven through the EC2 API.

Connections are made from inside the instances' network namespaces (the host's python3, or the
instance's own bash) and from clients the fabric adds to a subnet; listeners a test needs on the
appliance are started by the test in the appliance's namespace and stopped by PID."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest


from bakery.cloud.tags import ENVIRONMENT, SLOT, TIER, network_filters, tag_filter, tags_of
from bakery.config.settings import Settings
from bakery.local.internet import INTERNET_HOST
from bakery.local.sandbox import Sandbox
from tests.local.conftest import WHO
from tests.local.test_firewall_fabric import reach
from tests.local.test_local_cloud import cli, layer_file, layer_listing
from tests.support import HEALTH_PROBE, ROOT, longest_outage

pytestmark = pytest.mark.local

DB, APP_FRONT, APP_BACK, EDGE_OUT, EDGE_IN = "10.20.3.250", "10.20.1.20", "10.20.3.20", "10.20.1.250", "10.20.2.250"
LISTEN = ("import socket, sys\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print('ready', flush=True)\n"
          "while True:\n"
          "    c, _ = s.accept(); c.sendall(sys.argv[3].encode()); c.close()\n")


class Prod:
    """The launched environment: each slot's network namespace, a plain EC2 client (any client's
    calls count; bakery's own facade loads only the operations it uses), helpers."""

    def __init__(self, cloud, settings: Settings, report: dict, bakes: dict[str, subprocess.CompletedProcess]):
        self.cloud = cloud
        self.report = report  # `invoke launch --json`'s
        self.bakes = bakes  # each recipe's `invoke bake --json`
        self.ec2 = boto3.client("ec2", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                                aws_access_key_id="local", aws_secret_access_key="local")
        self.settings = settings
        self.ids = {(tags_of(i)[TIER], tags_of(i)[SLOT]): i["InstanceId"]
                    for r in self.ec2.describe_instances(Filters=[tag_filter(ENVIRONMENT, "prod")])["Reservations"]
                    for i in r["Instances"] if i["State"]["Name"] == "running"}
        self.listeners: list[subprocess.Popen[str]] = []

    def ns(self, tier: str, slot: str = "0") -> str:
        return self.cloud.netns(self.ids[(tier, slot)])

    def connects(self, frm: str, ip: str, port: int, src: str | None = None) -> str:
        """'connected', 'refused' (a reset) or 'timeout' (no answer), from inside namespace `frm`."""
        return reach(frm, ip, port, src=src, timeout=1.5, read=False)

    def subnet(self, name: str) -> str:
        return self.ec2.describe_subnets(Filters=network_filters("prod", "subnet", name))["Subnets"][0]["SubnetId"]

    def group(self, name: str) -> str:
        return self.ec2.describe_security_groups(Filters=network_filters("prod", "sg", name))[
            "SecurityGroups"][0]["GroupId"]

    def eni(self, ip: str) -> dict:
        return self.ec2.describe_network_interfaces(
            Filters=[{"Name": "addresses.private-ip-address", "Values": [ip]}])["NetworkInterfaces"][0]

    def listen(self, ns: str, ip: str, port: int, reply: str) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", LISTEN, ip, str(port), reply],
                                stdout=subprocess.PIPE, text=True)
        self.listeners.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        for proc in self.listeners:
            proc.kill()
            proc.wait()


def until(probe: Callable[[], str], want: str, limit: float = 10.0) -> float:
    """Seconds from now to the start of the first probe that says `want` (when the change had taken
    effect on traffic: a probe that gets no answer sent its SYN at its start), or fail after `limit`."""
    started = time.monotonic()
    while True:
        sent = time.monotonic()
        if (got := probe()) == want:
            return sent - started
        assert time.monotonic() - started < limit, f"still {got!r}, not {want!r}, after {limit} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def prod(cloud, tmp_path_factory) -> Iterator[Prod]:
    work = tmp_path_factory.mktemp("prod-firewall")
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=ROOT, state_dir=work / "state")
    bakes = {}
    for recipe in ("web", "app", "db"):
        bakes[recipe] = out = cli(["bake", "--recipe", recipe, "--json"], cloud, settings)
        assert out.returncode == 0, out.stderr[-3000:]
    out = cli(["launch", "--env", "prod", "--json"], cloud, settings)
    assert out.returncode == 0, out.stderr[-3000:]
    env = Prod(cloud, settings, json.loads(out.stdout), bakes)
    assert sorted(env.ids) == [("app", "0"), ("app", "standby-0"), ("db", "0"), ("edge", "0"), ("web", "0"),
                               ("web", "1")]
    try:
        yield env
    finally:
        env.close()  # the instances go with the module's cloud (purged)


def test_the_shipped_web_recipe_bakes_through_the_cli_into_a_clean_layer_and_is_unchanged_after(prod):
    """The Quickstart path: really installs nginx in the sandbox over SSH (needs the Debian mirror)."""
    out = prod.bakes["web"]
    manifest = json.loads(out.stdout)
    assert "install nginx | Setting up nginx" in out.stderr
    layer = prod.cloud.layers.layer_file(manifest["ami_id"])
    assert "usr/sbin/nginx" in layer_listing(layer)
    assert b"<title>bakery web</title>" in layer_file(layer, "var/www/html/index.html")
    again = cli(["bake", "--recipe", "web"], prod.cloud, prod.settings, timeout=120)
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert "launch builder" not in again.stderr


def test_the_shipped_web_images_sbom_validates_and_says_what_a_web_instance_holds(prod):
    """Issue 16: the CycloneDX 1.5 file of the `web` bake validates against the library's schema,
    lists nginx at the version dpkg reports inside a running web instance, and every file the
    recipe uploaded with the digest it has there."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from bakery.evidence.sbom import read_sbom

    manifest = json.loads(prod.bakes["web"].stdout)
    text = Path(manifest["sbom"]).read_text()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    sbom = read_sbom(Path(manifest["sbom"]))
    web = Sandbox.attach(prod.ids[("web", "0")], prod.cloud.instances_dir)
    dpkg = web.exec(["dpkg-query", "-W", "-f", "${Version}", "nginx"], timeout=10)
    assert dpkg.returncode == 0 and {p.version for p in sbom.packages if p.name == "nginx"} == {dpkg.stdout}
    site = ROOT / "recipes/files/web/site"
    uploaded = {f"/var/www/html/{p.relative_to(site)}" for p in site.rglob("*") if p.is_file()}
    files = {f.path: f.sha256 for f in sbom.files}
    assert set(files) == uploaded
    for path, sha256 in files.items():
        assert web.exec(["sha256sum", path], timeout=10).stdout.split()[0] == sha256


def test_status_of_the_launched_prod_shows_every_instance_current_and_no_drift(prod):
    out = cli(["status", "--env", "prod", "--json"], prod.cloud, prod.settings, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout)
    assert sorted((r["tier"], r["slot"], r["state"], r["outdated"]) for r in info["instances"]) == [
        ("app", "0", "running", False), ("app", "standby-0", "running", False), ("db", "0", "running", False),
        ("edge", "0", "running", False), ("web", "0", "running", False), ("web", "1", "running", False)]
    assert info["drift"] == []  # groups and ACLs exactly as envs/prod.yaml says


def test_prod_launches_to_passing_health_checks_with_its_user_data_applied_by_real_cloud_init(prod):
    """The mission end to end: the three tiers baked, prod launched; each check made from where the
    tier's clients are (web from the internet, the app from web, the database from the app)."""
    report, cloud = prod.report, prod.cloud
    health = sorted((i["tier"], i["slot"], i["health"]) for i in report["instances"])
    assert health == [("app", "0", "healthy"), ("app", "standby-0", "healthy"), ("db", "0", "healthy"),
                      ("edge", "0", "cloud-init done"), ("web", "0", "healthy"), ("web", "1", "healthy")]
    assert all(i["ready_s"] > 0 for i in report["instances"])
    web = Sandbox.attach(prod.ids[("web", "0")], cloud.instances_dir)
    env_file = web.exec(["cat", "/etc/bakery/env"], timeout=10).stdout
    assert "ENVIRONMENT=prod" in env_file and "TIER=web" in env_file
    assert "server_name www.example.com;" in web.exec(["cat", "/etc/nginx/conf.d/bakery-web.conf"], timeout=10).stdout
    assert "bakery: prod / web" in web.exec(["cat", "/etc/motd"], timeout=10).stdout
    app = Sandbox.attach(prod.ids[("app", "0")], cloud.instances_dir)
    assert app.exec(["cat", "/etc/app/app.env"], timeout=10).stdout.startswith("APP_ENV=prod")
    # the tiers talk over the VPC: web reaches the app's persistent front ENI
    via_vpc = subprocess.run(["ip", "netns", "exec", prod.ns("web"), "curl", "-s", "-m", "5",
                              f"http://{APP_FRONT}:8080/"], capture_output=True, text=True)
    assert via_vpc.stdout == "app env=prod\n"
    addrs = subprocess.run(["ip", "-n", prod.ns("app"), "-br", "addr"], capture_output=True, text=True).stdout
    assert f"{APP_FRONT}/24" in addrs and f"{APP_BACK}/24" in addrs  # dual-homed
    again = cli(["launch", "--env", "prod", "--json"], cloud, prod.settings)
    assert again.returncode == 0 and json.loads(again.stdout)["instances"] == []  # idempotent


def test_the_checks_cross_the_groups_a_check_from_elsewhere_gets_no_answer(prod):
    """The database's check, made from outside any instance (a host on its subnet) or from web
    instead of from the app, times out: db's group lets in only the app's back ENI."""
    from bakery.cloud.connect import open_cloud
    from bakery.config.environment import load_environment
    from bakery.errors import WaitTimeout
    from bakery.launch.health import TierCheck

    env = load_environment(prod.settings.envs, "prod")
    declared = env.tiers["db"].health_check
    for change, where in [({"from_": None}, "from a host on subnet-"), ({"from_": "web"}, f"from {prod.ids[('web', '0')]}")]:
        check = declared.model_copy(update=change)
        with pytest.raises(WaitTimeout) as caught:
            TierCheck(open_cloud(prod.settings), env, "db", check, ROOT).until(prod.ids[("db", "0")],
                                                                              time.monotonic() + 2)
        assert f"checked at {DB}:5432 {where}" in caught.value.message, caught.value.message


def test_web_to_db_gets_no_answer_while_the_apps_back_eni_gets_through(prod):
    web = Sandbox.attach(prod.ids[("web", "0")], prod.cloud.instances_dir)
    # with the instance's own tools: bash's /dev/tcp under timeout(1) exits 124 when nobody answers,
    # 1 at once when refused (a reset)
    probe = f"timeout 3 bash -c '</dev/tcp/{DB}/5432'; echo $?"
    assert web.exec(["bash", "-c", probe], timeout=20).stdout.strip() == "124"
    assert prod.connects(prod.ns("web"), DB, 5432) == "timeout"
    assert prod.connects(prod.ns("app"), DB, 5432) == "connected"  # from 10.20.3.20, in app-back
    app = Sandbox.attach(prod.ids[("app", "0")], prod.cloud.instances_dir)
    assert app.exec(["bash", "-c", probe], timeout=20).stdout.strip() == "0"


def test_db_to_the_apps_front_eni_gets_no_answer(prod):
    assert prod.connects(prod.ns("web"), APP_FRONT, 8080) == "connected"  # web's group may
    assert prod.connects(prod.ns("db"), APP_FRONT, 8080) == "timeout"  # db's may not (and its ACL would)


def test_an_acl_deny_blocks_what_a_group_allows(prod):
    """edge-inside lets in everything from 10.20.0.0/16; the db subnet's ACL lets out only 80, 443
    and 1024-65535: port 873 from web gets through, from db gets no answer."""
    prod.listen(prod.ns("edge"), EDGE_IN, 873, "edge")
    assert prod.connects(prod.ns("web"), EDGE_IN, 873) == "connected"
    assert prod.connects(prod.ns("db"), EDGE_IN, 873) == "timeout"


def test_replies_pass_the_groups_but_need_the_acls_ephemeral_rule(prod):
    """db connects out to the appliance on 8873: its group has no rule for the replies (stateful:
    none needed), its subnet's ACL has: ingress 110, tcp 1024-65535. Without it, no answer."""
    prod.listen(prod.ns("edge"), EDGE_IN, 8873, "edge")
    db = prod.ns("db")
    assert prod.connects(db, EDGE_IN, 8873) == "connected"
    acl = prod.ec2.describe_network_acls(Filters=[{"Name": "association.subnet-id",
                                                   "Values": [prod.subnet("db")]}])["NetworkAcls"][0]
    entry = next(e for e in acl["Entries"] if e["RuleNumber"] == 110 and not e["Egress"])
    assert (entry["RuleAction"], entry["PortRange"]) == ("allow", {"From": 1024, "To": 65535})
    prod.ec2.delete_network_acl_entry(NetworkAclId=acl["NetworkAclId"], RuleNumber=110, Egress=False)
    try:
        gone = until(lambda: prod.connects(db, EDGE_IN, 8873), "timeout")
    finally:
        prod.ec2.create_network_acl_entry(NetworkAclId=acl["NetworkAclId"], RuleNumber=110, Protocol="6",
                                          RuleAction="allow", Egress=False, CidrBlock="0.0.0.0/0",
                                          PortRange={"From": 1024, "To": 65535})
    back = until(lambda: prod.connects(db, EDGE_IN, 8873), "connected")
    print(f"\nACL entry deleted: no answer after {gone:.2f} s; recreated: answers after {back:.2f} s")


def test_an_appliance_forwards_only_with_the_source_dest_check_off(prod):
    """A client in the web subnet routes to a host in the app subnet through the edge appliance
    (edge-outside lets in 443); it forwards while both its ENIs have the check off, as prod declares."""
    fabric = prod.cloud.fabric
    outside = fabric.client(prod.subnet("web"), "10.20.1.222", "fw-outside")
    inside = fabric.client(prod.subnet("app"), "10.20.2.222", "fw-inside")
    try:
        subprocess.run(["ip", "-n", outside, "route", "add", "10.20.2.222/32", "via", EDGE_OUT], check=True)
        prod.listen(inside, "10.20.2.222", 443, "inside")
        assert prod.connects(outside, "10.20.2.222", 443) == "connected"
        for ip in (EDGE_OUT, EDGE_IN):  # either side checking stops it: it neither receives nor sends for others
            eni = prod.eni(ip)
            assert eni["SourceDestCheck"] is False
            prod.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                                        SourceDestCheck={"Value": True})
            try:
                took = until(lambda: prod.connects(outside, "10.20.2.222", 443), "timeout")
                print(f"\nsource/dest check on for {ip}: no forwarding after {took:.2f} s")
            finally:
                prod.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                                            SourceDestCheck={"Value": False})
            until(lambda: prod.connects(outside, "10.20.2.222", 443), "connected")
    finally:
        fabric.remove_client("fw-outside")
        fabric.remove_client("fw-inside")


def test_group_rules_and_memberships_changed_through_the_api_take_effect_within_seconds(prod):
    web, app = prod.ns("web"), prod.ns("app")
    db_group, web_group, back_group = prod.group("db"), prod.group("web"), prod.group("app-back")
    rule = [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web_group}]}]
    timings = {}
    prod.ec2.authorize_security_group_ingress(GroupId=db_group, IpPermissions=rule)
    try:
        timings["authorize"] = until(lambda: prod.connects(web, DB, 5432), "connected")
    finally:
        prod.ec2.revoke_security_group_ingress(GroupId=db_group, IpPermissions=rule)
    timings["revoke"] = until(lambda: prod.connects(web, DB, 5432), "timeout")

    # an ENI that joins a group (ModifyNetworkInterfaceAttribute Groups) is a member at once
    web_eni = prod.eni(prod.ec2.describe_instances(InstanceIds=[prod.ids[("web", "0")]])["Reservations"][0][
        "Instances"][0]["PrivateIpAddress"])
    prod.ec2.modify_network_interface_attribute(NetworkInterfaceId=web_eni["NetworkInterfaceId"],
                                                Groups=[web_group, back_group])
    try:
        timings["join group"] = until(lambda: prod.connects(web, DB, 5432), "connected")
    finally:
        prod.ec2.modify_network_interface_attribute(NetworkInterfaceId=web_eni["NetworkInterfaceId"],
                                                    Groups=[web_group])
    timings["leave group"] = until(lambda: prod.connects(web, DB, 5432), "timeout")

    # a secondary IP of a member counts as the member (and may be used as a source at all)
    back = prod.eni(APP_BACK)
    prod.ec2.assign_private_ip_addresses(NetworkInterfaceId=back["NetworkInterfaceId"],
                                         PrivateIpAddresses=["10.20.3.21"])
    timings["secondary IP"] = until(lambda: prod.connects(app, DB, 5432, src="10.20.3.21"), "connected")
    print("\nAPI call returned -> start of the first connection attempt that shows its effect: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    assert all(v < 3 for v in timings.values()), timings


def test_the_groups_follow_the_apps_enis_through_a_failover(prod):
    active, standby = prod.ns("app"), prod.ns("app", "standby-0")
    assert prod.connects(standby, DB, 5432) == "timeout"  # its own primary ENI is app-mgmt, not app-back
    out = cli(["failover", "--env", "prod", "--tier", "app"], prod.cloud, prod.settings)
    assert out.returncode == 0, out.stderr[-3000:]
    # the instance that gave the interfaces up passed the app's check, made from a web instance
    # at its primary address (app-mgmt lets web in on 8080): it is the new hot standby
    assert f"{prod.ids[('app', '0')]} is the new standby (standby-0)" in out.stdout, out.stdout
    until(lambda: prod.connects(standby, DB, 5432), "connected")  # the back ENI (and its group) moved
    assert prod.connects(active, DB, 5432) == "timeout"
    assert prod.connects(prod.ns("web"), APP_FRONT, 8080) == "connected"


def test_the_edges_elastic_ip_answers_from_the_internet_and_app_and_db_go_out_through_the_nat_gateway(prod):
    """prod's way out as declared: the edge's Elastic IP answers what its group lets in (443, not its
    nginx on 80); web leaves from its own public IP, db from the NAT gateway's; nothing reaches db."""
    inet = prod.cloud.internet.netns
    eip = {name: prod.ec2.describe_addresses(Filters=network_filters("prod", "eip", name))["Addresses"][0]["PublicIp"]
           for name in ("edge", "nat")}
    prod.listen(prod.ns("edge"), EDGE_OUT, 443, "edge")
    assert reach(inet, eip["edge"], 443, timeout=1.5) == "edge"
    assert prod.connects(inet, eip["edge"], 80) == "timeout"
    server = subprocess.Popen(["ip", "netns", "exec", inet, sys.executable, "-c", WHO, INTERNET_HOST, "80", "internet"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        web = prod.ec2.describe_instances(InstanceIds=[prod.ids[("web", "0")]])["Reservations"][0]["Instances"][0]
        assert reach(prod.ns("web"), INTERNET_HOST, 80, timeout=1.5) == f"internet {web['PublicIpAddress']}"
        assert reach(prod.ns("db"), INTERNET_HOST, 80, timeout=1.5) == f"internet {eip['nat']}"
        assert prod.connects(inet, eip["nat"], 5432) == "timeout"
    finally:
        server.kill()
        server.wait()


# ---- rollouts (issue 17 item 7): the tiers moved to new images while prod runs ------------------

def test_a_rollout_moves_the_app_through_its_standby_while_its_front_eni_keeps_answering(prod):
    baked = cli(["bake", "--recipe", "app", "--force", "--json"], prod.cloud, prod.settings)
    assert baked.returncode == 0, baked.stderr[-3000:]
    new_image = json.loads(baked.stdout)["ami_id"]
    probe = subprocess.Popen(["ip", "netns", "exec", prod.ns("web"), sys.executable, "-c", HEALTH_PROBE, APP_FRONT, "8080"],
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # a baseline of good probes
        out = cli(["rollout", "--env", "prod", "--tier", "app", "--json"], prod.cloud, prod.settings)
        time.sleep(1.0)
    finally:
        probe.kill()
        lines = probe.communicate()[0].splitlines()
    assert out.returncode == 0, out.stderr[-3000:]
    [app] = json.loads(out.stdout)["tiers"]
    assert (app["tier"], app["how"], app["status"], app["image_id"]) == ("app", "standby", "rolled", new_image)
    assert [m["slot"] for m in app["moves"]] == ["standby-0", "0", "standby-0"], app["moves"]
    running = {tags_of(i)[SLOT]: i["ImageId"] for r in prod.ec2.describe_instances(
        Filters=[tag_filter(ENVIRONMENT, "prod"), tag_filter(TIER, "app")])["Reservations"]
        for i in r["Instances"] if i["State"]["Name"] == "running"}
    assert running == {"0": new_image, "standby-0": new_image}
    outage, probes = longest_outage(lines)
    print(f"app rollout: {probes} probes of {APP_FRONT}:8080 from web; longest outage {outage:.3f} s; "
          f"interfaces moved in {app['moves'][1]['failover_s']:.3f} s")
    assert probes > 50 and outage < 1.0
    status = json.loads(cli(["status", "--env", "prod", "--json"], prod.cloud, prod.settings, timeout=120).stdout)
    assert not any(r["outdated"] for r in status["instances"])  # no longer marked: every tier on its newest


SHOP = """
  shop:                                    # web's image as an Auto Scaling group (issue 17 item 7)
    image: {recipe: web}
    instance_type: t3.small
    count: 2
    subnets: [web]
    security_groups: [web]
    auto_scaling: {min: 1, max: 3, health_check_grace: 30, min_healthy_percentage: HEALTHY, instance_warmup: WARMUP}
    user_data:
      parts: [web.yaml.j2, scripts/motd.sh.j2]
      variables: {server_name: shop.example.com, app_upstream: 10.20.1.20:8080}
    health_check: {type: http, port: 80, path: /health, address: public_ip, timeout: 120}
"""
FLEET_PROBE = ("import socket, sys, threading\n"
               "def ok(ip, out, n):\n"
               "    try:\n"
               "        s = socket.create_connection((ip, 80), timeout=1.0); s.settimeout(1.0)\n"
               "        s.sendall(b'GET /health HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'); out[n] = int(b' 200 ' in s.recv(64))\n"
               "        s.close()\n"
               "    except OSError:\n"
               "        out[n] = 0\n"
               "for line in sys.stdin:\n"
               "    ips = line.split(); out = [0] * len(ips)\n"
               "    ts = [threading.Thread(target=ok, args=(ip, out, n)) for n, ip in enumerate(ips)]\n"
               "    [t.start() for t in ts]; [t.join() for t in ts]\n"
               "    print(' '.join(map(str, out)), flush=True)\n")


def prod_with_shop(envs: Path, warmup: int, web_check_timeout: int = 120, min_healthy: int = 50) -> Path:
    """A copy of envs/prod.yaml in `envs` with the group tier `shop` added (and web's and shop's
    checks shortened)."""
    envs.mkdir(exist_ok=True)
    shop = SHOP.replace("WARMUP", str(warmup)).replace("HEALTHY", str(min_healthy))
    text = (ROOT / "envs/prod.yaml").read_text().replace("\ntiers:\n", "\ntiers:" + shop, 1)
    (envs / "prod.yaml").write_text(text.replace("address: public_ip, timeout: 120",
                                                 f"address: public_ip, timeout: {web_check_timeout}"))
    return envs


class FleetProbe:
    """Rounds of health probes of every running instance of some tiers, from the internet at their
    public addresses: each round lists the tiers' instances anew (any client's DescribeInstances)
    and probes them all at once; `floor()` is the fewest of a tier that answered in any round."""

    def __init__(self, prod: Prod, tiers: tuple[str, ...]):
        import threading

        self.prod, self.tiers = prod, tiers
        self.rounds: list[dict[str, int]] = []
        self.proc = subprocess.Popen(["ip", "netns", "exec", prod.cloud.internet.netns, sys.executable, "-c",
                                      FLEET_PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        while not self.stop.is_set():
            found = [(tags_of(i)[TIER], i["PublicIpAddress"]) for r in self.prod.ec2.describe_instances(
                Filters=[tag_filter(ENVIRONMENT, "prod"), tag_filter(TIER, *self.tiers),
                         {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"]
                for i in r["Instances"] if i.get("PublicIpAddress")]
            self.proc.stdin.write(" ".join(ip for _, ip in found) + "\n")
            self.proc.stdin.flush()
            answers = self.proc.stdout.readline().split()
            seen = {tier: 0 for tier in self.tiers}
            for (tier, _), ok in zip(found, answers):
                seen[tier] += int(ok)
            self.rounds.append(seen)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.proc.kill()
        self.proc.wait()

    def floor(self, tier: str) -> int:
        return min(r[tier] for r in self.rounds)


def test_a_rollout_moves_a_plain_tier_and_an_auto_scaling_tier_their_checks_passing_throughout(prod, tmp_path):
    """web (two slots, surge) and `shop`, web's image as an Auto Scaling group of two rolled by an
    instance refresh keeping 50 % in service: probed from the internet all along, web never has
    fewer than its two instances answering, the group never fewer than one."""
    # the warmup covers a new instance's way to serving (its user data restarts nginx) with room
    # for a loaded machine: the refresh's next batch does not wait for bakery's check (group.py)
    extra = {"INVOKE_BAKERY_ENVS_DIR": str(prod_with_shop(tmp_path / "envs", warmup=30))}
    out = cli(["launch", "--env", "prod", "--tier", "shop", "--json"], prod.cloud, prod.settings, extra_env=extra)
    assert out.returncode == 0, out.stderr[-3000:]
    launched = json.loads(out.stdout)["instances"]
    assert [(i["tier"], i["slot"], i["health"]) for i in launched] == [("shop", "group", "healthy")] * 2
    baked = cli(["bake", "--recipe", "web", "--force", "--json"], prod.cloud, prod.settings)
    assert baked.returncode == 0, baked.stderr[-3000:]
    new_image = json.loads(baked.stdout)["ami_id"]
    probe = FleetProbe(prod, ("web", "shop"))
    try:
        time.sleep(1.0)
        web_out = cli(["rollout", "--env", "prod", "--tier", "web", "--json"], prod.cloud, prod.settings,
                      extra_env=extra)
        shop_out = cli(["rollout", "--env", "prod", "--tier", "shop", "--json"], prod.cloud, prod.settings,
                       extra_env=extra)
        time.sleep(1.0)
    finally:
        probe.close()
    assert web_out.returncode == 0, web_out.stderr[-3000:]
    assert shop_out.returncode == 0, shop_out.stderr[-3000:]
    print(f"rollout of web and shop: {len(probe.rounds)} rounds of probes; fewest answering: "
          f"web {probe.floor('web')}, shop {probe.floor('shop')}")
    assert len(probe.rounds) > 50 and probe.floor("web") >= 2 and probe.floor("shop") >= 1

    [web] = json.loads(web_out.stdout)["tiers"]
    assert (web["how"], web["status"], [m["slot"] for m in web["moves"]]) == ("surge", "rolled", ["0", "1"])
    log = web_out.stderr.splitlines()
    for move in web["moves"]:  # its check (from the internet, at its public address) passed, then the old went
        healthy = next(n for n, line in enumerate(log) if "health checks" in line and f"web[{move['slot']}]" in line
                       and n > next(k for k, x in enumerate(log) if f"launch web slot {move['slot']}" in x))
        gone = next(n for n, line in enumerate(log) if f"terminate {move['old']}" in line)
        assert healthy < gone
    [shop] = json.loads(shop_out.stdout)["tiers"]
    assert (shop["how"], shop["status"], shop["image_id"]) == ("instance refresh", "rolled", new_image)
    assert [m["slot"] for m in shop["moves"]] == ["group", "group"], shop["moves"]
    assert "start instance refresh of bakery-prod-shop" in shop_out.stderr
    running = {(tags_of(i)[TIER], i["InstanceId"]): i["ImageId"] for r in prod.ec2.describe_instances(
        Filters=[tag_filter(ENVIRONMENT, "prod"), tag_filter(TIER, "web", "shop")])["Reservations"]
        for i in r["Instances"] if i["State"]["Name"] == "running"}
    assert sorted(t for t, _ in running) == ["shop", "shop", "web", "web"] and set(running.values()) == {new_image}
    assert {m["new"] for m in shop["moves"]} == {iid for t, iid in running if t == "shop"}


def test_a_rollout_whose_new_instance_fails_its_check_leaves_the_tier_as_it_was(prod, tmp_path):
    """A web image whose nginx never starts: the new instance fails web's check (made from the
    internet) and goes; both web slots keep their instances. The group `shop` on the same image: its
    refresh's first new instance fails the check and the refresh is rolled back before its next
    batch (the warmup outlasts the check); the group is back on its version and image. (The checks'
    timeouts are shortened in a copy of envs/prod.yaml: the same environment, a quicker verdict.)"""
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    web = (ROOT / "recipes/web.yaml").read_text().replace(
        "\nimage:\n", "\n  - {name: break nginx, shell: 'systemctl mask nginx'}\nimage:\n", 1)
    (recipes / "web.yaml").write_text(web)
    for name in ("common.yaml", "base.yaml"):
        (recipes / name).write_text((ROOT / "recipes" / name).read_text())
    for tree in ("files", "scripts"):
        shutil.copytree(ROOT / "recipes" / tree, recipes / tree)
    envs = prod_with_shop(tmp_path / "envs", warmup=40, web_check_timeout=20)
    extra = {"INVOKE_BAKERY_RECIPES_DIR": str(recipes), "INVOKE_BAKERY_ENVS_DIR": str(envs)}
    baked = cli(["bake", "--recipe", "web", "--json"], prod.cloud, prod.settings, extra_env=extra)
    assert baked.returncode == 0, baked.stderr[-3000:]
    broken = json.loads(baked.stdout)["ami_id"]

    def live(tier: str) -> dict[str, tuple[str, str]]:
        return {f"{tags_of(i)[SLOT]} {i['InstanceId']}": (i["InstanceId"], i["ImageId"])
                for r in prod.ec2.describe_instances(Filters=[tag_filter(ENVIRONMENT, "prod"), tag_filter(TIER, tier)])[
                    "Reservations"] for i in r["Instances"] if i["State"]["Name"] in ("pending", "running")}
    before = live("web")
    out = cli(["rollout", "--env", "prod", "--tier", "web"], prod.cloud, prod.settings, extra_env=extra)
    assert out.returncode == 1
    assert f"rollout of prod tier web to {broken}:" in out.stderr and "rolled back" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert live("web") == before
    gone = [i for r in prod.ec2.describe_instances(Filters=[tag_filter(ENVIRONMENT, "prod"), tag_filter(TIER, "web"),
            {"Name": "image-id", "Values": [broken]}])["Reservations"] for i in r["Instances"]]
    assert gone and all(i["State"]["Name"] in ("terminated", "shutting-down") for i in gone)

    scaling = boto3.client("autoscaling", endpoint_url=prod.cloud.endpoint.running_url(), region_name="us-east-1",
                           aws_access_key_id="local", aws_secret_access_key="local")
    group = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["bakery-prod-shop"])["AutoScalingGroups"][0]
    images_before = {image for _, image in live("shop").values()}
    out = cli(["rollout", "--env", "prod", "--tier", "shop"], prod.cloud, prod.settings, extra_env=extra)
    assert out.returncode == 1
    assert f"rollout of prod tier shop to {broken}:" in out.stderr and "rolled the group back" in out.stderr, \
        out.stderr
    assert "Traceback" not in out.stderr
    after = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["bakery-prod-shop"])["AutoScalingGroups"][0]
    assert after["LaunchTemplate"] == group["LaunchTemplate"]
    assert len(live("shop")) == 2 and {image for _, image in live("shop").values()} == images_before

    # No warmup and nothing kept in service: the refresh replaces both at once and has succeeded
    # before their checks fail; it cannot be rolled back then, so a refresh to the old version follows.
    extra["INVOKE_BAKERY_ENVS_DIR"] = str(prod_with_shop(tmp_path / "envs-at-once", warmup=0, web_check_timeout=20,
                                                         min_healthy=0))
    out = cli(["rollout", "--env", "prod", "--tier", "shop"], prod.cloud, prod.settings, extra_env=extra)
    assert out.returncode == 1, out.stderr[-3000:]
    back = f"refresh bakery-prod-shop back to {group['LaunchTemplate']['LaunchTemplateName']}:" \
           f"{group['LaunchTemplate']['Version']}"
    assert back in out.stderr and "rolled the group back" in out.stderr, out.stderr[-3000:]
    after = scaling.describe_auto_scaling_groups(AutoScalingGroupNames=["bakery-prod-shop"])["AutoScalingGroups"][0]
    assert after["LaunchTemplate"] == group["LaunchTemplate"]
    assert len(live("shop")) == 2 and {image for _, image in live("shop").values()} == images_before
