"""Write a new repository of recipes, environments, templates and a rebake workflow.

A file that exists is kept as it is, never merged or overwritten: `bakery init` in a repository
that already has some of these files adds only the missing ones and says which it kept.

The workflow installs bakery from `source`, a pip requirement pinned to one commit of a git
repository over https, as its actions are pinned to commits: a moved tag or branch cannot change
the bakery that runs with the AWS role. A version (`bakery==1.2.3`) is no pin: the name `bakery` on
PyPI is another project's, and whoever owns it decides what any version number installs. Without
`--bakery-source` the source is where this bakery came from when that was such a commit (PEP 610's
direct_url.json); otherwise it is left empty, and the workflow's first job fails, saying to set it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

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


def pinned(requirement: str) -> bool:
    """One commit of a git repository over https: `bakery @ git+https://HOST/PATH@<40 hex digits>`."""
    try:
        url = Requirement(requirement).url or ""
    except InvalidRequirement:
        return False
    return bool(re.fullmatch(r"git\+https://[^\s@]+@[0-9a-f]{40}", url))


def installed_source(dist: metadata.Distribution | None = None) -> Source:
    """Where this bakery came from, when that was one commit of a git repository over https."""
    try:
        dist = dist or metadata.distribution("bakery")
    except metadata.PackageNotFoundError:
        return Source("", pinned=False)
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    vcs = origin.get("vcs_info") or {}
    if vcs.get("vcs") == "git" and re.fullmatch(r"[0-9a-f]{40}", vcs.get("commit_id", "")):
        requirement = f"bakery @ git+{origin.get('url', '')}@{vcs['commit_id']}"
        if pinned(requirement):
            return Source(requirement, pinned=True)
    return Source("", pinned=False)


def checked_source(requirement: str) -> Source:
    """`--bakery-source`: a requirement for bakery and nothing else (no pip option, no other package)."""
    text = requirement.strip()
    usage = "one pip requirement for bakery, e.g. 'bakery @ git+https://github.com/OWNER/bakery@COMMIT'"
    if "\n" in text or "${{" in text or text.startswith("-"):
        raise ConfigError(f"--bakery-source {requirement!r}: {usage}")
    try:
        name = Requirement(text).name
    except InvalidRequirement:
        raise ConfigError(f"--bakery-source {requirement!r}: {usage}") from None
    if name != "bakery":
        raise ConfigError(f"--bakery-source {requirement!r}: installs {name!r}, not bakery")
    return Source(text, pinned=pinned(text))


def workflow_text(source: Source) -> str:
    head = _package_file(f"files/{TREE[WORKFLOW]}")
    # a JSON string is a YAML double-quoted scalar: any requirement stays one value
    return head.replace(SOURCE_TOKEN, json.dumps(source.requirement)) + _package_file("workflow_jobs.yml")


def init(directory: Path, source: Source | None = None) -> Scaffold:
    """Write every file of TREE that `directory` does not have yet."""
    if str(directory).startswith("-"):  # invoke hands an unknown flag to a positional argument
        raise ConfigError(f"init: {str(directory)!r} is not a directory name (see: bakery --help init)")
    # every directory the tree needs, checked before the first file is written: all or nothing
    for rel in ("", *sorted({str(Path(r).parent) for r in TREE} - {"."})):
        for where in (directory / rel, *(directory / rel).parents):
            if where.exists() and not where.is_dir():
                raise ConfigError(f"init: {where}: exists and is not a directory")
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
