"""`bakery init` (issue 19 item 3): a new repository that validates, renders and bakes at once, and
never loses a file the repository already had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
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
    (["init", "--bakery-source=--index-url=https://evil.example/simple"], "error: --bakery-source '--index-url="),
    (["init", "--bakery-source", "requests @ git+https://x/y@" + "a" * 40], "error: --bakery-source 'requests @ "
                                                                           "git+https://x/y@aaaa"),
    (["init", "--bakery-source", "bakery @@ x"], "error: --bakery-source 'bakery @@ x': one pip requirement"),
    (["init", "--bakery-source"], "Flag <Argument: bakery_source (b)> needed value"),  # invoke's own words
    (["init", "afile"], "error: init: afile: exists and is not a directory"),
    (["init", "infra"], "error: init: infra/recipes: exists and is not a directory"),
])
def test_bad_init_input_is_one_line_and_writes_nothing(tmp_path, argv, message):
    (tmp_path / "afile").write_text("")
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra/recipes").write_text("")  # where the scaffold wants a directory
    done = bakery(*argv, cwd=tmp_path)
    assert done.returncode != 0 and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["afile", "infra", "infra/recipes"]


def test_init_help_is_the_tasks_help_not_a_directory_named_help(tmp_path):
    done = bakery("init", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "--bakery-source" in done.stdout and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("requirement, pinned", [
    (PINNED, True),
    ("bakery==1.2.3", False),  # the name on PyPI is another project's: its owner decides what 1.2.3 is
    ("bakery>=1.2", False),
    ("bakery @ git+https://github.com/example/bakery@main", False),  # a branch moves
    ("bakery @ git+http://github.com/example/bakery@" + "a" * 40, False),  # not over https
    ("bakery @ https://example.com/bakery-1.0-py3-none-any.whl", False),
])
def test_a_source_is_pinned_only_to_one_commit_over_https(requirement, pinned):
    assert checked_source(requirement) == Source(requirement, pinned)


def test_an_unpinned_source_is_written_with_a_warning_naming_the_fix(tmp_path):
    done = bakery("init", "--bakery-source", "bakery==1.0", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stderr.startswith("warning: .github/workflows/rebake.yml installs 'bakery==1.0', not one commit: "
                                  "set its BAKERY_SOURCE")
    kept = bakery("init", "--bakery-source", "bakery==1.0", cwd=tmp_path)
    assert kept.returncode == 0 and kept.stderr == ""  # the workflow was kept: nothing of it to warn about


class Installed(metadata.Distribution):
    """A distribution as pip leaves it, with the direct_url.json (PEP 610) it wrote, if any."""

    def __init__(self, direct_url: dict | None, version: str = "1.0"):
        self.direct_url, self._version = direct_url, version

    def read_text(self, filename):
        if filename == "direct_url.json" and self.direct_url is not None:
            return json.dumps(self.direct_url)
        if filename == "METADATA":
            return f"Metadata-Version: 2.1\nName: bakery\nVersion: {self._version}\n"
        return None

    def locate_file(self, path):
        return Path(path)


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("direct_url, expected", [
    ({"url": "https://github.com/example/bakery", "vcs_info": {"vcs": "git", "commit_id": COMMIT}},
     Source(f"bakery @ git+https://github.com/example/bakery@{COMMIT}", pinned=True)),
    ({"url": "file:///home/me/bakery", "vcs_info": {"vcs": "git", "commit_id": COMMIT}}, Source("", pinned=False)),
    ({"url": "file:///tmp/dist/bakery-1.0-py3-none-any.whl", "archive_info": {}}, Source("", pinned=False)),
    ({"url": "file:///work/bakery", "dir_info": {"editable": True}}, Source("", pinned=False)),
    (None, Source("", pinned=False)),  # from an index: its name there is not ours to trust
])
def test_without_a_source_the_workflow_installs_the_commit_this_bakery_came_from_or_nothing(direct_url, expected):
    assert installed_source(Installed(direct_url)) == expected


def test_a_scaffold_with_no_known_commit_leaves_the_source_empty_and_says_so(tmp_path):
    done = init(tmp_path, installed_source(Installed(None)))
    assert not done.source.pinned
    assert yaml.safe_load((tmp_path / ".github/workflows/rebake.yml").read_text())["env"]["BAKERY_SOURCE"] == ""
    warned = bakery("init", "again", cwd=tmp_path)  # this checkout is installed editable: no commit
    assert warned.stderr.startswith("warning: .github/workflows/rebake.yml has no bakery to install yet")
