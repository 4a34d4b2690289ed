"""The `bakery` command (issue 19 item 1): the wheel's console script runs the same tasks as
`invoke` does in this repository, in whatever directory it is started."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.support import ROOT

BAKERY = Path(sys.executable).parent / "bakery"


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*argv], cwd=cwd, capture_output=True, text=True, timeout=120)


def tasks_listed(out: str) -> list[str]:
    """The task lines of `--list` (its heading says "Available tasks" or "Subcommands")."""
    return [line for line in out.splitlines()[1:] if line.strip()]


def test_bakery_lists_the_same_tasks_as_invoke_here():
    mine, theirs = run(str(BAKERY), "--list"), run(sys.executable, "-m", "invoke", "--list")
    assert mine.returncode == theirs.returncode == 0, mine.stderr + theirs.stderr
    assert tasks_listed(mine.stdout) == tasks_listed(theirs.stdout) and len(tasks_listed(mine.stdout)) > 15


def test_bakery_version_is_the_packages():
    out = run(str(BAKERY), "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"bakery {version('bakery')}"


def test_bakery_reads_the_working_directory_as_its_project(tmp_path):
    for part in ("recipes", "envs", "userdata"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "invoke.yaml", tmp_path / "invoke.yaml")
    out = run(str(BAKERY), "validate", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().startswith("ok: "), out.stdout + out.stderr
    (tmp_path / "recipes/web.yaml").write_text("colour: red\n")
    refused = run(str(BAKERY), "validate", cwd=tmp_path)
    assert refused.returncode != 0 and str(tmp_path / "recipes/web.yaml") in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
