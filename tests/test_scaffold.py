"""`bakery init` (issue 19 item 3): a new repository that validates, renders and bakes at once, and
never loses a file the repository already had."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bakery.scaffold.init import TREE, Source, checked_source, init, installed_source

BAKERY = Path(sys.executable).parent / "bakery"
PINNED = "bakery @ git+https://github.com/example/bakery@" + "a" * 40


def bakery(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_BAKERY_")}
    return subprocess.run([str(BAKERY), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_init_writes_a_repository_that_validates_and_renders_as_it_is(tmp_path):
    done = bakery("init", "infra", "--bakery-source", PINNED, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:-1] == [f"created {rel}" for rel in TREE]
    assert done.stdout.splitlines()[-1].startswith("next: cd infra && bakery validate")
    assert done.stderr == ""  # pinned: no warning
    repo = tmp_path / "infra"
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == sorted(TREE)
    valid = bakery("validate", cwd=repo)
    assert valid.returncode == 0 and valid.stdout.strip() == "ok: 5 file(s) valid", valid.stdout + valid.stderr
    for env in ("dev", "prod"):
        rendered = bakery("render", "--env", env, "--tier", "web", cwd=repo)
        assert rendered.returncode == 0, rendered.stderr
        part = yaml.safe_load(rendered.stdout)
        assert "nginx" in part["runcmd"][0][2] and part["write_files"][1]["path"] == "/etc/nginx/sites-enabled/default"
    assert yaml.safe_load((repo / "invoke.yaml").read_text()) == {"bakery": {"cloud": "local"}}
    assert ".bakery/" in (repo / ".gitignore").read_text().splitlines()
    workflow = yaml.safe_load((repo / ".github/workflows/rebake.yml").read_text())
    assert workflow["env"]["BAKERY_SOURCE"] == PINNED


def test_a_second_init_keeps_every_file_and_adds_only_the_missing_ones(tmp_path):
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/dev.yaml").write_text("# mine\n")
    (tmp_path / "README.md").write_text("# my infrastructure\n")
    done = init(tmp_path, Source(PINNED, pinned=True))
    assert done.kept == ["README.md", "envs/dev.yaml"] and len(done.created) == len(TREE) - 2
    assert (tmp_path / "envs/dev.yaml").read_text() == "# mine\n"
    assert (tmp_path / "README.md").read_text() == "# my infrastructure\n"
    (tmp_path / "recipes/web.yaml").unlink()
    again = bakery("init", "--bakery-source", PINNED, cwd=tmp_path)
    assert again.returncode == 0
    assert "created recipes/web.yaml" in again.stdout.splitlines()
    assert sum(line.startswith("kept ") for line in again.stdout.splitlines()) == len(TREE) - 1


@pytest.mark.parametrize("argv, message", [
    (["init", "--bakery-source", "bakery\nrm -rf /"], "error: --bakery-source 'bakery\\nrm -rf /': one pip requirement"),
    (["init", "--bakery-source", "${{ github.token }}"], "error: --bakery-source '${{ github.token }}': one pip"),
    (["init", "afile"], "error: init: afile: exists and is not a directory"),
])
def test_bad_init_input_is_one_line_and_writes_nothing(tmp_path, argv, message):
    (tmp_path / "afile").write_text("")
    done = bakery(*argv, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_init_help_is_the_tasks_help_not_a_directory_named_help(tmp_path):
    done = bakery("init", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "--bakery-source" in done.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("requirement, pinned", [
    (PINNED, True), ("bakery==1.2.3", True), ("bakery>=1.2", False), ("bakery @ git+https://x/bakery@main", False),
])
def test_a_source_is_pinned_only_to_one_commit_or_one_version(requirement, pinned):
    assert checked_source(requirement) == Source(requirement, pinned)


def test_an_unpinned_source_is_written_with_a_warning_naming_the_fix(tmp_path):
    done = bakery("init", "--bakery-source", "bakery>=1", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stderr.startswith("warning: the workflow installs 'bakery>=1', which no index serves as one exact")


def test_without_a_source_the_workflow_installs_what_this_bakery_was_installed_from():
    source = installed_source()
    from importlib.metadata import version

    # this checkout is installed editable: its version (a +gSHA build when untagged) is the guess
    assert source.requirement == f"bakery=={version('bakery')}"
    assert source.pinned is ("+" not in version("bakery"))
