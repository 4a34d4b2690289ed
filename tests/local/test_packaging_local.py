"""The scaffold on the local cloud from a pip install (issue 19): the wheel built from this checkout,
in a clean virtualenv, in an empty directory outside the repository: `bakery init`, then the
scaffold README's first line without its install step (this machine has the packages):
`bakery bake --recipe web` bakes base and web on real machines, `bakery launch --env dev` launches
one instance of web that passes its health check from the internet. Then `local.down --purge`."""

from __future__ import annotations

from bakery.config.settings import default_data_dir
from bakery.local.base import share_base
from tests.local.conftest import netns_names
from tests.packaging import build_and_install
from tests.support import ROOT

PINNED = "bakery @ git+https://github.com/example/bakery@" + "c" * 40


def test_the_scaffolds_service_recipe_bakes_and_launches_on_the_local_cloud_from_the_wheel(tmp_path, local_base):
    installed = build_and_install(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)
    data = tmp_path / "localcloud"  # a private local cloud, sharing the machine's base image
    share_base(data, default_data_dir())
    before = netns_names()
    assert installed.run("init", "--bakery-source", PINNED, cwd=work).returncode == 0
    try:
        bake = installed.run("bake", "--recipe", "web", cwd=work, timeout=1200, BAKERY_DATA_DIR=str(data))
        assert bake.returncode == 0, bake.stdout[-2000:] + bake.stderr[-4000:]
        assert "[base]" in bake.stderr and "[web]" in bake.stderr  # web's layer below it came first
        assert bake.stdout.startswith("ami-") and " baked in " in bake.stdout
        launch = installed.run("launch", "--env", "dev", cwd=work, timeout=900, BAKERY_DATA_DIR=str(data))
        assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-4000:]
        assert "ready" in launch.stdout, launch.stdout
        again = installed.run("bake", "--recipe", "web", cwd=work, timeout=300, BAKERY_DATA_DIR=str(data))
        assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    finally:
        down = installed.run("local.down", "--purge", cwd=work, timeout=300, BAKERY_DATA_DIR=str(data))
    assert down.returncode == 0, down.stderr
    assert netns_names() <= before  # nothing of it is left on the host
