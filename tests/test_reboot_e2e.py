"""Rebooting the builder mid-recipe (issue 17 item 3), against a moto server and a real sshd.

moto's RebootInstances changes nothing, so the test builder stands in for the machine: when the bake
asks EC2 for the reboot, its sshd goes (every session with it) and a new one starts in a fresh
namespace, with a new /run as a new boot has and the same host key; the host itself never
reboots. A step that reboots from inside (`systemctl reboot`, a stand-in there) ends the sshd, and
the test builder starts it again."""

from __future__ import annotations

import io
import time

import pytest

from bakery.bake.run import bake
from bakery.cloud.instances import InstancesAPI
from bakery.errors import RemoteError, WaitTimeout
from bakery.progress import Reporter
from tests.support import leftovers, local_leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

BEFORE = "  - {name: before, shell: 'touch /run/this-boot && echo up'}\n"
AFTER = "  - {name: after, shell: 'test ! -e /run/this-boot && echo a new boot'}\n"


class Reboots:
    come_back = True  # False: the builder never answers again


@pytest.fixture
def reboots(monkeypatch, builder_host) -> Reboots:
    """RebootInstances, then the test builder's stand-in reboot."""
    how = Reboots()
    real = InstancesAPI.reboot_instance

    def reboot_instance(self, instance_id):
        real(self, instance_id)
        builder_host.reboot(come_back=how.come_back)
    monkeypatch.setattr(InstancesAPI, "reboot_instance", reboot_instance)
    return how


def test_a_reboot_step_waits_for_ssh_from_the_next_boot_with_the_same_host_key(
        moto, tmp_path, builder_host, settings_for, reboots):
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, BEFORE + "  - {name: reboot, reboot: true}\n" + AFTER))
    out = io.StringIO()
    manifest = bake(settings_for(recipes), "web", {}, report=Reporter(stream=out))
    assert [(s.name, s.kind, s.status) for s in manifest.steps] == [
        ("before", "shell", "ok"), ("reboot", "reboot", "ok"), ("after", "shell", "ok")]
    assert "after | a new boot" in out.getvalue()
    assert leftovers(moto.client()) == {}


def test_a_builder_that_never_comes_back_fails_at_the_deadline_and_leaves_nothing(
        moto, tmp_path, builder_host, settings_for, reboots):
    reboots.come_back = False
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, BEFORE + "  - {name: reboot, reboot: {timeout: 4}}\n"
                                             + AFTER))
    settings = settings_for(recipes)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"web.yaml: builder i-\w+ did not come back over SSH within the step's "
                                          r"deadline"):
        bake(settings, "web", {}, report=Reporter(quiet=True))
    assert time.monotonic() - started < 60  # the step's 4 s, then the clean-up: not SSH's own 20 s per try
    assert leftovers(moto.client()) == {} and local_leftovers(settings) == []


def test_a_step_that_may_drop_the_connection_reboots_from_inside_and_the_bake_goes_on(
        moto, tmp_path, builder_host, settings_for):
    builder_host.reboots_from_inside()
    steps = BEFORE + "  - {name: kernel, shell: 'systemctl reboot', expect_disconnect: true, timeout: 60}\n" + AFTER
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, steps))
    out = io.StringIO()
    manifest = bake(settings_for(recipes), "web", {}, report=Reporter(stream=out))
    assert [s.status for s in manifest.steps] == ["ok", "ok", "ok"]
    assert "kernel | the step may end the connection (expect_disconnect): connecting again" in out.getvalue()
    assert "after | a new boot" in out.getvalue()


def test_a_dropped_connection_in_a_step_that_did_not_say_so_fails_the_bake(moto, tmp_path, builder_host,
                                                                           settings_for):
    builder_host.reboots_from_inside()
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, BEFORE + "  - {name: kernel, shell: 'systemctl reboot'}\n"))
    settings = settings_for(recipes)
    with pytest.raises(RemoteError):
        bake(settings, "web", {}, report=Reporter(quiet=True))
    assert leftovers(moto.client()) == {}
