"""Trimmed botocore service models: every bakery command starts ~0.1 s sooner.

botocore parses the whole EC2 model (830 operations, 4.4 MB of JSON) and builds a method per
operation each time a process creates an EC2 client, although bakery calls 48 of them. Here the
models are cut down, once per botocore version, to the operations bakery calls (with every shape
they reach) and put first on the client's data path, botocore's documented way to supply
models. Paginators, waiters and endpoint rules still come from botocore itself.

The operation lists are checked by tests/test_service_models.py against bakery's source, so a
new call cannot be missed. If the cache cannot be written, clients use the full models.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

OPERATIONS = {
    "ec2": (
        "AllocateAddress", "AssignPrivateIpAddresses", "AssociateAddress", "AttachNetworkInterface",
        "AuthorizeSecurityGroupEgress", "AuthorizeSecurityGroupIngress", "CopyImage", "CreateImage",
        "CreateLaunchTemplate", "CreateLaunchTemplateVersion", "CreateNetworkAcl", "CreateNetworkAclEntry",
        "CreateNetworkInterface", "CreateSecurityGroup", "CreateSubnet", "CreateTags", "CreateVpc",
        "DeleteKeyPair", "DeleteLaunchTemplate", "DeleteLaunchTemplateVersions", "DeleteSecurityGroup",
        "DeleteSnapshot", "DeregisterImage", "DescribeAddresses", "DescribeImages", "DescribeInstanceAttribute",
        "DescribeInstanceTypes", "DescribeInstances", "DescribeKeyPairs", "DescribeLaunchTemplateVersions",
        "DescribeLaunchTemplates", "DescribeNetworkAcls", "DescribeNetworkInterfaces", "DescribeSecurityGroups",
        "DescribeSnapshots", "DescribeSubnets", "DescribeVpcs", "DetachNetworkInterface", "EnableImageDeprecation",
        "ImportKeyPair", "ModifyImageAttribute", "ModifyLaunchTemplate", "ModifyNetworkInterfaceAttribute",
        "ModifySnapshotAttribute", "ModifySubnetAttribute", "ReplaceNetworkAclAssociation", "RunInstances",
        "StopInstances", "TerminateInstances",
    ),
    "ssm": ("DeleteParameter", "DescribeParameters", "GetParameter", "GetParameterHistory", "PutParameter"),
}


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bakery"


def data_path(root: Path | None = None) -> Path | None:
    """The directory of trimmed models for this botocore, built on first use; None if impossible."""
    import botocore

    key = hashlib.sha256(json.dumps(OPERATIONS, sort_keys=True).encode()).hexdigest()[:12]
    path = (root or cache_root()) / f"botocore-{botocore.__version__}-{key}"
    if path.is_dir():
        return path
    try:
        _build(path)
    except OSError:
        return None
    return path


def _build(path: Path) -> None:
    from botocore.loaders import Loader

    loader = Loader()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".models-", dir=path.parent))
    for service, operations in OPERATIONS.items():
        version = loader.determine_latest_version(service, "service-2")
        model = loader.load_service_model(service, "service-2", version)
        target = staging / service / version
        target.mkdir(parents=True)
        (target / "service-2.json").write_text(json.dumps(trim(model, operations)))
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
    """Put the trimmed models first on this session's data path (once per session)."""
    loader = botocore_session.get_component("data_loader")
    path = data_path()
    if path is not None and str(path) not in loader.search_paths:
        loader.search_paths.insert(0, str(path))
