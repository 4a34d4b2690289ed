"""Every step of the bake on its own (issue 12): the pipeline's list, its runner, and each step.

A test builds a `BakeState` holding just what its step reads, runs that step alone on a `Context`
whose clean-up stack is backed by a real ledger, and asserts what the step did: the resource it
made in the endpoint (with its tags), the state it wrote, the detail of its stage line, what it
journalled, and what unwinding the stack does with it. Unwinding is how a run ends: closing the
stack is the failure path (everything undone, in reverse); `keep_products()` first is the success
path (products kept, temporaries still undone).

Where the steps run:
  - cloud-only steps against moto in process (`mock_aws`): fastest;
  - steps whose failure is injected with tests/faults.py `Fault` against the moto server (in
    process, moto would still carry out the call the fault refuses);
  - steps that talk to the builder against a real sshd: tests/support.py `FakeBuilderHost`
    becomes the builder (or smoke instance) bakery launches in the moto server. Their fixture
    runs the earlier steps first, in pipeline order, as set-up; only the step under test is
    asserted on.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import stat
from dataclasses import dataclass

import pytest
import yaml

from bakery.bake import publish, smoke
from bakery.bake import steps as s
from bakery.bake.pipeline import run_steps, steps_for
from bakery.bake.state import BakeState, Context, Manifest, StepRecord
from bakery.cloud import tags as T
from bakery.cloud.connect import open_cloud
from bakery.cloud.images import source_image
from bakery.config.recipe import load_recipe, template_context
from bakery.config.settings import Settings
from bakery.errors import CloudError, RemoteError, StepFailed
from bakery.housekeeping.ledger import Ledger
from bakery.housekeeping.stack import CleanupStack
from bakery.progress import Reporter
from bakery.remote.ssh import HostKeyMismatch
from tests.faults import CAPACITY, Fault, Stale, scaled_backoff  # noqa: F401 - a fixture
from tests.support import moto_in_process, recipe_text, write_recipe

REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
ALLOWED = "203.0.113.7/32"  # moto in process has no endpoint URL to find the caller's address from
OK_STEP = "  - name: ok\n    shell: echo fine\n"
TIMESTAMP = "20260101000000"
INPUTS_HASH = "sha256:0123456789abcdef"
ACCOUNT = "111122223333"
SOURCE_NAME = {"Name": "name", "Values": ["test-debian-12-amd64-*"]}  # the source image the fixtures hold

# The builder's steps that come before those that talk to it: the SSH steps' set-up.
TO_SSH = (s.CreateKeyPair, s.CreateSecurityGroup, s.LaunchBuilder, s.WaitForBuilder)


# ---- the bench: one bake's state and context, for running steps one at a time ----------------

class Bench:
    """A BakeState before its first step, and a Context whose stack journals to a real ledger."""

    def __init__(self, settings: Settings, recipe):
        self.endpoint = settings.endpoint_url
        cloud = open_cloud(settings)
        self.ec2 = cloud.ec2  # bakery's facade (tests/faults.py hooks its client)
        self.client = self.raw("ec2")  # a full client, to read back what the steps made
        self.out = io.StringIO()
        report = Reporter(stream=self.out)
        build_id = f"b-{TIMESTAMP}-{secrets.token_hex(3)}"
        self.ledger = Ledger(settings.state / "ledger", build_id, f"bake {recipe.name}")
        self.stack = CleanupStack(report, self.ledger)
        self.ctx = Context(settings, cloud.ec2, cloud.dial, report, self.stack)
        # what the bake resolves before the first step
        source = source_image(self.client.describe_images(Owners=["self"], Filters=[SOURCE_NAME])["Images"][0])
        variables = recipe.resolve_vars({})
        manifest = Manifest(recipe=recipe.name, build_id=build_id, region=REGION, ami_id=None, image_name=None,
                            source_ami=source.id, inputs_hash=INPUTS_HASH, skipped=False, reason="test",
                            started_at="2026-01-01T00:00:00Z", seconds=0.0, variables=variables)
        self.state = BakeState(recipe=recipe, variables=variables, build_id=build_id,
                               context=template_context(recipe, variables, build_id, TIMESTAMP),
                               source=source, manifest=manifest)
        self.host = None  # the FakeBuilderHost playing the builder, for the SSH steps

    def raw(self, service: str, region: str = REGION):
        import boto3

        return boto3.client(service, region_name=region, endpoint_url=self.endpoint)

    def setup(self, *steps) -> None:
        """Run earlier steps of the pipeline (classes or instances) to give the step under test its state."""
        for step in steps:
            (step() if isinstance(step, type) else step).run(self.state, self.ctx)

    def records(self) -> list[dict]:
        """The ledger on disk, after its start record."""
        return [r for r in map(json.loads, self.ledger.path.read_text().splitlines()) if r["event"] != "start"]

    def journal(self) -> list[tuple]:
        """What the ledger on disk says happened: (event, kind, id, region)."""
        return [(r["event"], r["kind"], r["id"], r["region"]) for r in self.records()]

    def fail(self) -> None:
        """The run ends badly: the stack undoes everything, in reverse."""
        self.stack.close()

    def succeed(self) -> None:
        """The run ends well: products are kept, temporaries are still undone."""
        self.stack.keep_products()
        self.stack.close()

    def log(self) -> str:
        return self.out.getvalue()

    def close(self) -> None:
        self.stack.close()
        self.ledger.close()


class Benches:
    """Benches on one endpoint, each for a recipe body written as recipes/web.yaml; closed together."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.made: list[Bench] = []

    def __call__(self, body: str) -> Bench:
        write_recipe(self.settings.recipes, "web", body)
        bench = Bench(self.settings, load_recipe(self.settings.recipes, "web"))
        self.made.append(bench)
        return bench

    def __enter__(self) -> "Benches":
        return self

    def __exit__(self, *exc) -> None:
        for bench in self.made:
            bench.close()


def cloud_recipe(extra: str = "", steps: str = OK_STEP, builder: str = "") -> str:
    """tests/support.py's recipe, allowing SSH from a fixed CIDR; `builder` adds lines to its builder section."""
    text = recipe_text(22, steps, extra).replace("timeout: 20}", f"timeout: 20, allowed_cidr: {ALLOWED}}}")
    return text.replace("builder:\n", f"builder:\n{builder}")


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    """Benches on moto in process, which holds a source image to bake from."""
    with moto_in_process(tmp_path, monkeypatch, REGION) as settings:
        client = open_cloud(settings).ec2.client
        seed = plain_instance(client)
        client.create_image(InstanceId=seed["InstanceId"], Name="test-debian-12-amd64-20260101")
        client.terminate_instances(InstanceIds=[seed["InstanceId"]])
        with Benches(settings) as benches:
            yield lambda extra="", **kw: benches(cloud_recipe(extra, **kw))


@pytest.fixture
def server(moto, settings_for, tmp_path):
    """Benches on the moto server (tests/conftest.py), where tests/faults.py can refuse a call."""
    with Benches(settings_for(tmp_path / "recipes")) as benches:
        yield lambda extra="", builder="": benches(cloud_recipe(extra, builder=builder))


