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


# The suite runs on pytest-xdist's workers (pyproject's addopts). Everything that touches the local
# cloud shares one worker, one test at a time: network namespace names are host-wide, a local test
# may remove every bakery-vpc-* namespace (test_durable's host reboot), and the bad-input corpus
# asserts that no namespace appears while it runs. The rest spreads over the other workers, one
# test at a time. The folder says which is which: tests/local/ (marked `local`), plus the corpus.
# (By path, in the controller: pytest 9.2's node ids no longer take xdist's `xdist_group` suffix.)
LOCAL_CLOUD = "local-cloud"
SHARES_THE_HOSTS_NAMESPACES = ("tests/local/", "tests/test_bad_input_corpus.py::")
ONE_WORKER_PER_MODULE = ("tests/test_packaging.py::",)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class LocalCloudApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SHARES_THE_HOSTS_NAMESPACES):
                return LOCAL_CLOUD
            # one worker builds the wheel and its virtualenv once for the module's tests
            return nodeid.split("::")[0] if nodeid.startswith(ONE_WORKER_PER_MODULE) else nodeid

    return LocalCloudApart(config, log)


def pytest_collection_modifyitems(config, items):
    strays = [i.nodeid for i in items if i.get_closest_marker("local") and not i.nodeid.startswith("tests/local/")]
    if strays:
        raise pytest.UsageError(f"{strays[0]}: a local-cloud test lives in tests/local/ (its worker is chosen by path)")
