"""Download steps (issue 17 item 6), against a moto server and a real sshd: a file or directory
copied from the builder into the build's output dir beside its manifest, checked as it lands."""

from __future__ import annotations

import io

import pytest

from bakery.bake.run import bake
from bakery.bake.steps import downloads_dir
from bakery.errors import StepFailed
from bakery.progress import Reporter
from tests.support import leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

REPORT = ("  - name: build a report\n    shell: |\n      mkdir -p /srv/report/sub && echo total 3 > /srv/report/summary.txt\n"
          "      echo detail > /srv/report/sub/detail.log && chmod 640 /srv/report/sub/detail.log\n"
          "      echo one line > /srv/build.log\n")


def test_download_steps_copy_files_and_trees_beside_the_manifest(moto, tmp_path, builder_host, settings_for):
    steps = (REPORT + "  - {name: report, download: {source: /srv/report, dest: reports}}\n"
             "  - {name: log, download: {source: /srv/build.log}}\n")
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, steps))
    settings = settings_for(recipes)
    out = io.StringIO()
    manifest = bake(settings, "web", {}, report=Reporter(stream=out))
    files = downloads_dir(settings.manifests, "web", manifest.build_id)
    assert (files / "reports/report/summary.txt").read_text() == "total 3\n"
    assert (files / "reports/report/sub/detail.log").read_text() == "detail\n"
    assert oct((files / "reports/report/sub/detail.log").stat().st_mode & 0o777) == "0o640"
    assert (files / "build.log").read_text() == "one line\n"
    assert manifest.downloads == [str(files / "reports/report"), str(files / "build.log")]
    assert f"report | /srv/report -> {files / 'reports/report'}" in out.getvalue()
    assert leftovers(moto.client()) == {}


@pytest.mark.parametrize("prepare, source, message", [
    ("", "/srv/nowhere", r"download of /srv/nowhere failed: .*No such file or directory"),
    ("mkdir -p /srv/out && ln -s /etc/passwd /srv/out/passwd", "/srv/out",
     r"download of /srv/out failed: .*passwd.* (is a link to an absolute path|would link to)"),
])
def test_a_download_that_cannot_land_fails_its_step_and_the_bake(moto, tmp_path, builder_host, settings_for,
                                                                  prepare, source, message):
    steps = (f"  - {{name: prepare, shell: '{prepare or 'true'}'}}\n"
             f"  - {{name: fetch, download: {{source: {source}}}}}\n")
    recipes = tmp_path / "recipes"
    write_recipe(recipes, "web", recipe_text(builder_host.port, steps))
    out = io.StringIO()
    with pytest.raises(StepFailed, match="step 2/2: fetch exited with status 1"):
        bake(settings_for(recipes), "web", {}, report=Reporter(stream=out))
    import re
    assert re.search(message, out.getvalue()), out.getvalue()
    assert leftovers(moto.client()) == {}
