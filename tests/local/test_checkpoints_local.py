"""Checkpoints on the local cloud (issue 17 item 2): a long step is followed by a checkpoint without
being marked (settings.checkpoint_after: 5 s here), the checkpoint is a layer that holds what the
steps before it made and none of the builder's keys, and the next bake with only its last step
changed starts a builder from it and runs that step alone, on the files the cached step made."""

from __future__ import annotations

import io
import subprocess

import pytest

from bakery.bake.run import bake
from bakery.config.settings import Settings
from bakery.progress import Reporter
from tests.local.conftest import sandbox_recipe
from tests.local.test_local_cloud import layer_file
from tests.support import write_recipe

pytestmark = pytest.mark.local

SLOW = "{name: slow, shell: 'sleep 6 && echo made > /opt/made-by-slow && echo ran >> /var/tmp/slow-runs'}"


def recipe(version: str) -> str:
    return sandbox_recipe(SLOW, f"{{name: last, shell: 'test -f /opt/made-by-slow && echo {version} > /etc/last-step'}}")


def members(layer) -> set[str]:
    listing = subprocess.run(["tar", "--zstd", "-tf", str(layer)], capture_output=True, text=True, check=True)
    return {line.removeprefix("./") for line in listing.stdout.splitlines()}


def test_a_long_step_leaves_a_layer_the_next_bake_resumes_from_running_only_the_changed_step(cloud, tmp_path):
    recipes = tmp_path / "recipes"
    settings = Settings(cloud="local", data_dir=cloud.data_dir, project_dir=tmp_path, recipes_dir=recipes,
                        state_dir=tmp_path / "state")
    assert settings.checkpoint_after == 5.0
    write_recipe(recipes, "ck", recipe("v1"))
    first = bake(settings, "ck", {}, report=Reporter(stream=io.StringIO()))
    [kept] = first.checkpoints
    assert kept["after_step"] == 1
    layer = cloud.layers.layer_file(kept["image"])
    assert layer_file(layer, "opt/made-by-slow") == b"made\n"
    held = members(layer)
    # cleaned as the product is: no host key, no login key, no cloud-init instance state
    assert not any(m.startswith("etc/ssh/ssh_host_") and not m.endswith(".pub") for m in held), held
    assert not any(m.endswith(".ssh/authorized_keys") for m in held) and "var/lib/cloud/instance" not in held

    write_recipe(recipes, "ck", recipe("v2"))
    out = io.StringIO()
    second = bake(settings, "ck", {}, report=Reporter(stream=out))
    assert second.resumed_from == {"image": kept["image"], "after_step": 1}
    assert [(s.name, s.status) for s in second.steps] == [("slow", "cached"), ("last", "ok")]
    assert f"step 1/2: slow: cached in checkpoint {kept['image']}" in out.getvalue()
    # the last step found the slow step's file on a builder started from the checkpoint
    assert layer_file(cloud.layers.layer_file(second.ami_id), "etc/last-step") == b"v2\n"
    assert cloud.layers.meta(second.ami_id)["parent"] == kept["image"]
    assert layer_file(layer, "var/tmp/slow-runs") == b"ran\n"