@pytest.fixture
def builder(moto, settings_for, tmp_path, make_builder_host):
    """Benches whose builder is a real sshd: `setup` (by default the steps up to and including
    ConnectSSH) has run, so the builder is launched, running and (by default) connected."""
    with Benches(settings_for(tmp_path / "recipes")) as benches:
        def make(steps: str = OK_STEP, extra: str = "", setup=(*TO_SSH, s.ConnectSSH), **host) -> Bench:
            builder_host = make_builder_host(fake_cloud_init=True, **host)
            bench = benches(recipe_text(builder_host.port, steps, extra))
            bench.host = builder_host
            bench.setup(*setup)
            return bench
        yield make


# ---- small readers -------------------------------------------------------------------------

def plain_instance(client) -> dict:
    """An instance bakery did not start (no tags: FakeBuilderHost leaves it alone), as RunInstances returns it."""
    images = client.describe_images(Owners=["self"])["Images"]
    image = images[0]["ImageId"] if images else "ami-0123456789abcdef0"
    return client.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]


def instance(client, iid: str) -> dict:
    return client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


def instance_state(client, iid: str) -> str:
    return instance(client, iid)["State"]["Name"]


def image_of(client, ami: str) -> dict | None:
    found = client.describe_images(ImageIds=[ami])["Images"] if ami else []
    return found[0] if found and found[0]["State"] != "deregistered" else None


def key_pairs(client) -> dict[str, dict]:
    return {k["KeyName"]: k for k in client.describe_key_pairs(IncludePublicKey=True)["KeyPairs"]}


def group_ids(client) -> set[str]:
    return {g["GroupId"] for g in client.describe_security_groups()["SecurityGroups"]}


def snapshot_ids(client) -> set[str]:
    return {x["SnapshotId"] for x in client.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def temporary_tags(bench: Bench, role: str) -> dict[str, str]:
    """The tags bakery puts on a temporary resource of this build (its expiry checked for presence)."""
    return {T.RECIPE: "web", T.BUILD_ID: bench.state.build_id, T.ROLE: role,
            "Name": f"bakery-{role}-web-{bench.state.build_id}"}


def assert_temporary(tags: dict[str, str], bench: Bench, role: str) -> None:
    assert {k: v for k, v in tags.items() if k != T.EXPIRES} == temporary_tags(bench, role)
    assert T.EXPIRES in tags


def with_image(bench: Bench) -> str:
    """Set-up: the state as WaitForImage leaves it, an available image of a plain instance."""
    bench.state.builder = plain_instance(bench.client)
    bench.setup(s.CreateImage, s.WaitForImage)
    return bench.state.image_id


def records(bench: Bench) -> list[tuple]:
    """The manifest's step records, without their timings."""
    return [(r.name, r.kind, r.status, r.exit_status, r.attempts) for r in bench.state.manifest.steps]


def stage_lines(bench: Bench) -> list[str]:
    """The stage lines of the progress log (✓/✗/!), without their durations."""
    return [line.rsplit(" (", 1)[0] if line[:1] in "✓✗" else line
            for line in bench.log().splitlines() if line[:1] in "✓✗!"]


# ---- the pipeline --------------------------------------------------------------------------

def names(steps) -> list[str]:
    return [type(step).__name__ + (f"[{step.index}]" if hasattr(step, "index") else "") for step in steps]


def test_steps_for_lists_a_plain_bake_from_key_pair_to_finished_image_with_one_step_per_recipe_step(cloud):
    bench = cloud(steps=OK_STEP + "  - name: two\n    shell: 'true'\n  - name: three\n    shell: 'true'\n")
    assert names(steps_for(bench.state.recipe)) == [
        "CreateKeyPair", "CreateSecurityGroup", "LaunchBuilder", "WaitForBuilder", "ConnectSSH", "WaitForCloudInit",
        "RunRecipeStep[0]", "Checkpoint[0]", "RunRecipeStep[1]", "Checkpoint[1]", "RunRecipeStep[2]",
        "CollectSbom", "CleanImage", "CheckForLeftovers",
        "StopBuilder", "CreateImage", "WaitForImage", "KeepSbom", "GateImage", "SignProvenance", "MarkFinished"]


def test_steps_for_a_bake_resumed_from_a_checkpoint_lists_the_steps_it_holds_as_cached_and_runs_the_rest(cloud):
    bench = cloud(steps=OK_STEP + "  - name: two\n    shell: 'true'\n  - name: three\n    shell: 'true'\n")
    listed = names(steps_for(bench.state.recipe, first=2))
    assert listed[listed.index("WaitForCloudInit") + 1:listed.index("CollectSbom")] == [
        "CachedStep[0]", "CachedStep[1]", "RunRecipeStep[2]"]


def test_steps_for_gates_smoke_tests_publishes_and_signs_an_image_before_marking_it_finished(cloud):
    extra = ("image: {ssm_parameter: /bakery/web}\n"
             "checks: {commands: [{name: hello, shell: 'true'}]}\n"
             "publish: {regions: [eu-west-1]}\n")
    listed = names(steps_for(cloud(extra).state.recipe))
    assert listed[listed.index("WaitForImage"):] == ["WaitForImage", "KeepSbom", "GateImage", "SmokeTest",
                                                    "PublishParameter", "Publish", "SignProvenance", "MarkFinished"]


@dataclass
class Noting:
    """A step of the Step protocol that notes that it ran (and can fail)."""

    title: str | None
    ran: list
    detail: str | None = None
    error: Exception | None = None

    def run(self, state, ctx):
        self.ran.append(self.title)
        if self.error is not None:
            raise self.error
        return self.detail


def test_run_steps_runs_the_steps_in_order_each_titled_one_on_its_stage_line_with_its_detail(cloud):
    bench, ran = cloud(), []
    untitled = Noting(None, ran, detail="not shown")
    run_steps([Noting("first", ran, detail="one"), untitled, Noting("third", ran)], bench.state, bench.ctx)
    assert ran == ["first", None, "third"]
    assert stage_lines(bench) == ["✓ first: one", "✓ third"]  # an untitled step reports its own stages
    assert set(bench.ctx.report.timings()) == {"first", "third"}


def test_run_steps_stops_at_the_first_failing_step_and_marks_its_stage_failed(cloud):
    bench, ran = cloud(), []
    with pytest.raises(CloudError, match="refused"):
        run_steps([Noting("first", ran), Noting("second", ran, error=CloudError("refused")), Noting("third", ran)],
                  bench.state, bench.ctx)
    assert ran == ["first", "second"]
    assert stage_lines(bench) == ["✓ first", "✗ second"]


def test_run_steps_hands_one_state_from_step_to_step(cloud):
    bench = cloud()
    run_steps([s.CreateKeyPair(), s.CreateSecurityGroup(), s.LaunchBuilder()], bench.state, bench.ctx)
    made = instance(bench.client, bench.state.builder["InstanceId"])  # launched with what the others made
    assert made["KeyName"] == bench.state.key_name
    assert [g["GroupId"] for g in made["NetworkInterfaces"][0]["Groups"]] == [bench.state.group_id]
    assert stage_lines(bench) == [f"✓ create temporary key pair: {bench.state.key_name}",
                                  f"✓ create temporary security group: {bench.state.group_id}: "
                                  f"tcp/22 from {ALLOWED} only",
                                  f"✓ launch builder: {made['InstanceId']} (t3.micro)"]


# ---- CreateKeyPair -------------------------------------------------------------------------

def test_create_key_pair_imports_only_the_public_half_tagged_temporary_and_keeps_the_private_half_here(cloud):
    bench = cloud()
    detail = s.CreateKeyPair().run(bench.state, bench.ctx)

    name = f"bakery-web-{bench.state.build_id}"
    assert detail == name and bench.state.key_name == name
    pair = key_pairs(bench.client)[name]
    assert_temporary(T.tags_of(pair), bench, "key-pair")
    assert pair["PublicKey"].split()[:2] == bench.state.login.public_openssh.split()[:2]  # imported, not generated
    key_file = bench.state.key_file
    assert key_file == bench.ctx.settings.state / "keys" / bench.state.build_id / "id_ed25519"
    assert key_file.read_text() == bench.state.login.private_openssh
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert bench.journal() == [("created", "key-file", str(key_file.parent), None),
                               ("created", "key-pair", name, REGION)]


@pytest.mark.parametrize("ending", ["fail", "succeed"])
def test_create_key_pair_is_removed_with_its_private_key_file_however_the_run_ends(cloud, ending):
    bench = cloud()
    bench.setup(s.CreateKeyPair)
    getattr(bench, ending)()
    assert key_pairs(bench.client) == {}
    assert not bench.state.key_file.parent.exists()
    assert bench.journal()[2:] == [("removed", "key-pair", bench.state.key_name, REGION),
                                   ("removed", "key-file", str(bench.state.key_file.parent), None)]


def test_create_key_pair_refused_by_ec2_still_removes_the_private_key_file_on_unwind(server):
    bench = server()
    Fault(bench.ec2.client, "ImportKeyPair", "UnauthorizedOperation", status=403, times=None)
    with pytest.raises(CloudError, match=r"import-key-pair: not authorised \(UnauthorizedOperation\)"):
        s.CreateKeyPair().run(bench.state, bench.ctx)
    assert bench.state.key_name is None
    key_dir = bench.ctx.settings.state / "keys" / bench.state.build_id
    assert key_dir.exists() and bench.journal() == [("created", "key-file", str(key_dir), None)]
    bench.fail()
    assert not key_dir.exists()
    assert bench.journal()[-1] == ("removed", "key-file", str(key_dir), None)


# ---- CreateSecurityGroup -------------------------------------------------------------------

def ingress(client, group_id: str) -> list[tuple]:
    group = client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return [(p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), [r["CidrIp"] for r in p.get("IpRanges", [])])
            for p in group["IpPermissions"]]


