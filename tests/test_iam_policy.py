"""The IAM policy bakery's role needs (docs/iam/bakery-policy.json), checked against the code:
exactly the operations bakery calls (and a short, explained list of permissions those calls need
indirectly), creates only with bakery's tags in the request (allowed on what a create makes and
uses, denied on what it makes without them), tags added after creation and anything destructive
only on resources that carry bakery's tags; linted with parliament, which finds nothing. And the
trust policy for GitHub's OIDC provider (docs/iam/github-oidc-trust-policy.json)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from bakery.cloud.service_models import OPERATIONS
from tests.support import ROOT

POLICY = ROOT / "docs/iam/bakery-policy.json"
TRUST = ROOT / "docs/iam/github-oidc-trust-policy.json"
PREFIX = {"elbv2": "elasticloadbalancing"}         # API service -> IAM prefix, where they differ
IAM_NAME = {"s3:HeadBucket": "s3:ListBucket"}      # API operation -> the IAM action that authorises it
# ensure_bucket (HeadBucket, CreateBucket) runs for the local cloud's own evidence bucket only
# (bakery/cloud/connect.py); on AWS the bucket is the account's, named in the settings
LOCAL_ONLY = {"s3:CreateBucket", "s3:HeadBucket"}
INDIRECT = {
    "iam:PassRole": "RunInstances (and an Auto Scaling group's template) with an instance profile",
    "iam:CreateServiceLinkedRole": "the first CreateAutoScalingGroup of an account makes Auto Scaling's role",
    "kms:CreateGrant": "EBS, for a volume or a copy encrypted with a customer managed key",
    "kms:Decrypt": "EBS, reading an encrypted snapshot",
    "kms:GenerateDataKeyWithoutPlaintext": "EBS, a new encrypted volume or copy",
    "kms:ReEncryptFrom": "EBS, a copy re-encrypted with another key",
    "kms:ReEncryptTo": "EBS, a copy re-encrypted with another key",
    "elasticloadbalancing:DescribeTargetHealth": "the waiters target_in_service and target_deregistered",
}
# what a create makes, for the tag fence (ResourceType in its TagSpecifications)
CREATES = {"ec2:RunInstances": "instance", "ec2:ImportKeyPair": "key-pair", "ec2:CreateSecurityGroup": "security-group",
           "ec2:CreateImage": "image", "ec2:CopyImage": "image", "ec2:CreateLaunchTemplate": "launch-template",
           "ec2:CreateVpc": "vpc", "ec2:CreateSubnet": "subnet", "ec2:CreateInternetGateway": "internet-gateway",
           "ec2:CreateNatGateway": "natgateway", "ec2:CreateRouteTable": "route-table",
           "ec2:CreateNetworkAcl": "network-acl", "ec2:CreateNetworkInterface": "network-interface",
           "ec2:AllocateAddress": "elastic-ip", "autoscaling:CreateAutoScalingGroup": "autoScalingGroup"}
CHANGES = re.compile(r"^(ec2|autoscaling):(Terminate|Stop|Reboot|Delete|Deregister|Modify|Detach|Disassociate|Revoke|"
                     r"Replace|Update|Rollback|Start|Enable|Assign|Associate|Attach|Authorize|CreateTags$|CreateRoute$|"
                     r"CreateNetworkAclEntry$|CreateLaunchTemplateVersion$)")


def statements(effect: str = "Allow") -> list[dict]:
    return [st for st in json.loads(POLICY.read_text())["Statement"] if st["Effect"] == effect]


def listed(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def calls_in_cloud(attr: str, service: str) -> set[str]:
    """Operations bakery/cloud calls on one whole-model client (`self.<attr>.<operation>`)."""
    model = botocore.session.get_session().get_service_model(service)
    snake = {xform_name(op): op for op in model.operation_names}
    found = set()
    for path in Path(ROOT, "bakery/cloud").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in snake and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == attr:
                found.add(snake[node.attr])
    return found


def code_actions() -> set[str]:
    ops = {f"{svc}:{op}" for svc, names in OPERATIONS.items() for op in names}
    ops |= {f"elbv2:{op}" for op in calls_in_cloud("elbv2", "elbv2")} | {f"kms:{op}" for op in calls_in_cloud("kms", "kms")}
    actions = set()
    for op in ops - LOCAL_ONLY:
        svc, name = op.split(":")
        actions.add(IAM_NAME.get(op, f"{PREFIX.get(svc, svc)}:{name}"))
    return actions


def test_the_policy_allows_exactly_what_the_code_calls_and_the_permissions_those_calls_need():
    allowed = {a for st in statements() for a in listed(st["Action"])}
    assert all("*" not in a for a in allowed), "name every action: a wildcard cannot be checked against the code"
    expected = code_actions() | set(INDIRECT)
    assert not expected - allowed, f"missing from {POLICY.name}: {sorted(expected - allowed)}"
    assert not allowed - expected, f"allowed but never called: {sorted(allowed - expected)}"
    everything = json.loads(POLICY.read_text())["Statement"]
    assert all(st["Effect"] in ("Allow", "Deny") and "NotAction" not in st and "NotResource" not in st
               for st in everything)


def test_only_reads_without_resource_level_permissions_are_allowed_on_everything():
    for st in statements():
        if st["Resource"] == "*":
            assert all(re.match(r"^[a-z0-9]+:(Describe|Get)", a) for a in listed(st["Action"])), st["Sid"]


def test_creates_carry_bakerys_tags_in_the_request():
    """Allowed broadly (what a create makes and what it uses, as parliament wants each statement),
    then denied on what it makes unless one of the request's tag keys is bakery's: the created
    resources are those EC2 tags on creation, where the request's tag keys are always evaluated."""
    denies = statements("Deny")
    for action, kind in CREATES.items():
        allowed = [st for st in statements() if action in listed(st["Action"])]
        conditioned = all(any(k.startswith("bakery:") for k in (
            st.get("Condition", {}).get("ForAnyValue:StringEquals", {}).get("aws:TagKeys") or
            st.get("Condition", {}).get("ForAnyValue:StringLike", {}).get("aws:TagKeys") or [])) for st in allowed)
        denied = any(action in listed(st["Action"])
                     and any(r.split(":")[-1].split("/")[0] == kind for r in listed(st["Resource"]))
                     and st.get("Condition") == {"ForAllValues:StringNotLike": {"aws:TagKeys": ["bakery:*"]}}
                     for st in denies)
        assert allowed and (conditioned or denied), action
    assert any(st["Action"] == ["ec2:CreateImage"] and st["Condition"] == {
        "Null": {"aws:ResourceTag/bakery:recipe": "true"}} for st in denies)  # only of bakery's builders


