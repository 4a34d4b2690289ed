"""Write a new repository of recipes, environments, templates and a rebake workflow.

A file that exists is kept as it is, never merged or overwritten: `bakery init` in a repository
that already has some of these files adds only the missing ones and says which it kept.

The workflow installs bakery from `source`, a pip requirement: pinned to a commit or an exact
version, as its actions are pinned to commits, so a moved tag cannot change what runs with the AWS
role. Without `--bakery-source` it is where this bakery came from: the commit of a VCS install, else
`bakery==VERSION`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

from bakery.errors import ConfigError

#: path in the new repository -> its file under files/
TREE: dict[str, str] = {
    "README.md": "README.md",
    "invoke.yaml": "invoke.yaml",
    ".gitignore": "gitignore",
    "recipes/common.yaml": "recipes/common.yaml",
    "recipes/base.yaml": "recipes/base.yaml",
    "recipes/web.yaml": "recipes/web.yaml",
    "envs/dev.yaml": "envs/dev.yaml",
    "envs/prod.yaml": "envs/prod.yaml",
    "userdata/common.yaml.j2": "userdata/common.yaml.j2",
    "userdata/web.yaml.j2": "userdata/web.yaml.j2",
    ".github/workflows/rebake.yml": "github/workflows/rebake.yml",
}
WORKFLOW = ".github/workflows/rebake.yml"
SOURCE_TOKEN = "@BAKERY_SOURCE@"


@dataclass(frozen=True)
class Source:
    """What the workflow's `pip install` gets, and whether that names one exact build."""

    requirement: str
    pinned: bool


@dataclass
class Scaffold:
    directory: Path
    source: Source
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _package_file(name: str) -> str:
    return resources.files("bakery.scaffold").joinpath(name).read_text()


def installed_source() -> Source:
    """Where this bakery came from, as a pip requirement (PEP 610's direct_url.json)."""
    try:
        dist = metadata.distribution("bakery")
    except metadata.PackageNotFoundError:
        return Source("bakery", pinned=False)
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    vcs = origin.get("vcs_info") or {}
    if vcs.get("vcs") == "git" and vcs.get("commit_id") and origin.get("url", "").startswith("https://"):
        return Source(f"bakery @ git+{origin['url']}@{vcs['commit_id']}", pinned=True)
    version = dist.version
    # a local version (+gSHA, a checkout's build) is on no index: the workflow could never install it
    return Source(f"bakery=={version}", pinned="+" not in version)


def checked_source(requirement: str) -> Source:
    text = requirement.strip()
    if not text or "\n" in text or "${{" in text:
        raise ConfigError(f"--bakery-source {requirement!r}: one pip requirement, e.g. "
                          "'bakery @ git+https://github.com/OWNER/bakery@COMMIT' or 'bakery==1.2.3'")
    pinned = bool(re.search(r"@[0-9a-f]{40}$", text) or re.fullmatch(r"bakery\s*==\s*[\w.!]+", text))
    return Source(text, pinned=pinned)


def workflow_text(source: Source) -> str:
    head = _package_file(f"files/{TREE[WORKFLOW]}")
    # a JSON string is a YAML double-quoted scalar: any requirement stays one value
    return head.replace(SOURCE_TOKEN, json.dumps(source.requirement)) + _package_file("workflow_jobs.yml")


def init(directory: Path, source: Source | None = None) -> Scaffold:
    """Write every file of TREE that `directory` does not have yet."""
    if str(directory).startswith("-"):  # invoke hands an unknown flag to a positional argument
        raise ConfigError(f"init: {str(directory)!r} is not a directory name (see: bakery --help init)")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"init: {directory}: exists and is not a directory")
    done = Scaffold(directory, source or installed_source())
    for rel, name in TREE.items():
        path = directory / rel
        if path.exists() or path.is_symlink():
            done.kept.append(rel)
            continue
        text = workflow_text(done.source) if rel == WORKFLOW else _package_file(f"files/{name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "x") as out:  # "x": never over a file that appeared meanwhile
                out.write(text)
        except OSError as exc:
            raise ConfigError(f"init: {path}: {exc.strerror or exc}") from None
        done.created.append(rel)
    return done