def test_create_security_group_admits_ssh_from_the_allowed_cidr_only_in_the_default_subnet(cloud):
    bench = cloud()
    detail = s.CreateSecurityGroup().run(bench.state, bench.ctx)

    group = bench.state.group_id
    assert detail == f"{group}: tcp/22 from {ALLOWED} only"
    assert ingress(bench.client, group) == [("tcp", 22, 22, [ALLOWED])]
    record = bench.client.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
    assert record["GroupName"] == f"bakery-web-{bench.state.build_id}"
    assert_temporary(T.tags_of(record), bench, "security-group")
    default = bench.ec2.default_subnet("test")
    assert bench.state.subnet["SubnetId"] == default["SubnetId"] and record["VpcId"] == default["VpcId"]
    assert bench.state.caller_cidr == ALLOWED
    assert bench.journal() == [("created", "security-group", group, REGION)]


def test_create_security_group_goes_in_the_recipes_subnet_when_it_names_one(cloud):
    probe = cloud()
    default = probe.ec2.default_subnet("test")
    other = [x for x in probe.client.describe_subnets()["Subnets"] if x["SubnetId"] != default["SubnetId"]][0]
    bench = cloud(builder=f"  subnet: {other['SubnetId']}\n")
    s.CreateSecurityGroup().run(bench.state, bench.ctx)
    assert bench.state.subnet["SubnetId"] == other["SubnetId"]
    group = bench.client.describe_security_groups(GroupIds=[bench.state.group_id])["SecurityGroups"][0]
    assert group["VpcId"] == other["VpcId"]


@pytest.mark.parametrize("ending", ["fail", "succeed"])
def test_create_security_group_is_deleted_however_the_run_ends(cloud, ending):
    bench = cloud()
    bench.setup(s.CreateSecurityGroup)
    getattr(bench, ending)()
    assert bench.state.group_id not in group_ids(bench.client)
    assert bench.journal()[-1] == ("removed", "security-group", bench.state.group_id, REGION)


def test_create_security_group_without_allowed_cidr_admits_the_address_this_machine_reaches_the_endpoint_from(
        moto, settings_for, tmp_path):
    with Benches(settings_for(tmp_path / "recipes")) as benches:
        bench = benches(recipe_text(22, OK_STEP))
        s.CreateSecurityGroup().run(bench.state, bench.ctx)
        assert bench.state.caller_cidr == "127.0.0.1/32"  # the moto server listens on 127.0.0.1
        assert ingress(bench.client, bench.state.group_id) == [("tcp", 22, 22, ["127.0.0.1/32"])]


def test_create_security_group_whose_ssh_rule_is_refused_is_still_deleted_on_unwind(server):
    bench = server()
    Fault(bench.ec2.client, "AuthorizeSecurityGroupIngress", "UnauthorizedOperation", status=403, times=None)
    with pytest.raises(CloudError, match=r"authorize-security-group-ingress: not authorised"):
        s.CreateSecurityGroup().run(bench.state, bench.ctx)
    group = bench.state.group_id
    assert group in group_ids(bench.client)
    bench.fail()
    assert group not in group_ids(bench.client)
    assert bench.journal() == [("created", "security-group", group, REGION),
                               ("removed", "security-group", group, REGION)]


# ---- LaunchBuilder -------------------------------------------------------------------------

def user_data(client, iid: str) -> str:
    raw = client.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(raw).decode()