def test_the_code_sends_those_tags_with_every_create():
    """TagSpecifications (Tags for a group) in every create call bakery/cloud makes."""
    snake = {xform_name(a.split(":")[1]): a for a in CREATES}
    seen = set()
    for path in Path(ROOT, "bakery/cloud").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[1], ast.Attribute) \
                    and node.args[1].attr in snake:  # self.call("...", client.create_x, **kwargs)
                keywords = {k.arg for k in node.keywords}
                if None in keywords:  # **params: the request a spec builds (InstanceSpec.request)
                    keywords |= {"TagSpecifications"} if '"TagSpecifications"' in path.read_text() else set()
                assert keywords & {"TagSpecifications", "Tags"}, f"{path.name}: {node.args[1].attr} sends no tags"
                seen.add(snake[node.args[1].attr])
    assert seen == set(CREATES)


def test_tags_after_creation_and_every_change_only_on_resources_that_carry_bakerys_tags():
    for st in statements():
        changes = [a for a in listed(st["Action"]) if CHANGES.match(a)]
        if not changes:
            continue
        cond = st.get("Condition", {})
        on_ours = any(k.startswith("aws:ResourceTag/bakery:") and v == "false" for k, v in cond.get("Null", {}).items())
        at_create = set(listed(st["Action"])) == {"ec2:CreateTags"} and "ec2:CreateAction" in cond.get("StringEquals", {})
        assert on_ours or at_create, f"{st['Sid']}: {changes}"


def test_ssm_writes_stay_under_bakery_and_roles_are_passed_to_ec2_only():
    for st in statements():
        actions = listed(st["Action"])
        if {"ssm:PutParameter", "ssm:DeleteParameter"} & set(actions):
            assert listed(st["Resource"]) == ["arn:aws:ssm:*:*:parameter/bakery/*"]
        if "iam:PassRole" in actions:
            assert st["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
            assert all(r.startswith("arn:aws:iam::*:role/bakery-") for r in listed(st["Resource"]))


def test_parliament_finds_nothing():
    from parliament import analyze_policy_string

    policy = analyze_policy_string(POLICY.read_text())
    assert [f"{f.issue}: {f.detail}" for f in policy.findings] == []


def test_the_trust_policy_admits_only_this_repositorys_workflows_through_githubs_oidc_provider():
    [st] = json.loads(TRUST.read_text())["Statement"]
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert st["Principal"]["Federated"].endswith(":oidc-provider/token.actions.githubusercontent.com")
    equals = st["Condition"]["StringEquals"]
    assert equals["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert re.fullmatch(r"repo:[\w.-]+/[\w.-]+:(ref:refs/heads/[\w./-]+|environment:[\w.-]+)",
                        equals["token.actions.githubusercontent.com:sub"])  # one repository, one branch: no wildcard
    assert "StringLike" not in st["Condition"]


@pytest.mark.parametrize("name", ["bakery-policy.json", "github-oidc-trust-policy.json"])
def test_the_policies_are_json_an_iam_console_takes(name):
    doc = json.loads((ROOT / "docs/iam" / name).read_text())
    assert doc["Version"] == "2012-10-17" and doc["Statement"]
    sids = [st.get("Sid") for st in doc["Statement"]]
    assert all(s and re.fullmatch(r"[A-Za-z0-9]+", s) for s in sids) and len(set(sids)) == len(sids)
