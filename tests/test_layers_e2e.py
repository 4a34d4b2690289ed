"""Layered images (issue 17 item 1) against a moto server and a real sshd: a recipe whose source is
another recipe is baked on that recipe's newest finished image and runs only its own steps;
`bake` brings the layers below up to date first; `rebake` bakes parents before children, a
changed parent rebakes its children, and a child of a failed parent is not baked."""

from __future__ import annotations

import io

import pytest

from bakery.bake.rebake import rebake
from bakery.bake.run import bake
from bakery.errors import ConfigError
from bakery.progress import Reporter
from tests.support import layer_recipe_text, leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

BASE = "  - {name: base step, shell: echo base > /srv/base}\n"
WEB = "  - {name: web step, shell: 'test -f /srv/base && echo web'}\n"


@pytest.fixture
def recipes(tmp_path, builder_host):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "base", recipe_text(builder_host.port, BASE))
    write_recipe(recipes, "web", layer_recipe_text(builder_host.port, WEB, "base"))
    return recipes


def test_bake_brings_the_parent_up_to_date_then_bakes_the_layer_on_its_image_with_its_own_steps(
        moto, recipes, settings_for):
    out = io.StringIO()
    web = bake(settings_for(recipes), "web", {}, report=Reporter(stream=out))
    lines = out.getvalue().splitlines()
    base_steps = [line for line in lines if line.startswith("[base] ") and "step 1/1: base step" in line]
    web_steps = [line for line in lines if not line.startswith("[base] ") and "step " in line and "✓" in line]
    assert base_steps and [line.split(": ok")[0] for line in web_steps] == ["✓ step 1/1: web step"]
    ec2 = moto.client()
    (base_image,) = ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag:bakery:recipe",
                                                                   "Values": ["base"]}])["Images"]
    assert web.source_ami == base_image["ImageId"]

    again = io.StringIO()
    assert bake(settings_for(recipes), "web", {}, report=Reporter(stream=again)).skipped
    assert "launch builder" not in again.getvalue()  # base and web both unchanged: no builder at all
    assert leftovers(ec2) == {}


def test_a_layer_whose_parent_has_no_image_and_is_not_baked_here_says_so(moto, recipes, settings_for):
    from bakery.bake.inputs import load_inputs
    from bakery.bake.run import Bake

    settings = settings_for(recipes)
    with pytest.raises(ConfigError, match=r"web.yaml: source.recipe: recipe 'base' has no finished image in "
                                          r"us-east-1: bake it first \(invoke bake --recipe base\)"):
        Bake(settings, load_inputs(settings.recipes, settings.state, "web"), {}, report=Reporter(quiet=True)).run()


def test_rebake_bakes_parents_first_and_a_changed_parent_rebakes_its_children(moto, recipes, builder_host,
                                                                              settings_for):
    settings = settings_for(recipes)
    write_recipe(recipes, "app", layer_recipe_text(builder_host.port, WEB.replace("web", "app"), "base"))

    first = rebake(settings, None, report=Reporter(quiet=True))
    assert [(r.recipe, r.decision) for r in first] == [("app", "rebaked"), ("base", "rebaked"), ("web", "rebaked")]
    ec2 = moto.client()
    source = {r.recipe: ec2.describe_images(ImageIds=[r.ami_id])["Images"][0] for r in first}
    tags = {name: {t["Key"]: t["Value"] for t in image["Tags"]} for name, image in source.items()}
    assert tags["web"]["bakery:source-ami"] == tags["app"]["bakery:source-ami"] == first[1].ami_id

    write_recipe(recipes, "web", layer_recipe_text(builder_host.port, WEB + "  - {name: more, shell: 'true'}\n", "base"))
    only_web = rebake(settings, None, report=Reporter(quiet=True))
    assert [(r.recipe, r.decision) for r in only_web] == [("app", "unchanged"), ("base", "unchanged"),
                                                         ("web", "rebaked")]

    write_recipe(recipes, "base", recipe_text(builder_host.port, BASE + "  - {name: patch, shell: 'true'}\n"))
    everything = rebake(settings, None, report=Reporter(quiet=True))
    assert [(r.recipe, r.decision) for r in everything] == [("app", "rebaked"), ("base", "rebaked"),
                                                           ("web", "rebaked")]
    new_base = everything[1].ami_id
    for row in (everything[0], everything[2]):
        image = ec2.describe_images(ImageIds=[row.ami_id])["Images"][0]
        assert {t["Key"]: t["Value"] for t in image["Tags"]}["bakery:source-ami"] == new_base
    assert leftovers(ec2) == {}


def test_a_child_of_a_failed_parent_is_not_baked_on_the_old_image(moto, recipes, builder_host, settings_for):
    settings = settings_for(recipes)
    rebake(settings, None, report=Reporter(quiet=True))
    write_recipe(recipes, "base", recipe_text(builder_host.port, BASE + "  - {name: breaks, shell: exit 5}\n"))
    rows = rebake(settings, None, report=Reporter(quiet=True))
    assert [(r.recipe, r.decision) for r in rows] == [("base", "failed"), ("web", "failed")]
    assert rows[1].reason == "source recipe base failed: not baked"
    assert leftovers(moto.client()) == {}
