"""The `bakery` command (issue 19 item 1): the wheel's console script runs the same tasks as
`invoke` does in this repository, in whatever directory it is started."""

from __future__ import annotations

import shutil
import subprocess
import sys
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


def test_bakery_version_is_the_installed_packages(tmp_path):
    """As the package's metadata says where bakery is installed (read away from this checkout,
    whose bakery.egg-info an importer in it would find first)."""
    out = run(str(BAKERY), "--version", cwd=tmp_path)
    meta = run(sys.executable, "-c", "from importlib.metadata import version; print(version('bakery'))", cwd=tmp_path)
    assert out.returncode == meta.returncode == 0 and out.stdout == f"bakery {meta.stdout.strip()}\n"


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


def complete_in_bash(line: str, cwd: Path) -> list[str]:
    """What bash offers for TAB at the end of `line`, through the script `bakery` prints."""
    import os

    script = run(str(BAKERY), "--print-completion-script", "bash", cwd=cwd)
    assert script.returncode == 0 and "complete -F _complete_bakery -o default bakery" in script.stdout
    words = line.split(" ")  # as bash splits it: a trailing space is an empty word being completed
    probe = (f"{script.stdout}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
             f"_complete_bakery bakery {words[-1]!r} {words[-2]!r}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run(["bash", "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{BAKERY.parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_tasks_flags_and_the_recipes_and_environments_of_the_working_directory(tmp_path):
    for part in ("recipes", "envs"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("files", "scripts"))
    assert complete_in_bash("bakery loc", tmp_path) == ["local.down", "local.install", "local.status", "local.up"]
    assert complete_in_bash("bakery bake --no", tmp_path) == ["--no-cache"]
    offered = complete_in_bash("bakery bake --recipe ", tmp_path)
    assert offered == ["app", "base", "db", "web"]  # not common.yaml: an abstract template, which no task bakes
    assert "abstract: true" in (tmp_path / "recipes/common.yaml").read_text()
    assert complete_in_bash("bakery bake --recipe w", tmp_path) == ["web"]
    assert complete_in_bash("bakery launch --env p", tmp_path) == ["prod"]
    assert "base" not in complete_in_bash("bakery bake --recipe web ", tmp_path)  # given: not offered again


def test_completion_reads_the_settings_where_recipes_live_and_never_prints_a_traceback(tmp_path):
    import os

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/only.yaml").write_text("source: {ami: ami-12345678}\n")
    os.environ["INVOKE_BAKERY_RECIPES_DIR"] = str(tmp_path / "elsewhere")
    try:
        assert complete_in_bash("bakery bake --recipe ", tmp_path) == ["only"]
    finally:
        del os.environ["INVOKE_BAKERY_RECIPES_DIR"]
    (tmp_path / "invoke.yaml").write_text("bakery: [\n")
    broken = run(str(BAKERY), "--complete", "--", "bakery", "bake", "--recipe", cwd=tmp_path)
    assert "Traceback" not in broken.stderr and broken.stderr.count("\n") == 1


def test_an_invoke_yaml_that_is_not_yaml_is_one_line_naming_it(tmp_path):
    (tmp_path / "invoke.yaml").write_text("bakery:\n  cloud: [local\n")
    done = run(str(BAKERY), "validate", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(f"error: {tmp_path}/invoke.yaml:")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
