"""Every way a bake can fail ends with one clear message and nothing of the build left."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from bakery.bake.inputs import Inputs
from bakery.bake.run import Bake, bake
from bakery.cloud.ec2 import EC2
from bakery.errors import CloudError, ConfigError, RemoteError, StepFailed, WaitTimeout
from bakery.progress import Reporter
from bakery.config.recipe import load_recipe
from bakery.remote.ssh import HostKeyMismatch
from tests.support import cloud_of, leftovers, recipe_text, write_recipe
from tests.faults import Fault

pytestmark = pytest.mark.e2e

OK_STEPS = "  - name: ok\n    shell: echo fine\n"


def make(tmp_path, port, steps=OK_STEPS, extra="", name="web"):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, name, recipe_text(port, steps, extra))
    return recipes


@dataclass
class Baked:
    build_id: str
    manifest: object


def run_bake(settings, name="web", **kw) -> tuple[Baked, str]:
    """A bake that succeeded (its build id and manifest) and its progress log; a failure raises."""
    out = io.StringIO()
    runner = Bake(settings, Inputs.of(load_recipe(settings.recipes, name)), kw.pop("variables", {}),
                  report=Reporter(stream=out), **kw)
    return Baked(runner.build_id, runner.run()), out.getvalue()


def assert_clean(moto):
    assert leftovers(moto.client()) == {}


def test_a_failing_step_aborts_and_leaves_nothing(moto, tmp_path, builder_host, settings_for):
    steps = OK_STEPS + "  - name: breaks\n    shell: echo about to fail; exit 3\n  - name: never\n    shell: touch /srv/never\n"
    settings = settings_for(make(tmp_path, builder_host.port, steps))
    with pytest.raises(StepFailed, match=r"web.yaml: step 2/3: breaks exited with status 3"):
        run_bake(settings)
    assert not (builder_host.fs / "srv/never").exists()
    assert_clean(moto)
    assert list((settings.state / "ledger").iterdir()) == []  # every undo ran and was journalled


@pytest.mark.parametrize("step, leak", [
    ("mkdir -p /root/.aws && printf '[default]\\naws_access_key_id = AKIA2EXAMPLEREALKEY7Q\\n' > /root/.aws/credentials",
     "/root/.aws/credentials, /root/.aws/credentials (AWS credentials)"),
    ("mkdir -p /srv/app && echo 'export AWS_SECRET=x aws_secret_access_key=wJalrXUtnFEMI/K7MDENG' > /srv/app/env",
     "/srv/app/env (AWS credentials)"),
    ("mkdir -p /home/app/.aws && touch /home/app/.aws/credentials", "/home/app/.aws/credentials"),
])
def test_an_image_that_would_carry_aws_credentials_is_refused(moto, tmp_path, builder_host, settings_for,
                                                                        step, leak):
    settings = settings_for(make(tmp_path, builder_host.port, f"  - name: leaky\n    shell: {step!r}\n"))
    with pytest.raises(StepFailed) as refused:
        run_bake(settings)
    assert refused.value.message.endswith(f"web.yaml: refusing to snapshot: the image would carry {leak}; "
                                          "remove it in a step")
    assert moto.client().describe_images(Owners=["self"], Filters=[
        {"Name": "tag:bakery:recipe", "Values": ["web"]}])["Images"] == []  # no snapshot was taken
    assert_clean(moto)


def test_aws_documented_example_key_is_not_a_leak(moto, tmp_path, builder_host, settings_for):
    step = "mkdir -p /srv/doc && echo 'key: AKIAIOSFODNN7EXAMPLE' > /srv/doc/example.txt"
    runner, log = run_bake(settings_for(make(tmp_path, builder_host.port, f"  - name: docs\n    shell: {step!r}\n")))
    assert runner.manifest.ami_id and "check image for leftovers: none" in log


def test_retries_and_continue_policy(moto, tmp_path, builder_host, settings_for):
    steps = ("  - name: flaky\n    shell: test -f /srv/once || { touch /srv/once; exit 1; }\n    retries: 1\n"
             "  - name: tolerated\n    shell: exit 7\n    on_failure: continue\n")
    settings = settings_for(make(tmp_path, builder_host.port, steps))
    out = io.StringIO()
    manifest = bake(settings, "web", {}, report=Reporter(stream=out))
    assert [(s.status, s.attempts, s.exit_status) for s in manifest.steps] == [("ok", 2, 0), ("continued", 1, 7)]
    assert_clean(moto)


def test_a_step_past_its_timeout_is_stopped(moto, tmp_path, builder_host, settings_for):
    steps = "  - name: hangs\n    shell: sleep 60\n    timeout: 1\n"
    settings = settings_for(make(tmp_path, builder_host.port, steps))
    with pytest.raises(StepFailed, match="hangs timed out after 1s"):
        run_bake(settings)
    assert_clean(moto)


def test_ssh_that_never_answers_times_out_cleanly(moto, tmp_path, make_builder_host, settings_for):
    host = make_builder_host(start=False)
    recipes = make(tmp_path, host.port, extra="")
    text = (recipes / "web.yaml").read_text().replace("timeout: 20", "timeout: 2")
    (recipes / "web.yaml").write_text(text)
    with pytest.raises(WaitTimeout, match=r"waiting for SSH on builder i-\w+ \(127.0.0.1:\d+\): .*Refused"):
        run_bake(settings_for(recipes))
    assert_clean(moto)


def test_a_server_with_another_host_key_is_refused(moto, tmp_path, make_builder_host, settings_for):
    host = make_builder_host(host_key_mode="other")
    with pytest.raises(HostKeyMismatch, match="host key mismatch: expected SHA256:.* presented SHA256:"):
        run_bake(settings_for(make(tmp_path, host.port)))
    assert_clean(moto)


def test_throttling_is_retried(moto, tmp_path, builder_host, settings_for):
    settings = settings_for(make(tmp_path, builder_host.port))
    ec2 = EC2(settings)
    throttle = Fault(ec2.client, "RunInstances", "RequestLimitExceeded", status=503, times=2)
    runner, _ = run_bake(settings, cloud=cloud_of(ec2))
    assert runner.manifest.ami_id and throttle.injected == 2 and throttle.calls == 3
    assert_clean(moto)


@pytest.mark.parametrize("status", [400, 500])  # EC2 sends InsufficientInstanceCapacity as a 500
def test_capacity_errors_fall_back_to_the_next_instance_type_without_retrying(moto, tmp_path, builder_host,
                                                                              settings_for, status):
    settings = settings_for(make(tmp_path, builder_host.port))
    ec2 = EC2(settings)
    fault = Fault(ec2.client, "RunInstances", "InsufficientInstanceCapacity", status=status, times=1)
    runner, log = run_bake(settings, cloud=cloud_of(ec2))
    assert fault.calls == 2  # the refused t3.micro once (botocore's retries would sleep on it), then t3.small
    builder = moto.client().describe_instances(InstanceIds=[builder_host.instance_id])
    assert builder["Reservations"][0]["Instances"][0]["InstanceType"] == "t3.small"
    assert "trying the next instance type" in log
    assert_clean(moto)


def test_no_capacity_anywhere_is_one_error(moto, tmp_path, builder_host, settings_for):
    settings = settings_for(make(tmp_path, builder_host.port))
    ec2 = EC2(settings)
    Fault(ec2.client, "RunInstances", "InsufficientInstanceCapacity", times=None)
    with pytest.raises(CloudError, match="no capacity for any of t3.micro, t3.small"):
        run_bake(settings, cloud=cloud_of(ec2))
    assert_clean(moto)


@pytest.mark.parametrize("operation", ["ImportKeyPair", "CreateSecurityGroup", "RunInstances", "CreateImage"])
def test_auth_errors_at_any_stage_stop_the_bake_cleanly(moto, tmp_path, builder_host, settings_for, operation):
    settings = settings_for(make(tmp_path, builder_host.port))
    ec2 = EC2(settings)
    Fault(ec2.client, operation, "UnauthorizedOperation", status=403, times=None,
          message="You are not authorized to perform this operation.")
    with pytest.raises(CloudError, match="not authorised \\(UnauthorizedOperation\\)"):
        run_bake(settings, cloud=cloud_of(ec2))
    assert_clean(moto)


def test_keep_on_error_keeps_the_builder_and_clean_removes_it(moto, tmp_path, builder_host, settings_for):
    from bakery.housekeeping.cleanup import clean_build

    steps = "  - name: breaks\n    shell: exit 1\n"
    settings = settings_for(make(tmp_path, builder_host.port, steps))
    out = io.StringIO()
    runner = Bake(settings, Inputs.of(load_recipe(settings.recipes, "web")), {}, report=Reporter(stream=out), keep_on_error=True)
    with pytest.raises(StepFailed):
        runner.run()
    kept = leftovers(moto.client())
    assert set(kept) == {"instances", "security_groups", "key_pairs"}
    assert f"invoke clean --build-id {runner.build_id}" in out.getvalue()
    # kept on purpose: the janitor leaves it until its tags expire, ledger or not
    from bakery.housekeeping.janitor import janitor
    assert janitor(EC2(settings), older_than=None, run_id=None, dry_run=False,
                   ledger_dir=settings.state / "ledger").builds == {}
    assert leftovers(moto.client()) == kept
    report = clean_build(EC2(settings), runner.build_id)
    assert len(report.removed) == 3
    assert_clean(moto)


@pytest.mark.parametrize("body, message", [
    ("steps: [\n", r"web.yaml:2: invalid YAML"),
    ("source: {ami: ami-12345678}\nstepz: []\n", r"web.yaml:2: stepz: unknown key"),
    ("source: {ami: ami-12345678}\nsteps:\n  - name: x\n    shell: \"true\"\n    timeout: soon\n",
     r"web.yaml:5: steps\[0\].timeout: Input should be a valid number"),
    ("source: {ami: ami-12345678}\nsteps:\n  - name: x\n    script: files/missing.sh\n",
     r"web.yaml:4: steps\[0\].script: 'files/missing.sh' does not exist"),
    ("source: {ami: ami-12345678}\nsteps:\n  - name: x\n    upload: {source: ../../etc, dest: /x}\n",
     r"web.yaml:4: steps\[0\].upload.source: '../../etc' points outside"),
    ("source: {ami: ami-12345678}\nsteps:\n  - name: x\n    shell: echo {{ nope }}\n",
     r"web.yaml: steps\[0\] \(x\).shell: 'nope' is undefined"),
    ("source: {}\n", r"web.yaml:1: source: give exactly one of ami, filter, ssm_parameter"),
    ("source: {ami: ami-12345678}\nbuilder: {ssh: {allowed_cidr: 10.0.0.300/32}}\n",
     r"web.yaml:2: builder.ssh.allowed_cidr: invalid CIDR"),
])
def test_bad_recipes_are_refused_before_anything_is_created(moto, tmp_path, settings_for, body, message):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", body)
    with pytest.raises(ConfigError, match=message):
        bake(settings_for(recipes), "web", {}, report=Reporter(quiet=True))
    assert_clean(moto)


def test_unknown_recipe_and_undeclared_variable(moto, tmp_path, builder_host, settings_for):
    settings = settings_for(make(tmp_path, builder_host.port))
    with pytest.raises(ConfigError, match=r"no such recipe 'nope' \(known: web\)"):
        bake(settings, "nope", {}, report=Reporter(quiet=True))
    with pytest.raises(ConfigError, match=r"variable 'colour' is not declared by recipe 'web'"):
        bake(settings, "web", {"colour": "blue"}, report=Reporter(quiet=True))
    assert builder_host.served == []
    assert_clean(moto)


def test_an_unknown_source_image_is_a_config_error(moto, tmp_path, settings_for):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", "source: {ami: ami-0000000000000dead}\n")
    with pytest.raises(ConfigError, match=r"web.yaml: source.ami: image ami-0000000000000dead does not exist"):
        bake(settings_for(recipes), "web", {}, report=Reporter(quiet=True))
    assert_clean(moto)


def test_connection_dropped_mid_step(moto, tmp_path, builder_host, settings_for):
    # The step kills the sshd serving it: the connection drops mid-step.
    steps = "  - name: drops\n    shell: kill -9 $PPID; sleep 5\n"
    settings = settings_for(make(tmp_path, builder_host.port, steps))
    with pytest.raises(RemoteError):
        run_bake(settings)
    assert_clean(moto)


def test_credentials_that_expire_before_a_wait_fail_early_and_clean_up(moto, tmp_path, builder_host, settings_for,
                                                                        monkeypatch):
    from datetime import datetime, timedelta, timezone

    soon = datetime.now(timezone.utc) + timedelta(seconds=120)
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", soon.strftime("%Y-%m-%dT%H:%M:%SZ"))
    settings = settings_for(make(tmp_path, builder_host.port))
    with pytest.raises(CloudError, match=r"credentials expire in \d+s, before this wait's 600s deadline"):
        run_bake(settings)
    assert_clean(moto)
