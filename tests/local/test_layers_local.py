"""Layered images on the local cloud (issue 17 item 1), through the command line: a `web` layered on
a `base` runs only its own steps on base's image; changing base.yaml makes `rebake` bake base, then
web on base's new image; changing only web.yaml bakes only web."""

from __future__ import annotations

import json

import pytest

from bakery.config.settings import Settings
from tests.local.test_local_cloud import cli, layer_file
from tests.support import write_recipe

pytestmark = pytest.mark.local

BASE = """\
source:
  filter: {{name: "debian-12-amd64-*", owners: ["136693071363"]}}
builder:
  ssh: {{user: admin, timeout: 60}}
steps:
  - {{name: base marker, shell: 'echo base {version} > /etc/base-marker'}}
freshness: {{updates: none}}
"""
WEB = """\
source: {{recipe: base}}
builder:
  ssh: {{user: admin, timeout: 60}}
steps:
  - {{name: web marker, shell: 'cat /etc/base-marker > /etc/web-saw && echo web {version} > /etc/web-marker'}}
freshness: {{updates: none}}
"""


@pytest.fixture
def settings(cloud, tmp_path):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "base", BASE.format(version=1))
    write_recipe(recipes, "web", WEB.format(version=1))
    return Settings(cloud="local", data_dir=cloud.data_dir, project_dir=tmp_path, recipes_dir=recipes,
                    state_dir=tmp_path / "state")


def run(args: list[str], cloud, settings):
    return cli(args, cloud, settings, extra_env={"INVOKE_BAKERY_RECIPES_DIR": str(settings.recipes)})


def rows(out) -> dict[str, dict]:
    assert out.returncode == 0, out.stderr[-3000:]
    return {row["recipe"]: row for row in json.loads(out.stdout)}


def test_a_layer_runs_only_its_own_steps_and_a_changed_parent_rebakes_it_on_the_new_image(cloud, settings):
    baked = run(["bake", "--recipe", "web", "--json"], cloud, settings)
    assert baked.returncode == 0, baked.stderr[-3000:]
    web = json.loads(baked.stdout)
    own = [line for line in baked.stderr.splitlines() if line.startswith("[web] ✓ step ")]
    assert [line.split(": ok")[0] for line in own] == ["[web] ✓ step 1/1: web marker"]  # base's: [base] lines
    assert any(line.startswith("[base] ✓ step 1/1: base marker") for line in baked.stderr.splitlines())
    layer = cloud.layers.layer_file(web["ami_id"])
    assert layer_file(layer, "etc/web-saw") == b"base 1\n"  # baked on base's image

    write_recipe(settings.recipes, "base", BASE.format(version=2))
    second = rows(run(["rebake", "--json"], cloud, settings))
    assert (second["base"]["decision"], second["web"]["decision"]) == ("rebaked", "rebaked")
    new_web = cloud.layers.layer_file(second["web"]["ami_id"])
    assert layer_file(new_web, "etc/web-saw") == b"base 2\n"  # on base's new image, so after it

    write_recipe(settings.recipes, "web", WEB.format(version=2))
    third = rows(run(["rebake", "--json"], cloud, settings))
    assert (third["base"]["decision"], third["web"]["decision"]) == ("unchanged", "rebaked")
