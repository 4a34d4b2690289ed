"""What a local VPC gives every instance besides its metadata, as EC2's does: a DNS resolver that
answers the AWS API names with the VPC's endpoint for them (private DNS of interface endpoints) and
forwards the rest, and the AWS APIs over TLS, trusted through the base image's CA. Together they let
an environment's `secrets:` arrive on the instance at boot, fetched by the unchanged AWS CLI with the
instance profile's credentials from the metadata service."""

from __future__ import annotations

import boto3
import pytest
from dnslib import RCODE, DNSRecord

from bakery.bake.run import bake
from bakery.config.settings import Settings
from bakery.launch.run import launch
from bakery.local.linklocal import API_IP, RESOLVER_IP
from bakery.local.netns import run_in
from bakery.local.sandbox import Sandbox
from bakery.progress import Reporter
from tests.local.conftest import sandbox_recipe, wait_for_boot
from tests.support import write_recipe

pytestmark = pytest.mark.local

# the AWS CLI from Debian, as a recipe would install it (the base image has its CA and python3-certifi)
RECIPE = sandbox_recipe("{name: aws cli, shell: 'sudo apt-get install -y -q --no-install-recommends awscli'}")
PASSWORD = "s3cr'et value"  # a quote and a space: the secrets file must keep it exactly

ENV = """\
network:
  vpc: {cidr: 10.70.0.0/16}
  subnets:
    a: {cidr: 10.70.1.0/24, az: us-east-1a}
  security_groups:
    ssh: {ingress: [{protocol: tcp, ports: 22, cidr: 10.70.0.0/16}]}
tiers:
  app:
    image: {recipe: cli}
    count: 1
    iam_instance_profile: app-profile
    secrets: {DB_PASSWORD: "ssm:/vpc/db/password", API_TOKEN: "ssm:/vpc/api/token"}
    interfaces: [{device_index: 0, subnet: a, security_groups: [ssh]}]
    health_check: {type: tcp, port: 22, timeout: 60}
"""


def aws(cloud, service: str):
    return boto3.client(service, endpoint_url=cloud.endpoint.running_url(), region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


@pytest.fixture(scope="module")
def instance(cloud, tmp_path_factory) -> Sandbox:
    work = tmp_path_factory.mktemp("vpcservices")
    write_recipe(work / "recipes", "cli", RECIPE)
    (work / "envs").mkdir()
    (work / "envs/svc.yaml").write_text(ENV)
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=work, recipes_dir=work / "recipes",
                        envs_dir=work / "envs", state_dir=work / "state")
    iam, ssm = aws(cloud, "iam"), aws(cloud, "ssm")
    iam.create_role(RoleName="app-role", AssumeRolePolicyDocument="{}")
    iam.create_instance_profile(InstanceProfileName="app-profile")
    iam.add_role_to_instance_profile(InstanceProfileName="app-profile", RoleName="app-role")
    ssm.put_parameter(Name="/vpc/db/password", Value=PASSWORD, Type="SecureString")
    ssm.put_parameter(Name="/vpc/api/token", Value="t0ken", Type="SecureString")
    bake(settings, "cli", {}, report=Reporter(quiet=True))
    report = launch(settings, "svc", report=Reporter(quiet=True))
    box = Sandbox.attach(report.instances[0].instance_id, cloud.instances_dir)
    assert wait_for_boot(box, timeout=120).get("done") == 0, box.boot_log()
    return box


def sh(box: Sandbox, command: str) -> str:
    done = box.exec(["sh", "-c", command], timeout=60)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def test_an_environments_secrets_arrive_on_the_instance_at_boot(instance):
    assert sh(instance, "stat -c '%a %U' /etc/bakery/secrets.env") == "600 root\n"
    env = sh(instance, "set -a; . /etc/bakery/secrets.env; echo \"$DB_PASSWORD|$API_TOKEN\"")
    assert env == f"{PASSWORD}|t0ken\n"
    # only the parameter names travel in the user data
    user_data = sh(instance, "cloud-init query userdata")
    assert "/vpc/db/password" in user_data and PASSWORD not in user_data and "t0ken" not in user_data


def ask(box: Sandbox, name: str, qtype: str = "A") -> tuple[str, list[str]]:
    """(rcode, answers) from the VPC's resolver, asked from the instance's network namespace."""
    reply = DNSRecord.parse(run_in(box.netns, lambda: DNSRecord.question(name, qtype).send(RESOLVER_IP, 53, timeout=5)))
    return RCODE.get(reply.header.rcode), [str(rr.rdata) for rr in reply.rr]


def test_the_vpc_resolver_answers_aws_names_itself_and_forwards_the_rest(instance):
    assert sh(instance, "cat /etc/resolv.conf").split() == ["nameserver", RESOLVER_IP]
    for name in ("ssm.us-east-1.amazonaws.com", "ec2.eu-west-1.amazonaws.com", "sts.amazonaws.com"):
        assert sh(instance, f"getent ahostsv4 {name}").split()[0] == API_IP, name
    # EC2's private host names: asked of the resolver itself (the instance's /etc/hosts has its own)
    ip = sh(instance, "hostname -I").split()[0]
    assert ask(instance, f"ip-{ip.replace('.', '-')}.ec2.internal") == ("NOERROR", [ip])
    assert ask(instance, "ip-10-70-1-250.ec2.internal") == ("NXDOMAIN", [])
    assert ask(instance, "instance-data.ec2.internal") == ("NOERROR", ["169.254.169.254"])
    assert ask(instance, "ssm.us-east-1.amazonaws.com", "AAAA") == ("NOERROR", [])
    # a name the VPC does not own goes to the host's resolver (the package mirror's, as apt needs)
    assert sh(instance, "getent ahostsv4 deb.debian.org").split()


def test_the_aws_apis_answer_over_tls_that_the_instance_trusts(instance):
    # curl verifies against the system store (no -k): the base image trusts the local cloud's CA
    body = sh(instance, "curl -sS --fail-with-body https://ssm.us-east-1.amazonaws.com/ "
                        "-H 'X-Amz-Target: AmazonSSM.DescribeParameters' "
                        "-H 'Content-Type: application/x-amz-json-1.1' "
                        "-H 'Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/ssm/aws4_request, "
                        "SignedHeaders=host, Signature=0' -d '{}'")
    assert "/vpc/db/password" in body
    # a name outside the certificate is refused by the client, so nothing else is impersonated
    out = instance.exec(["curl", "-sS", "--resolve", f"example.com:443:{API_IP}", "https://example.com/"], timeout=30)
    assert out.returncode == 60 and "certificate" in out.stderr.lower()
