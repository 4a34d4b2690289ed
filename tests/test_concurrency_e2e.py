"""Two runs at once on one machine: no double bake, no doubled environment."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from bakery.bake.run import bake
from bakery.launch.run import launch
from bakery.progress import Reporter
from tests.support import leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e


def test_two_bakes_of_one_recipe_bake_once(moto, tmp_path, builder_host, settings_for):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - {name: slow, shell: sleep 1}\n"))
    settings = settings_for(recipes)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: bake(settings, "web", {}, report=Reporter(stream=io.StringIO())), range(2)))
    assert sorted(m.skipped for m in results) == [False, True]
    assert results[0].ami_id == results[1].ami_id
    assert len(builder_host.served) == 1
    assert leftovers(moto.client()) == {}


def test_two_launches_of_one_environment_do_not_double_it(moto, tmp_path, builder_host, settings_for):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, "  - {name: hi, shell: echo hi}\n"))
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "prod.yaml").write_text("tiers:\n  web:\n    image: {recipe: web}\n    count: 3\n")
    settings = settings_for(recipes, envs_dir=envs)
    bake(settings, "web", {}, report=Reporter(quiet=True))
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: launch(settings, "prod", report=Reporter(quiet=True)), range(2)))
    assert sorted(len(r.instances) for r in reports) == [0, 3]
    running = [i for r in moto.client().describe_instances(Filters=[
        {"Name": "tag:bakery:environment", "Values": ["prod"]},
        {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"] for i in r["Instances"]]
    assert len(running) == 3