def test_launch_builder_starts_the_source_image_locked_down_with_its_host_key_pinned_in_user_data(cloud):
    bench = cloud()
    bench.setup(s.CreateKeyPair, s.CreateSecurityGroup)
    detail = s.LaunchBuilder().run(bench.state, bench.ctx)

    iid = bench.state.builder["InstanceId"]
    assert detail == f"{iid} (t3.micro)"
    made = instance(bench.client, iid)
    assert made["ImageId"] == bench.state.source.id and made["InstanceType"] == "t3.micro"
    assert made["KeyName"] == bench.state.key_name and made["SubnetId"] == bench.state.subnet["SubnetId"]
    assert [g["GroupId"] for g in made["NetworkInterfaces"][0]["Groups"]] == [bench.state.group_id]
    assert made["MetadataOptions"]["HttpTokens"] == "required"
    assert made["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert_temporary(T.tags_of(made), bench, "builder")
    pinned, config = bench.state.builder_host_key, user_data(bench.client, iid)
    assert config.startswith("#cloud-config\n")
    assert yaml.safe_load(config)["ssh_keys"] == {"ed25519_private": pinned.private_openssh,
                                                  "ed25519_public": pinned.public_openssh}
    shutdown = bench.client.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    assert bench.journal()[-1] == ("created", "instance", iid, REGION)


@pytest.mark.parametrize("ending", ["fail", "succeed"])
def test_launch_builder_is_terminated_however_the_run_ends(cloud, ending):
    bench = cloud()
    bench.setup(s.CreateKeyPair, s.CreateSecurityGroup, s.LaunchBuilder)
    iid = bench.state.builder["InstanceId"]
    getattr(bench, ending)()
    assert instance_state(bench.client, iid) == "terminated"
    assert ("removed", "instance", iid, REGION) in bench.journal()


def test_launch_builder_falls_back_to_the_next_instance_type_on_a_capacity_error(server):
    bench = server()
    bench.setup(s.CreateKeyPair, s.CreateSecurityGroup)
    refused = Fault(bench.ec2.client, "RunInstances", **CAPACITY, times=1)
    detail = s.LaunchBuilder().run(bench.state, bench.ctx)

    assert refused.calls == 2 and detail.endswith("(t3.small)")
    assert "! run-instances (t3.micro): InsufficientInstanceCapacity: We currently do not have sufficient capacity; " \
           "trying the next instance type" in bench.log()
    builders = bench.ec2.instances(T.tag_filter(T.BUILD_ID, bench.state.build_id))
    assert [(i["InstanceId"], i["InstanceType"]) for i in builders] == [(bench.state.builder["InstanceId"], "t3.small")]
    assert [e for e in bench.journal() if e[1] == "instance"] == [
        ("created", "instance", bench.state.builder["InstanceId"], REGION)]


def test_a_spot_builder_falls_back_across_types_then_to_on_demand_and_the_manifest_says_which(server):
    bench = server(builder="  market: spot\n")
    bench.setup(s.CreateKeyPair, s.CreateSecurityGroup)
    spot = lambda params: params.get("InstanceMarketOptions.MarketType") == "spot"  # noqa: E731
    refused = Fault(bench.ec2.client, "RunInstances", **CAPACITY, times=None, match=spot)
    detail = s.LaunchBuilder().run(bench.state, bench.ctx)

    assert refused.calls == 2 and detail.endswith("(t3.micro)")  # both types as spot, then t3.micro on demand
    log = bench.log()
    assert "! run-instances (t3.micro spot): InsufficientInstanceCapacity: We currently do not have sufficient " \
           "capacity; trying the next instance type" in log
    assert "! run-instances (t3.small spot): InsufficientInstanceCapacity: We currently do not have sufficient " \
           "capacity; trying on-demand instances" in log
    assert bench.state.manifest.builder == {"instance_type": "t3.micro", "market": "on-demand"}
    builders = bench.ec2.instances(T.tag_filter(T.BUILD_ID, bench.state.build_id))
    assert [i["InstanceId"] for i in builders] == [bench.state.builder["InstanceId"]]


def test_a_spot_builder_with_capacity_is_a_one_time_spot_instance(server):
    bench = server(builder="  market: spot\n")
    bench.setup(s.CreateKeyPair, s.CreateSecurityGroup)
    detail = s.LaunchBuilder().run(bench.state, bench.ctx)
    assert detail.endswith("(t3.micro, spot)")
    assert bench.state.manifest.builder == {"instance_type": "t3.micro", "market": "spot"}
    (builder,) = bench.ec2.instances(T.tag_filter(T.BUILD_ID, bench.state.build_id))
    assert builder.get("InstanceLifecycle") == "spot"


def test_launch_builder_with_no_capacity_for_any_type_fails_having_started_nothing(server):
    bench = server()
    bench.setup(s.CreateKeyPair, s.CreateSecurityGroup)
    Fault(bench.ec2.client, "RunInstances", **CAPACITY, times=None)
    with pytest.raises(CloudError, match="no capacity for any of t3.micro, t3.small: run-instances \\(t3.small\\)"):
        s.LaunchBuilder().run(bench.state, bench.ctx)
    assert bench.state.builder is None
    assert bench.ec2.instances(T.tag_filter(T.BUILD_ID, bench.state.build_id)) == []
    assert not [e for e in bench.journal() if e[1] == "instance"]


# ---- WaitForBuilder ------------------------------------------------------------------------

def test_wait_for_builder_replaces_the_launch_record_with_the_running_instances(cloud):
    bench = cloud()
    launched = plain_instance(bench.client)
    bench.state.builder = launched  # RunInstances' answer: pending
    assert launched["State"]["Name"] == "pending"
    assert s.WaitForBuilder().run(bench.state, bench.ctx) is None
    assert bench.state.builder["InstanceId"] == launched["InstanceId"]
    assert bench.state.builder["State"]["Name"] == "running"  # the record ConnectSSH dials from
    assert bench.journal() == []  # it makes nothing


def test_wait_for_builder_fails_when_the_builder_is_terminated_instead(cloud):
    bench = cloud()
    bench.state.builder = plain_instance(bench.client)
    iid = bench.state.builder["InstanceId"]
    bench.client.terminate_instances(InstanceIds=[iid])
    with pytest.raises(CloudError, match=rf"instance {iid} is terminated instead of running"):
        s.WaitForBuilder().run(bench.state, bench.ctx)


# ---- ConnectSSH ----------------------------------------------------------------------------

def test_connect_ssh_verifies_the_pinned_host_key_and_hangs_up_on_unwind(builder):
    bench = builder(setup=TO_SSH)
    journalled = bench.journal()
    detail = s.ConnectSSH().run(bench.state, bench.ctx)

    connector, iid = bench.state.connector, bench.state.builder["InstanceId"]
    assert detail == (f"builder {iid} (127.0.0.1:{bench.host.port}), "
                      f"host key {bench.state.builder_host_key.fingerprint()} verified")
    assert connector.transport.is_active()
    presented = connector.transport.get_remote_server_key()
    assert f"{presented.get_name()} {presented.get_base64()}" in bench.state.builder_host_key.public_openssh
    assert bench.journal() == journalled  # a connection is no cloud resource: nothing journalled
    bench.fail()
    assert connector.transport is None


def test_connect_ssh_refuses_a_server_presenting_another_host_key(builder):
    bench = builder(setup=TO_SSH, host_key_mode="other")
    with pytest.raises(HostKeyMismatch) as refused:
        s.ConnectSSH().run(bench.state, bench.ctx)
    assert refused.value.message.startswith(
        f"builder {bench.state.builder['InstanceId']} (127.0.0.1:{bench.host.port}): SSH host key mismatch: "
        f"expected {bench.state.builder_host_key.fingerprint()}, server presented SHA256:")
    assert bench.state.connector is None


# ---- WaitForCloudInit ----------------------------------------------------------------------

def test_wait_for_cloud_init_waits_for_cloud_init_to_finish_and_shows_what_it_says(builder):
    bench = builder()
    assert s.WaitForCloudInit().run(bench.state, bench.ctx) is None
    assert "  cloud-init | fake cloud-init status: ok\n" in bench.log()


def test_wait_for_cloud_init_that_did_not_finish_cleanly_fails_the_step(builder):
    bench = builder()
    bench.host.set_cloud_init("status", "fail")
    with pytest.raises(RemoteError, match=rf"builder {bench.state.builder['InstanceId']} \(127.0.0.1:\d+\): "
                                          r"cloud-init did not finish cleanly \(exit 1\)"):
        s.WaitForCloudInit().run(bench.state, bench.ctx)
    assert "  cloud-init | fake cloud-init status: fail\n" in bench.log()


# ---- RunRecipeStep -------------------------------------------------------------------------

RECIPE_STEPS = """\
  - name: greet
    shell: echo "$GREETING from $(id -un)" | tee /srv/greeting
    env: {GREETING: "{{ greeting }}"}
  - name: upload payload
    upload: {source: files/payload.bin, dest: /srv/payload.bin, mode: "0640"}
  - name: flaky
    shell: echo try >> /srv/flaky && test "$(wc -l < /srv/flaky)" -ge 2
    retries: 1
  - name: breaks
    shell: echo try >> /srv/breaks; exit 3
    retries: 1
  - name: tolerated
    shell: exit 7
    on_failure: continue
  - name: hangs
    shell: sleep 60
    timeout: 1
"""


@pytest.fixture
def recipe_steps(builder, tmp_path):
    """A builder, connected, for a recipe with RECIPE_STEPS (and its upload's source file)."""
    (tmp_path / "recipes/files").mkdir(parents=True)
    (tmp_path / "recipes/files/payload.bin").write_bytes(bytes(range(256)) * 64)
    return builder(RECIPE_STEPS, "variables:\n  greeting: {default: hello}\n")


def test_run_recipe_step_runs_a_shell_step_as_root_with_its_env_rendered_and_records_it(recipe_steps):
    bench = recipe_steps
    assert s.RunRecipeStep(0).run(bench.state, bench.ctx) is None
    assert (bench.host.fs / "srv/greeting").read_text() == "hello from root\n"
    assert "  greet | hello from root\n" in bench.log()
    assert stage_lines(bench) == ["✓ step 1/6: greet: ok"]
    assert records(bench) == [("greet", "shell", "ok", 0, 1)]
    assert isinstance(bench.state.manifest.steps[0], StepRecord)


def test_run_recipe_step_uploads_a_file_byte_exact_with_its_mode(recipe_steps):
    bench = recipe_steps
    s.RunRecipeStep(1).run(bench.state, bench.ctx)
    arrived = bench.host.fs / "srv/payload.bin"
    assert arrived.read_bytes() == (bench.state.recipe.root / "files/payload.bin").read_bytes()
    assert stat.S_IMODE(arrived.stat().st_mode) == 0o640
    assert records(bench) == [("upload payload", "upload", "ok", 0, 1)]


def test_run_recipe_step_retries_a_failing_step_and_records_the_attempts_it_took(recipe_steps):
    bench = recipe_steps
    s.RunRecipeStep(2).run(bench.state, bench.ctx)
    assert (bench.host.fs / "srv/flaky").read_text() == "try\ntry\n"
    assert stage_lines(bench) == ["! step 3/6: flaky exited with status 1; retrying (1/1)",
                                  "✓ step 3/6: flaky: ok after 2 attempts"]
    assert records(bench) == [("flaky", "shell", "ok", 0, 2)]


def test_run_recipe_step_that_fails_every_retry_fails_naming_the_recipe_file_and_the_step(recipe_steps):
    bench = recipe_steps
    with pytest.raises(StepFailed) as failed:
        s.RunRecipeStep(3).run(bench.state, bench.ctx)
    assert failed.value.message == (f"{bench.state.recipe.path}: step 4/6: breaks exited with status 3 "
                                    "after 2 attempts")
    assert (bench.host.fs / "srv/breaks").read_text() == "try\ntry\n"
    assert stage_lines(bench) == ["! step 4/6: breaks exited with status 3; retrying (1/1)", "✗ step 4/6: breaks"]
    assert records(bench) == []


def test_run_recipe_step_with_on_failure_continue_records_continued_and_does_not_stop_the_bake(recipe_steps):
    bench = recipe_steps
    s.RunRecipeStep(4).run(bench.state, bench.ctx)
    assert stage_lines(bench) == ["✓ step 5/6: tolerated: exited with status 7; continuing (on_failure: continue)"]
    assert records(bench) == [("tolerated", "shell", "continued", 7, 1)]


def test_run_recipe_step_past_its_timeout_is_stopped_and_fails(recipe_steps):
    bench = recipe_steps
    with pytest.raises(StepFailed, match=r"web.yaml: step 6/6: hangs timed out after 1s$"):
        s.RunRecipeStep(5).run(bench.state, bench.ctx)
    assert records(bench) == []


# ---- CollectSbom ---------------------------------------------------------------------------

SBOM_STEPS = """\
  - name: site
    upload: {source: files/site, dest: /srv/site, mode: "0640", owner: "root:root"}
  - name: one file
    upload: {source: files/motd, dest: /srv/etc/motd}
  - name: configure
    shell: echo "title {{ greeting }}" >> /srv/site/index.html && rm /srv/site/drop.txt
"""


@pytest.fixture
def sbom_bench(builder, tmp_path):
    """A connected builder whose recipe uploads a tree and a file, then rewrites one uploaded file
    and removes another; the recipe's steps have run."""
    site = tmp_path / "recipes/files/site"
    (site / "css").mkdir(parents=True)
    (site / "index.html").write_text("<h1>hello</h1>\n")
    (site / "css/site.css").write_text("h1 { color: red }\n")
    (site / "drop.txt").write_text("gone by the end of the bake\n")
    (site / "link").symlink_to("index.html")  # a link has no content: not a file the SBOM digests
    (tmp_path / "recipes/files/motd").write_text("baked\n")
    bench = builder(SBOM_STEPS, "variables:\n  greeting: {default: hi}\n")
    bench.setup(*(s.RunRecipeStep(i) for i in range(3)))
    return bench


def host_dpkg(package: str) -> str:
    """What dpkg on this machine (the fake builder's own system) reports for a package."""
    import subprocess

    return subprocess.run(["dpkg-query", "-W", "-f", "${Version} ${Architecture} ${source:Package}", package],
                          capture_output=True, text=True, check=True).stdout


def test_collect_sbom_writes_a_valid_cyclonedx_file_beside_the_manifest_and_records_its_digest(sbom_bench):
    import hashlib

    from bakery.evidence.sbom import read_sbom

    bench = sbom_bench
    detail = s.CollectSbom().run(bench.state, bench.ctx)

    path = bench.ctx.settings.manifests / f"web-{bench.state.build_id}.sbom.cdx.json"
    manifest = bench.state.manifest
    assert manifest.sbom == str(path)
    assert manifest.sbom_sha256 == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_sbom(path) == bench.state.sbom  # valid CycloneDX 1.5, and it reads back as collected
    assert detail == f"{bench.state.sbom.summary()}: {path.name}"
    image = bench.state.sbom.image
    assert (image.recipe, image.build_id, image.inputs_hash, image.source_ami) == (
        "web", bench.state.build_id, INPUTS_HASH, bench.state.source.id)


def test_collect_sbom_lists_every_dpkg_package_with_the_version_dpkg_reports(sbom_bench):
    bench = sbom_bench
    s.CollectSbom().run(bench.state, bench.ctx)

    packages = {p.name: p for p in bench.state.sbom.packages}
    for name in ("dpkg", "openssh-server", "coreutils"):
        version, arch, source = host_dpkg(name).split(" ")
        assert (packages[name].version, packages[name].arch, packages[name].source) == (version, arch, source)
    assert packages["openssh-server"].purl(bench.state.sbom.image).startswith("pkg:deb/debian/openssh-server@1:")


def test_collect_sbom_digests_the_files_the_uploads_brought_as_the_builder_holds_them(sbom_bench):
    import hashlib

    bench = sbom_bench
    s.CollectSbom().run(bench.state, bench.ctx)

    fs = bench.host.fs
    files = {f.path: f for f in bench.state.sbom.files}
    # the uploads' files that are still there: not the one a step removed, not the symlink
    assert sorted(files) == ["/srv/etc/motd", "/srv/site/css/site.css", "/srv/site/index.html"]
    for path, f in files.items():
        assert f.sha256 == hashlib.sha256((fs / path.lstrip("/")).read_bytes()).hexdigest()
    assert (fs / "srv/site/index.html").read_text() == "<h1>hello</h1>\ntitle hi\n"  # as a later step left it
    assert (files["/srv/site/index.html"].mode, files["/srv/site/index.html"].owner) == ("0640", "root:root")


@pytest.mark.parametrize("ending, image_kept, stays", [("fail", False, False), ("succeed", False, True),
                                                       ("fail", True, True)],
                         ids=["failed-bake", "finished-bake", "failed-bake-image-kept-for-inspection"])
def test_collect_sbom_file_goes_with_a_failed_bake_unless_its_image_is_kept(sbom_bench, ending, image_kept, stays):
    bench = sbom_bench
    s.CollectSbom().run(bench.state, bench.ctx)
    path = bench.ctx.settings.manifests / f"web-{bench.state.build_id}.sbom.cdx.json"
    if image_kept:  # as a failed smoke test keeps its image
        bench.state.image_id = "ami-0123456789abcdef0"
        bench.stack.keep("image", bench.state.image_id, REGION)
    getattr(bench, ending)()
    assert path.exists() == stays


def test_collect_sbom_digest_is_tagged_on_the_image(cloud):
    bench = cloud(IMAGE)
    bench.state.builder = plain_instance(bench.client)
    bench.state.manifest.sbom_sha256 = "sha256:" + "ab" * 32  # as CollectSbom leaves it
    s.CreateImage().run(bench.state, bench.ctx)
    assert T.tags_of(image_of(bench.client, bench.state.image_id))[T.SBOM] == "sha256:" + "ab" * 32


# ---- CleanImage ----------------------------------------------------------------------------

def test_clean_image_removes_login_and_host_keys_histories_scratch_files_and_the_machine_id(builder):
    bench = builder()
    fs = bench.host.fs
    (fs / "root/.bash_history").write_text("aws configure\n")
    (fs / "var/tmp/bakery-upload").mkdir()
    assert (fs / "root/.ssh/authorized_keys").exists() and list((fs / "etc/ssh").glob("ssh_host_*"))
    assert (fs / "etc/machine-id").read_text()

    assert s.CleanImage().run(bench.state, bench.ctx) is None
    assert not (fs / "root/.ssh/authorized_keys").exists() and not list((fs / "etc/ssh").glob("ssh_host_*"))
    assert not (fs / "root/.bash_history").exists() and not (fs / "var/tmp/bakery-upload").exists()
    assert (fs / "etc/machine-id").read_text() == ""
    assert "  hygiene | fake cloud-init clean: ok\n" in bench.log()  # cloud-init's instance state went too


def test_clean_image_fails_when_cloud_init_cannot_clean_its_state(builder):
    bench = builder()
    bench.host.set_cloud_init("clean", "fail")
    with pytest.raises(RemoteError, match=r"hygiene before the snapshot failed \(exit 1\)"):
        s.CleanImage().run(bench.state, bench.ctx)


# ---- CheckForLeftovers ---------------------------------------------------------------------

def leave_credentials(bench: Bench) -> None:
    """What a careless recipe step leaves on the builder: root's AWS credentials."""
    (bench.host.fs / "root/.aws").mkdir()
    (bench.host.fs / "root/.aws/credentials").write_text("[default]\naws_access_key_id = AKIA2EXAMPLEREALKEY7Q\n")


def test_check_for_leftovers_finds_none_after_hygiene_and_hangs_up(builder):
    bench = builder(setup=(*TO_SSH, s.ConnectSSH, s.CleanImage))
    connector = bench.state.connector
    assert s.CheckForLeftovers().run(bench.state, bench.ctx) == "none"
    assert connector.transport is None  # nothing more to do on the builder: the snapshot comes next


def test_check_for_leftovers_refuses_a_builder_holding_root_aws_credentials(builder):
    bench = builder(setup=(*TO_SSH, s.ConnectSSH, s.CleanImage))
    leave_credentials(bench)
    with pytest.raises(StepFailed) as refused:
        s.CheckForLeftovers().run(bench.state, bench.ctx)
    assert refused.value.message == (f"{bench.state.recipe.path}: refusing to snapshot: the image would carry "
                                     "/root/.aws/credentials, /root/.aws/credentials (AWS credentials); "
                                     "remove it in a step")
    bench.fail()
    assert bench.state.connector.transport is None  # the unwind hangs up


def test_check_for_leftovers_names_three_findings_and_counts_the_rest(builder):
    bench = builder()  # no hygiene: the login key and host key are still there
    leave_credentials(bench)
    with pytest.raises(StepFailed, match=r"the image would carry /root/.ssh/authorized_keys, "
                                         r"/etc/ssh/ssh_host_ed25519_key, /root/.aws/credentials and 1 more; "):
        s.CheckForLeftovers().run(bench.state, bench.ctx)


# ---- StopBuilder ---------------------------------------------------------------------------

def test_stop_builder_leaves_the_builder_stopped_for_its_snapshot(cloud):
    bench = cloud()
    bench.state.builder = plain_instance(bench.client)
    assert s.StopBuilder().run(bench.state, bench.ctx) is None
    assert instance_state(bench.client, bench.state.builder["InstanceId"]) == "stopped"
    assert bench.journal() == []


def test_stop_builder_fails_when_the_builder_terminates_instead_of_stopping(cloud):
    bench = cloud()
    bench.state.builder = plain_instance(bench.client)
    Stale(bench.ec2.client, "DescribeInstances", "stopped", "terminated")  # as EC2 shows a builder that went away
    iid = bench.state.builder["InstanceId"]
    with pytest.raises(CloudError, match=rf"instance {iid} is terminated instead of stopped"):
        s.StopBuilder().run(bench.state, bench.ctx)


# ---- CreateImage ---------------------------------------------------------------------------

IMAGE = "image:\n  name: 'web-{{ build_id }}'\n  description: the web tier\n  tags: {team: platform}\n"


def test_create_image_names_and_tags_the_image_as_an_unfinished_product_of_its_inputs(cloud):
    bench = cloud(IMAGE)
    bench.state.builder = plain_instance(bench.client)
    detail = s.CreateImage().run(bench.state, bench.ctx)

    ami, name = bench.state.image_id, f"web-{bench.state.build_id}"
    assert detail == f"{ami} {name}" and bench.state.image_name == name
    image = image_of(bench.client, ami)
    assert image["Name"] == name and image["Description"] == "the web tier"
    expected = {"team": "platform", "Name": name, T.RECIPE: "web", T.BUILD_ID: bench.state.build_id, T.ROLE: "image",
                T.INPUTS_HASH: INPUTS_HASH, T.SOURCE_AMI: bench.state.source.id}
    assert T.tags_of(image) == expected == bench.state.image_tags  # no expiry (a product), not complete yet
    assert bench.journal() == [("created", "image", ami, REGION)]


def test_create_image_is_removed_with_its_snapshots_when_the_run_fails(cloud):
    bench = cloud(IMAGE)
    ami = with_image(bench)
    snapshots = set(bench.ec2.image_snapshots(ami))
    assert snapshots
    bench.fail()
    assert image_of(bench.client, ami) is None
    assert not snapshots & snapshot_ids(bench.client)
    assert bench.journal()[-1] == ("removed", "image", ami, REGION)


def test_create_image_is_kept_when_the_run_succeeds(cloud):
    bench = cloud(IMAGE)
    ami = with_image(bench)
    bench.succeed()
    assert image_of(bench.client, ami)["State"] == "available"
    assert bench.journal()[-1] == ("kept", "image", ami, REGION)


# ---- WaitForImage --------------------------------------------------------------------------

def test_wait_for_image_records_the_available_image_tags_its_snapshots_and_fills_in_the_manifest(cloud):
    bench = cloud(IMAGE)
    bench.state.builder = plain_instance(bench.client)
    bench.setup(s.CreateImage)
    assert s.WaitForImage().run(bench.state, bench.ctx) is None

    ami = bench.state.image_id
    assert bench.state.image["ImageId"] == ami and bench.state.image["State"] == "available"
    snaps = bench.client.describe_snapshots(SnapshotIds=bench.ec2.image_snapshots(ami))["Snapshots"]
    assert snaps and all(T.tags_of(x) == {**bench.state.image_tags, T.ROLE: "snapshot"} for x in snaps)
    manifest = bench.state.manifest
    assert (manifest.ami_id, manifest.image_name) == (ami, bench.state.image_name)


def test_wait_for_image_fails_when_the_image_ends_failed(cloud):
    bench = cloud(IMAGE)
    bench.state.builder = plain_instance(bench.client)
    bench.setup(s.CreateImage)
    Stale(bench.ec2.client, "DescribeImages", "available", "failed")
    with pytest.raises(CloudError, match=rf"image {bench.state.image_id} ended in state failed"):
        s.WaitForImage().run(bench.state, bench.ctx)
    assert bench.state.image is None and bench.state.manifest.ami_id is None


# ---- SmokeTest -----------------------------------------------------------------------------

def smoke_checks(shell: str) -> str:
    return f"checks:\n  timeout: 20\n  commands:\n    - {{name: hello, shell: {shell!r}}}\n"


@pytest.fixture
def smoke_bench(builder):
    """A bench with what the smoke test reads: a key pair, a security group and an available image.
    No builder: the FakeBuilderHost becomes the smoke instance."""
    def make(shell: str) -> Bench:
        bench = builder(extra=IMAGE + smoke_checks(shell), setup=(s.CreateKeyPair, s.CreateSecurityGroup))
        with_image(bench)
        return bench
    return make


def smoke_instance(bench: Bench) -> dict:
    found = bench.ec2.instances(T.tag_filter(T.BUILD_ID, bench.state.build_id), T.tag_filter(T.ROLE, "smoke"),
                                states=None)
    assert len(found) == 1
    return found[0]


def test_smoke_test_boots_the_image_runs_its_checks_marks_it_passed_and_terminates_the_instance(smoke_bench):
    bench = smoke_bench("echo smoke-ok from $(id -un)")
    ami = bench.state.image_id
    assert smoke.SmokeTest().run(bench.state, bench.ctx) is None

    booted = smoke_instance(bench)
    assert booted["ImageId"] == ami and booted["State"]["Name"] == "terminated"
    assert booted["InstanceId"] in bench.host.served  # it really answered over SSH
    assert_temporary(T.tags_of(booted), bench, "smoke")
    assert T.tags_of(image_of(bench.client, ami))[T.SMOKE] == "passed"
    assert "  check hello | smoke-ok from root\n" in bench.log()
    assert stage_lines(bench) == [f"✓ smoke test: launch: {booted['InstanceId']}", "✓ smoke test: SSH",
                                  "✓ smoke check: hello", "✓ smoke test: terminate"]
    assert ("created", "instance", booted["InstanceId"], REGION) in bench.journal()


def test_smoke_test_that_fails_a_check_marks_the_image_failed_and_keeps_it_when_the_run_unwinds(smoke_bench):
    bench = smoke_bench("echo broken; exit 4")
    ami = bench.state.image_id
    with pytest.raises(StepFailed) as failed:
        smoke.SmokeTest().run(bench.state, bench.ctx)
    assert failed.value.message == (f"{bench.state.recipe.path}: smoke test of {ami} failed, not published: "
                                    "check 'hello' exited with status 4")
    assert T.tags_of(image_of(bench.client, ami))[T.SMOKE] == "failed"

    bench.fail()
    assert image_of(bench.client, ami)["State"] == "available"  # kept for inspection
    booted = smoke_instance(bench)
    assert booted["State"]["Name"] == "terminated"
    journal = bench.journal()
    assert ("kept", "image", ami, REGION) in journal and ("removed", "image", ami, REGION) not in journal
    assert ("removed", "instance", booted["InstanceId"], REGION) in journal


# ---- PublishParameter ----------------------------------------------------------------------

PARAMETER = "/bakery/web/latest"


def test_publish_parameter_points_the_parameter_at_the_image_and_puts_the_previous_one_back_on_unwind(cloud):
    bench = cloud(IMAGE + f"  ssm_parameter: {PARAMETER}\n")
    ami, previous = with_image(bench), bench.state.source.id
    bench.ec2.publish_parameter(PARAMETER, previous, "an earlier bake")  # an earlier bake's image
    detail = publish.PublishParameter().run(bench.state, bench.ctx)

    assert detail == f"{PARAMETER} = {ami} (version 2)"
    stored = bench.raw("ssm").get_parameter(Name=PARAMETER)["Parameter"]
    assert (stored["Value"], stored["DataType"]) == (ami, "aws:ec2:image")
    assert bench.state.manifest.ssm_parameter == PARAMETER
    last = bench.records()[-1]  # what the janitor needs to put the parameter back after a crash
    assert (last["event"], last["kind"], last["id"], last["region"], last["extra"]) == (
        "created", "ssm-parameter", PARAMETER, REGION, {"previous": previous, "value": ami})
    bench.fail()
    assert bench.ec2.parameter_value(PARAMETER) == previous
    assert ("removed", "ssm-parameter", PARAMETER, REGION) in bench.journal()


@pytest.mark.parametrize("ending, kept", [("fail", False), ("succeed", True)])
def test_publish_parameter_the_bake_created_is_deleted_if_the_run_fails_and_kept_if_it_succeeds(cloud, ending, kept):
    bench = cloud(IMAGE + f"  ssm_parameter: {PARAMETER}\n")
    ami = with_image(bench)
    bench.setup(publish.PublishParameter)
    getattr(bench, ending)()
    assert bench.ec2.parameter_value(PARAMETER) == (ami if kept else None)
    assert ("kept" if kept else "removed", "ssm-parameter", PARAMETER, REGION) in bench.journal()


# ---- Publish -------------------------------------------------------------------------------

PUBLISHED = "/bakery/web/published"
PUBLISH = (f"publish:\n  regions: [{OTHER_REGION}]\n  share_with: ['{ACCOUNT}']\n  ssm_parameter: {PUBLISHED}\n"
           "  launch_template: {name: web-tier}\n")


@pytest.fixture
def published(cloud):
    """A bench that has run Publish (copy, share, SSM, launch template) for an available image."""
    bench = cloud(IMAGE + PUBLISH)
    with_image(bench)
    assert publish.Publish().run(bench.state, bench.ctx) is None
    return bench


def copy_of(bench: Bench) -> str:
    return bench.state.manifest.published["images"][OTHER_REGION]


def template_names(bench: Bench) -> list[str]:
    return [t["LaunchTemplateName"] for t in bench.client.describe_launch_templates()["LaunchTemplates"]]


def test_publish_copies_the_image_to_each_region_tagged_with_where_it_came_from(published):
    bench, ami = published, published.state.image_id
    copy, there = copy_of(bench), bench.raw("ec2", OTHER_REGION)
    image = image_of(there, copy)
    assert image["State"] == "available" and image["Name"] == bench.state.image_name
    assert T.tags_of(image) == {**bench.state.image_tags, T.COPIED_FROM: f"{REGION}/{ami}"}
    snaps = there.describe_snapshots(SnapshotIds=[m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]])
    assert all(T.tags_of(x)[T.ROLE] == "snapshot" and T.tags_of(x)[T.BUILD_ID] == bench.state.build_id
               for x in snaps["Snapshots"])
    assert f"✓ copy to {OTHER_REGION}: {OTHER_REGION}: {copy}" in stage_lines(bench)
    assert ("created", "image", copy, OTHER_REGION) in bench.journal()


