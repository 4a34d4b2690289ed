"""Progress on stderr: one line per stage with its duration, step output under its name.

Kept to plain lines (not a live-updating display) so CI logs and `--json` pipelines
read the same as a terminal.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TextIO


class Stage:
    def __init__(self, name: str):
        self.name = name
        self.detail = ""


class Reporter:
    def __init__(self, prefix: str = "", stream: TextIO | None = None, quiet: bool = False):
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._timings: dict[str, float] = {}

    def prefixed(self, prefix: str) -> "Reporter":
        """A reporter of its own (its own stage timings) writing where this one does, each line
        prefixed with `prefix` instead of this one's: one recipe's bake among several."""
        return Reporter(prefix=prefix, stream=self.stream, quiet=self.quiet)

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str):
        stage = Stage(name)
        start = time.monotonic()
        try:
            yield stage
        except BaseException:
            self._timings[name] = round(time.monotonic() - start, 3)
            self._print(f"{self.prefix}✗ {name} ({time.monotonic() - start:.2f}s)")
            raise
        self._timings[name] = round(time.monotonic() - start, 3)
        detail = f": {stage.detail}" if stage.detail else ""
        self._print(f"{self.prefix}✓ {name}{detail} ({time.monotonic() - start:.2f}s)")

    def output(self, source: str, line: str) -> None:
        self._print(f"{self.prefix}  {source} | {line}")

    def warn(self, text: str) -> None:
        self._print(f"{self.prefix}! {text}")

    def info(self, text: str) -> None:
        self._print(f"{self.prefix}{text}")

    def timings(self) -> dict[str, float]:
        return dict(self._timings)
