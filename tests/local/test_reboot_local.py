"""A recipe that reboots its builder, on the local cloud (issue 17 item 3): RebootInstances restarts
the machine (systemd as PID 1 shuts down and boots again, /run is a new tmpfs), and the bake goes on
over SSH with the same pinned host key, on the new boot."""

from __future__ import annotations

import io

import pytest

from bakery.bake.run import bake
from bakery.config.settings import Settings
from bakery.progress import Reporter
from tests.local.test_local_cloud import layer_file
from tests.support import write_recipe

pytestmark = pytest.mark.local

RECIPE = """\
source:
  filter: {name: "debian-12-amd64-*", owners: ["136693071363"]}
builder:
  ssh: {user: admin, timeout: 60}
steps:
  - {name: before, shell: 'touch /run/this-boot && cat /proc/1/comm'}
  - {name: reboot, reboot: {timeout: 120}}
  - {name: after, shell: 'test ! -e /run/this-boot && echo "$(cat /proc/1/comm) booted again" > /etc/rebooted'}
"""


def test_a_recipe_with_a_reboot_step_bakes_on_the_local_cloud(cloud, tmp_path):
    write_recipe(tmp_path / "recipes", "rb", RECIPE)
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=tmp_path, recipes_dir=tmp_path / "recipes",
                        state_dir=tmp_path / "state")
    out = io.StringIO()
    manifest = bake(settings, "rb", {}, report=Reporter(stream=out))
    assert [(s.name, s.status) for s in manifest.steps] == [("before", "ok"), ("reboot", "ok"), ("after", "ok")]
    assert "before | systemd" in out.getvalue()
    assert layer_file(cloud.layers.layer_file(manifest.ami_id), "etc/rebooted") == b"systemd booted again\n"