def test_publish_shares_the_image_and_its_snapshots_in_every_region_with_the_accounts(published):
    bench = published
    for region, ami in bench.state.manifest.published["images"].items():
        client = bench.raw("ec2", region)
        permissions = client.describe_image_attribute(ImageId=ami, Attribute="launchPermission")
        assert permissions["LaunchPermissions"] == [{"UserId": ACCOUNT}]
        for snap in (m["Ebs"]["SnapshotId"] for m in image_of(client, ami)["BlockDeviceMappings"]):
            volumes = client.describe_snapshot_attribute(SnapshotId=snap, Attribute="createVolumePermission")
            assert volumes["CreateVolumePermissions"] == [{"UserId": ACCOUNT}]
    assert bench.state.manifest.published["shared_with"] == [ACCOUNT]


def test_publish_names_each_regions_image_in_its_parameter_and_pins_a_launch_template_version(published):
    bench, ami = published, published.state.image_id
    images = bench.state.manifest.published["images"]
    assert {region: bench.ec2.in_region(region).parameter_value(PUBLISHED) for region in images} == images
    assert bench.state.manifest.published["ssm_versions"] == {REGION: 1, OTHER_REGION: 1}
    version = bench.client.describe_launch_template_versions(LaunchTemplateName="web-tier")["LaunchTemplateVersions"]
    assert [(v["VersionNumber"], v["LaunchTemplateData"]["ImageId"]) for v in version] == [(1, ami)]
    assert version[0]["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"
    assert bench.state.manifest.published["launch_template"] == "web-tier:1"
    made = [e for e in bench.journal() if e[1] in ("ssm-parameter", "launch-template-version")]
    assert made == [("created", "ssm-parameter", PUBLISHED, REGION),
                    ("created", "ssm-parameter", PUBLISHED, OTHER_REGION),
                    ("created", "launch-template-version", "web-tier:1", REGION)]


def test_publish_takes_everything_it_published_back_when_the_run_fails(published):
    bench, copy = published, copy_of(published)
    bench.fail()
    assert image_of(bench.raw("ec2", OTHER_REGION), copy) is None
    assert [bench.ec2.in_region(r).parameter_value(PUBLISHED) for r in (REGION, OTHER_REGION)] == [None, None]
    assert "web-tier" not in template_names(bench)
    journal = bench.journal()
    assert {e[1:] for e in journal if e[0] == "created"} == {e[1:] for e in journal if e[0] == "removed"}


def test_publish_keeps_everything_it_published_when_the_run_succeeds(published):
    bench, copy = published, copy_of(published)
    bench.succeed()
    assert image_of(bench.raw("ec2", OTHER_REGION), copy)["State"] == "available"
    assert bench.ec2.in_region(OTHER_REGION).parameter_value(PUBLISHED) == copy
    assert "web-tier" in template_names(bench)
    kept = {e[1:] for e in bench.journal() if e[0] == "kept"}
    assert {("image", copy, OTHER_REGION), ("ssm-parameter", PUBLISHED, REGION),
            ("ssm-parameter", PUBLISHED, OTHER_REGION), ("launch-template-version", "web-tier:1", REGION)} <= kept


def test_publish_warns_and_goes_on_when_the_endpoint_cannot_set_a_deprecation_time(server, scaled_backoff):
    bench = server(IMAGE + "publish:\n  deprecate_after_days: 30\n")
    ami = with_image(bench)
    publish.Publish().run(bench.state, bench.ctx)
    published = bench.state.manifest.published
    assert published["deprecate_at"] is None and len(published["warnings"]) == 1
    assert published["warnings"][0].startswith(f"deprecation time not set on {ami} in {REGION}: "
                                               "the endpoint does not support it (")
    assert f"! {published['warnings'][0]}" in stage_lines(bench)


def test_publish_that_fails_half_way_takes_back_every_copy_and_parameter_on_unwind(server):
    bench = server(IMAGE + PUBLISH)
    with_image(bench)
    Fault(bench.ec2.client, "CreateLaunchTemplate", "UnauthorizedOperation", status=403, times=None)  # the last part
    with pytest.raises(CloudError, match=r"create-launch-template: not authorised"):
        publish.Publish().run(bench.state, bench.ctx)
    copies = [e[2] for e in bench.journal() if e[:2] == ("created", "image") and e[3] == OTHER_REGION]
    assert len(copies) == 1 and bench.ec2.in_region(OTHER_REGION).parameter_value(PUBLISHED) == copies[0]

    bench.fail()
    assert image_of(bench.raw("ec2", OTHER_REGION), copies[0]) is None
    assert [bench.ec2.in_region(r).parameter_value(PUBLISHED) for r in (REGION, OTHER_REGION)] == [None, None]
    assert bench.state.manifest.published is None


# ---- MarkFinished --------------------------------------------------------------------------

def test_mark_finished_tags_the_image_complete_so_skips_and_launches_find_it(cloud):
    bench = cloud(IMAGE)
    ami = with_image(bench)
    assert bench.ec2.bakery_images(recipe="web", inputs_hash=INPUTS_HASH) == []
    assert s.MarkFinished().run(bench.state, bench.ctx) is None
    assert T.tags_of(image_of(bench.client, ami))[T.COMPLETE] == "true"
    assert [i["ImageId"] for i in bench.ec2.bakery_images(recipe="web", inputs_hash=INPUTS_HASH)] == [ami]


def test_mark_finished_marks_the_region_copies_finished_too_so_prune_and_launch_there_find_them(published):
    bench = published
    s.MarkFinished().run(bench.state, bench.ctx)
    for region, ami in bench.state.manifest.published["images"].items():
        assert [i["ImageId"] for i in bench.ec2.in_region(region).bakery_images(recipe="web")] == [ami], region
