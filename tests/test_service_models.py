"""Trimmed botocore data: every service and operation bakery calls is in it, and a client built
from it sends the same requests as one built from botocore's own data."""

from __future__ import annotations

import ast
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

from bakery.cloud.service_models import OPERATIONS, WHOLE, data_path, trim, use_trimmed_models
from tests.support import ROOT


def operations_in_source(service: str) -> set[str]:
    """Operation names bakery's code mentions: as client methods, paginator names or event names."""
    model = botocore.session.get_session().get_service_model(service)
    snake = {xform_name(op): op for op in model.operation_names}
    used = set()
    for path in Path(ROOT, "bakery").rglob("*.py"):
        if path.name == "moto_extensions.py":  # replaces moto's handlers of those names; calls no API
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in snake:
                used.add(snake[node.attr])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value.rpartition(".")[2]
                if node.value in snake:
                    used.add(snake[node.value])
                elif f"{service}." in node.value and name in model.operation_names:
                    used.add(name)
    return used


def test_every_service_bakery_makes_a_client_for_is_in_the_trimmed_data():
    made = set()
    for path in Path(ROOT, "bakery").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("client", "create_client") \
                    and node.args and isinstance(node.args[0], ast.Constant):
                made.add(node.args[0].value)
    assert made and made <= set(OPERATIONS) | set(WHOLE)


@pytest.mark.parametrize("service", sorted(OPERATIONS))
def test_every_operation_bakery_calls_is_in_the_trimmed_model(service):
    missing = operations_in_source(service) - set(OPERATIONS[service])
    assert not missing, f"add to bakery/cloud/service_models.py OPERATIONS[{service!r}]: {sorted(missing)}"


def test_a_trimmed_model_keeps_every_shape_its_operations_reach():
    full = botocore.session.get_session().get_component("data_loader").load_service_model("ec2", "service-2")
    small = trim(full, ("RunInstances",))
    assert list(small["operations"]) == ["RunInstances"]
    assert {"RunInstancesRequest", "Reservation", "InstanceNetworkInterfaceSpecificationList",
            "TagSpecificationList"} <= set(small["shapes"]) and len(small["shapes"]) < len(full["shapes"]) / 5
    assert small["metadata"] == full["metadata"]


def test_clients_on_the_trimmed_models_serialise_requests_exactly_like_the_full_ones(tmp_path):
    assert data_path(tmp_path) == data_path(tmp_path)  # built once, then reused
    trimmed = botocore.session.Session()
    trimmed.get_component("data_loader").search_paths.insert(0, str(data_path(tmp_path)))
    sent = {}
    for name, session in (("full", botocore.session.Session()), ("trimmed", trimmed)):
        client = session.create_client("ec2", region_name="us-east-1", aws_access_key_id="a",
                                       aws_secret_access_key="b", endpoint_url="http://127.0.0.1:9")

        def capture(request, name=name, **_):
            sent[name] = request.body
            raise RuntimeError("captured")  # stop before the network
        client.meta.events.register("before-send.ec2.RunInstances", capture)
        with pytest.raises(RuntimeError, match="captured"):
            client.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, ClientToken="fixed",
                                 MetadataOptions={"HttpTokens": "required"},
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}])
        assert (name == "trimmed") == (not hasattr(client, "describe_vpc_endpoints"))
    assert sent["full"] == sent["trimmed"]


def test_a_session_reads_only_the_trimmed_data_and_still_resolves_endpoints_everywhere():
    session = botocore.session.Session()
    use_trimmed_models(session)
    use_trimmed_models(session)
    assert session.get_component("data_loader").search_paths == [str(data_path())]
    for region in ("us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"):
        for service in ("ec2", "ssm", "elbv2"):
            client = session.create_client(service, region_name=region, aws_access_key_id="a",
                                           aws_secret_access_key="b")
            assert region in client.meta.endpoint_url and service.replace("elbv2", "elasticloadbalancing") in \
                client.meta.endpoint_url
    assert session.create_client("ec2", region_name="us-east-1", aws_access_key_id="a",
                                 aws_secret_access_key="b").get_paginator("describe_images")
