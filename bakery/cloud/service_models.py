"""Trimmed botocore data: every bakery command starts ~0.15 s sooner.

Each time a process creates an EC2 client, botocore parses the whole EC2 model (830 operations,
4.4 MB of JSON) and builds a method per operation, although bakery calls 48 of them; it also
lists and stats all 447 services' directories, twice, and parses every service's endpoints.
Here, once per botocore version, the data bakery needs (the EC2, SSM, S3 and Auto Scaling models cut down to the
operations bakery calls, with every shape they reach; elbv2 and kms whole; endpoints of these services
only; paginators, waiters and endpoint rules as they are) is written to a cache directory that
becomes the session's only data path: botocore's documented way to supply its models.

tests/test_service_models.py checks the operation and service lists against bakery's source, so
a new call cannot be missed. If the cache cannot be written, clients use botocore's own data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

OPERATIONS = {
    "ec2": (
        "AllocateAddress", "AssignPrivateIpAddresses", "AssociateAddress", "AssociateRouteTable",
        "AttachInternetGateway", "AttachNetworkInterface", "AuthorizeSecurityGroupEgress",
        "AuthorizeSecurityGroupIngress", "CopyImage", "CreateImage", "CreateInternetGateway",
        "CreateLaunchTemplate", "CreateLaunchTemplateVersion", "CreateNatGateway", "CreateNetworkAcl",
        "CreateNetworkAclEntry", "CreateNetworkInterface", "CreateRoute", "CreateRouteTable",
        "CreateSecurityGroup", "CreateSubnet", "CreateTags", "CreateVpc",
        "DeleteKeyPair", "DeleteLaunchTemplate", "DeleteLaunchTemplateVersions", "DeleteSecurityGroup",
        "DeleteSnapshot", "DeregisterImage", "DescribeAddresses", "DescribeImages", "DescribeInstanceAttribute",
        "DescribeInstanceTypes", "DescribeInstances", "DescribeInternetGateways", "DescribeKeyPairs",
        "DescribeLaunchTemplateVersions", "DescribeLaunchTemplates", "DescribeNatGateways", "DescribeNetworkAcls",
        "DescribeNetworkInterfaces", "DescribeRouteTables", "DescribeSecurityGroups",
        "DescribeSnapshots", "DescribeSubnets", "DescribeVpcs", "DetachNetworkInterface", "DisassociateAddress",
        "EnableImageDeprecation", "GetConsoleOutput", "GetEbsDefaultKmsKeyId", "ImportKeyPair", "ModifyImageAttribute",
        "ModifyLaunchTemplate",
        "ModifyNetworkInterfaceAttribute", "ModifySnapshotAttribute", "ModifySubnetAttribute",
        "RebootInstances", "ReplaceNetworkAclAssociation", "RevokeSecurityGroupEgress", "ReplaceRouteTableAssociation", "RunInstances",
        "StopInstances", "TerminateInstances",
    ),
    "ssm": ("DeleteParameter", "DescribeParameters", "GetParameter", "GetParameterHistory", "PutParameter"),
    "s3": ("CreateBucket", "GetObject", "HeadBucket", "PutObject"),  # images' evidence (cloud/evidence.py)
    "autoscaling": (  # tiers that are groups (cloud/scaling.py)
        "CreateAutoScalingGroup", "DeleteAutoScalingGroup", "DescribeAutoScalingGroups",
        "DescribeInstanceRefreshes", "RollbackInstanceRefresh", "StartInstanceRefresh", "UpdateAutoScalingGroup",
    ),
}
# Kept as botocore ships them: rare and small. elbv2: target registration at launch; kms: signing
# provenance with a KMS key (GetPublicKey, Sign), whose names (`sign`, `verify`) every key object
# in the source also has, so the source check could not tell its calls from theirs.
WHOLE = ("elbv2", "kms")
ROOT_FILES = ("_retry", "partitions", "sdk-default-configuration")
SERVICE_FILES = ("endpoint-rule-set-1", "paginators-1", "paginators-1.sdk-extras", "waiters-2")
FORMAT = 2  # bump when what _build writes changes


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bakery"


def data_path(root: Path | None = None) -> Path | None:
    """The directory of trimmed models for this botocore, built on first use; None if impossible."""
    import botocore

    key = hashlib.sha256(json.dumps([FORMAT, OPERATIONS, WHOLE], sort_keys=True).encode()).hexdigest()[:12]
    path = (root or cache_root()) / f"botocore-{botocore.__version__}-{key}"
    if path.is_dir():
        return path
    try:
        _build(path)
    except OSError:
        return None
    return path


def _build(path: Path) -> None:
    from botocore.exceptions import DataNotFoundError
    from botocore.loaders import Loader

    loader = Loader()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".models-", dir=path.parent))

    def write(rel: str, data: dict) -> None:
        target = staging / f"{rel}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data))

    for name in ROOT_FILES:
        write(name, loader.load_data(name))
    endpoints = loader.load_data("endpoints")
    ours = set(OPERATIONS) | set(WHOLE)
    for partition in endpoints["partitions"]:
        partition["services"] = {k: v for k, v in partition["services"].items() if k in ours}
    write("endpoints", endpoints)
    for service in sorted(ours):
        version = loader.determine_latest_version(service, "service-2")
        model = loader.load_service_model(service, "service-2", version)
        write(f"{service}/{version}/service-2", trim(model, OPERATIONS[service]) if service in OPERATIONS else model)
        for name in SERVICE_FILES:
            try:
                write(f"{service}/{version}/{name}", loader.load_service_model(service, name, version))
            except DataNotFoundError:
                pass  # not every service has every file
    try:
        staging.rename(path)  # atomic: a concurrent process sees all of it or builds its own
    except OSError:
        if not path.is_dir():
            raise


def trim(model: dict, operations: tuple[str, ...]) -> dict:
    """The model with only `operations` and the shapes they reach (inputs, outputs, errors)."""
    ops = {name: model["operations"][name] for name in operations}
    todo = [ref["shape"] for op in ops.values()
            for ref in [op.get("input"), op.get("output"), *op.get("errors", [])] if ref]
    shapes: dict[str, dict] = {}
    while todo:
        name = todo.pop()
        if name in shapes:
            continue
        shape = shapes[name] = model["shapes"][name]
        todo.extend(member["shape"] for member in shape.get("members", {}).values())
        todo.extend(shape[k]["shape"] for k in ("member", "key", "value") if k in shape)
    return {**model, "operations": ops, "shapes": shapes}


def use_trimmed_models(botocore_session) -> None:
    """Make the trimmed data this session's only data path (idempotent)."""
    loader = botocore_session.get_component("data_loader")
    path = data_path()
    if path is not None:
        loader.search_paths[:] = [str(path)]
