"""A private local cloud for a bench: a temporary work dir, its own data dir sharing the machine's
cached Debian base (as the tests share it), the environment that points `invoke` at it, and the
cloud purged however the bench ends; and `bake_json`, one `invoke bake ... --json` timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def private_local_cloud(prefix: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """(work dir, environment for `invoke`); add settings to the environment in place."""
    from bakery.config.settings import default_data_dir
    from bakery.local.base import ensure_base_image, share_base

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        ensure_base_image(default_data_dir(), log=lambda line: print(line, file=sys.stderr))
        share_base(data, default_data_dir())
        env = {**os.environ, "INVOKE_BAKERY_CLOUD": "local", "BAKERY_DATA_DIR": str(data),
               "INVOKE_BAKERY_STATE_DIR": str(work / "state")}
        try:
            yield work, env
        finally:
            subprocess.run([sys.executable, "-m", "invoke", "local.down", "--purge"], cwd=ROOT, env=env,
                           capture_output=True, timeout=300)


def bake_json(env: dict, recipe: str, *flags: str, timeout: float = 900) -> tuple[float, dict]:
    """`invoke bake --recipe RECIPE --json FLAGS`: its wall time and its manifest; a failed bake
    ends the bench with its output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "invoke", "bake", "--recipe", recipe, "--json", *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bake {recipe} {' '.join(flags)} failed (rc={done.returncode}):\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)
