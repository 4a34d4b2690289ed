"""bakery as somebody else installs it: sdist and wheel built from this checkout (the version from
git, setuptools-scm), checked as an index would check them, the wheel installed into a new virtualenv
outside the repository. Shared by tests/test_packaging.py and tests/local/test_packaging_local.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path
    sdist: Path
    version: str  # the wheel's, from its file name

    @property
    def bakery(self) -> str:
        return str(self.venv / "bin" / "bakery")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user of this venv: none of this checkout's venv, settings or paths."""
        drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("INVOKE_BAKERY_")}
        path = [p for p in env.get("PATH", "").split(":") if p and Path(p) != Path(sys.executable).parent]
        return {**env, "PATH": ":".join([str(self.venv / "bin"), *path]), **extra}

    def run(self, *argv: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.bakery, *argv], cwd=cwd, env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout)


def _checked(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def source_tree(where: Path) -> tuple[Path, str]:
    """This checkout's files as git sees them (committed or not, never ignored ones) copied to
    `where`, and the version setuptools-scm gives the checkout. A build in the checkout itself would
    rewrite its bakery.egg-info, which the tests' own `importlib.metadata` reads."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():  # a file deleted but not yet committed is listed too
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, where / rel)
    version = _checked([sys.executable, "-m", "setuptools_scm"], cwd=ROOT, timeout=60).stdout.strip()
    return where, version


def build_and_install(where: Path) -> Installed:
    dist = where / "dist"
    src, version = source_tree(where / "src")
    # sdist first, then the wheel from the unpacked sdist: a file the sdist forgets fails here
    _checked([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], timeout=600,
             env={**os.environ, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_BAKERY": version})
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    _checked([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)], timeout=120)
    venv = where / "venv"
    # the interpreter this checkout's venv was made from, not the venv: a clean virtualenv
    _checked([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", str(venv)], timeout=120)
    _checked([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=where, timeout=900)
    return Installed(venv, wheel, sdist, version=wheel.name.split("-")[1])


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())
