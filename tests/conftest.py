"""Fixtures: real processes (moto server, sshd) on free loopback ports, stopped by PID."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import FakeBuilderHost, MotoServer, stop_process

os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SESSION_TOKEN="testing",
                  AWS_DEFAULT_REGION="us-east-1")
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    yield server
    stop_process(server.proc)


@pytest.fixture
def moto(moto_server):
    """A moto server with empty state, plus a Debian-like source image to bake from."""
    moto_server.reset()
    ec2 = moto_server.client()
    # register_image drops the architecture; an image made from an instance keeps it, as on AWS.
    seed = ec2.run_instances(ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.create_image(InstanceId=seed, Name="test-debian-12-amd64-20260101")
    ec2.terminate_instances(InstanceIds=[seed])
    yield moto_server


@pytest.fixture
def builder_host(moto, tmp_path):
    host = FakeBuilderHost(moto, tmp_path / "builder")
    yield host
    host.close()


@pytest.fixture
def make_builder_host(moto, tmp_path):
    hosts = []

    def make(**kwargs):
        host = FakeBuilderHost(moto, tmp_path / f"builder{len(hosts)}", **kwargs)
        hosts.append(host)
        return host
    yield make
    for host in hosts:
        host.close()


@pytest.fixture
def settings_for(moto, tmp_path):
    from bakery.config.settings import Settings

    def make(recipes: Path, **kw):
        return Settings(cloud="aws", region="us-east-1", endpoint_url=moto.url, project_dir=tmp_path,
                        recipes_dir=recipes, state_dir=tmp_path / "state", **kw)
    return make
