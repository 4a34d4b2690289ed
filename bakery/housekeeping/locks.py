"""Machine-local exclusive locks (flock on a file in the state dir).

Two bakes of one recipe, or two launches of one environment, on the same machine must not
race: the second waits, then sees what the first made. Across machines the CI concurrency
groups and the launch's client tokens do this job.
"""

from __future__ import annotations

import fcntl
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Callable


def exclusive(directory: Path, name: str, waiting: Callable[[], AbstractContextManager]) -> IO[str]:
    """Hold the lock until the returned file is closed (use it in a `with`). When another holds it,
    the wait runs inside `waiting()`: a progress stage, so a long wait is seen and heard (heartbeats)."""
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / f"{name}.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with waiting():
            fcntl.flock(fh, fcntl.LOCK_EX)
    return fh
