"""Packaging (issue 19 item 6): the wheel built from this checkout, in a clean virtualenv in an empty
directory outside the repository, is the whole tool: `bakery init`, then `bakery validate` and
`bakery render` work there, and `bakery --version` is the package's version (from git). The bake of
the scaffold's service recipe from the same kind of install is tests/local/test_packaging_local.py."""

from __future__ import annotations

import re
import subprocess
import zipfile

import pytest
import yaml

from bakery.scaffold.init import TREE
from tests.packaging import build_and_install, wheel_names
from tests.support import ROOT

PINNED = "bakery @ git+https://github.com/example/bakery@" + "b" * 40


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return build_and_install(tmp_path_factory.mktemp("packaging"))


def test_the_wheel_alone_starts_validates_and_renders_a_repository_of_its_own(installed, tmp_path):
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?(\.dev\d+)?(\+[\w.]+)?", installed.version), installed.version
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)

    version = installed.run("--version", cwd=work)
    assert version.returncode == 0 and version.stdout == f"bakery {installed.version}\n"
    where = installed.run("--list", cwd=work)  # and the module comes from the venv, not this checkout
    imported = subprocess.run(
        [str(installed.venv / "bin/python"), "-c", "import bakery, sys; print(bakery.__file__)"], cwd=work,
        env=installed.env(), capture_output=True, text=True)
    assert imported.stdout.startswith(str(installed.venv)), imported.stdout + imported.stderr
    assert where.returncode == 0 and "init" in where.stdout and "local.install" in where.stdout

    init = installed.run("init", "--bakery-source", PINNED, cwd=work)
    assert init.returncode == 0 and init.stdout.count("created ") == len(TREE), init.stdout + init.stderr
    valid = installed.run("validate", cwd=work)
    assert valid.returncode == 0 and valid.stdout == "ok: 5 file(s) valid\n", valid.stdout + valid.stderr
    for env in ("dev", "prod"):
        rendered = installed.run("render", "--env", env, "--tier", "web", cwd=work)
        assert rendered.returncode == 0, rendered.stderr
        assert yaml.safe_load(rendered.stdout)["write_files"][1]["path"] == "/etc/nginx/sites-enabled/default"
    checks = installed.run("render", "--env", "dev", "--tier", "web", "--check", cwd=work)
    assert checks.returncode == 0 and "valid" in checks.stdout, checks.stdout + checks.stderr


def test_the_wheel_carries_the_data_bakery_reads_at_run_time_and_nothing_of_the_repository(installed):
    names = wheel_names(installed.wheel)
    for needed in ("bakery/render/schemas/cloud-config-v1.json", "bakery/config/data/ec2.json",
                   "bakery/scaffold/workflow_jobs.yml", *(f"bakery/scaffold/files/{f}" for f in TREE.values())):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "bench/", "recipes/", "envs/", "userdata/")) for n in names)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(installed.wheel) as zf:
        assert "bakery = bakery.tasks:main" in zf.read(entry).decode()
