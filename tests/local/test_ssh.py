"""`invoke ssh` on the local cloud: the OpenSSH client reaches a kept builder with its build's key and
a launched instance with the user's key, host keys pinned (the build's own, or the instance's from
its console), and every hint prints a command that works here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import boto3
import pytest

from bakery.local.sandbox import Sandbox
from tests.local.conftest import sandbox_recipe
from tests.support import ROOT, write_recipe

pytestmark = pytest.mark.local

ENV = """\
ssh: {{user: admin, key_file: {key}}}
tiers:
  box:
    image: {{recipe: sshbox}}
    key_name: operator
"""  # no check: ready once cloud-init finished (nothing outside the default group may reach port 22)


@pytest.fixture(scope="module")
def project(cloud, tmp_path_factory):
    work = tmp_path_factory.mktemp("ssh")
    write_recipe(work / "recipes", "sshbox", sandbox_recipe("{name: mark, shell: 'echo sshbox | sudo tee /etc/marker'}"))
    write_recipe(work / "recipes", "halfway", sandbox_recipe("{name: mark, shell: 'echo kept | sudo tee /etc/marker'}",
                                                             "{name: fail, shell: 'exit 4'}"))
    key = work / "operator"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator", "-f", str(key)], check=True)
    boto3.client("ec2", endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                 aws_access_key_id="local", aws_secret_access_key="local").import_key_pair(
        KeyName="operator", PublicKeyMaterial=(work / "operator.pub").read_bytes())
    (work / "envs").mkdir()
    (work / "envs/ops.yaml").write_text(ENV.format(key=key))
    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "INVOKE_BAKERY_DATA_DIR": str(cloud.data_dir),
           "INVOKE_BAKERY_STATE_DIR": str(work / "state"), "INVOKE_BAKERY_RECIPES_DIR": str(work / "recipes"),
           "INVOKE_BAKERY_ENVS_DIR": str(work / "envs")}
    return work, env


def run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_kept_builder_is_reached_by_the_hint_bake_prints(project):
    work, env = project
    failed = run(["bake", "--recipe", "halfway", "--keep-on-error"], env)
    assert failed.returncode != 0
    hint = re.search(r"reach it:\s+(invoke ssh --instance (i-[0-9a-f]+))", failed.stderr)
    assert hint, failed.stderr
    build = re.search(r"invoke clean --build-id (\S+)", failed.stderr).group(1)
    try:
        inside = run([*hint.group(1).split()[1:], "--command", "id -un; cat /etc/marker"], env)
        assert inside.returncode == 0, inside.stderr
        assert inside.stdout == "admin\nkept\n"
        printed = run(["ssh", "--instance", hint.group(2), "--print"], env).stdout
        assert "StrictHostKeyChecking=yes" in printed and f"HostKeyAlias=bakery-builder-{build}" in printed
    finally:
        assert run(["clean", "--build-id", build], env).returncode == 0


def test_a_launched_instance_is_reached_with_the_users_key_its_host_keys_pinned_from_its_console(project, cloud):
    work, env = project
    assert run(["bake", "--recipe", "sshbox"], env).returncode == 0
    launched = run(["launch", "--env", "ops"], env)
    assert launched.returncode == 0, launched.stderr
    inside = run(["ssh", "--env", "ops", "--tier", "box", "--command", "cat /etc/marker"], env)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout == "sshbox\n"

    printed = run(["ssh", "--env", "ops", "--tier", "box", "--print"], env).stdout.strip()
    iid = re.search(r"HostKeyAlias=(i-[0-9a-f]+)", printed).group(1)
    known = work / "state/known_hosts" / iid
    pinned = {tuple(line.split()[1:3]) for line in known.read_text().splitlines()}
    box = Sandbox.attach(iid, cloud.instances_dir)
    served = box.exec(["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"], timeout=10).stdout
    assert pinned == {tuple(line.split()[:2]) for line in served.splitlines()}  # the keys sshd offers
    assert {kind for kind, _ in pinned} == {"ssh-ed25519", "ecdsa-sha2-nistp256"}  # what the base image generates

    # pinned, never trusted on first use: the same command with another key in known_hosts refuses
    known.write_text(f"{iid} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    refused = subprocess.run([*printed.split(), "true"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr


def test_asking_for_what_cannot_be_reached_is_one_line(project):
    work, env = project
    for args, message in [
        (["ssh"], "ssh: give --instance ID, or --env ENV --tier TIER [--index N]"),
        (["ssh", "--env", "ops", "--tier", "box", "--index", "7"], "tiers.box: no running instance in slot '7'"),
        (["ssh", "--env", "ops", "--tier", "box", "--key", "/nonexistent/key"], "ssh: --key: /nonexistent/key is not a file"),
    ]:
        out = run(args, env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert message in out.stderr.strip().splitlines()[-1], (args, out.stderr)
