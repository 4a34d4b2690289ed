"""The small interface every way of reaching a machine implements.

The bake's steps only see a Connector; where the machine lives (an EC2 builder's address,
a bastion hop, a local sandbox's network namespace) is the Dial's business (dial.py), as
pyinfra's connectors hide it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

OutputSink = Callable[[str], None]


@dataclass(frozen=True)
class RunResult:
    exit_status: int
    timed_out: bool
    seconds: float


class Connector(Protocol):
    def connect(self, timeout: float) -> None:
        """Reach the machine, verify who it is and log in, retrying until `timeout`."""

    def run(self, script: str, *, env: Mapping[str, str], timeout: float, sudo: bool,
            on_output: OutputSink) -> RunResult:
        """Run a script (shebang honoured, /bin/sh -e otherwise) and stream its output lines."""

    def put(self, local: Path, dest: str, *, mode: str | None, owner: str | None, sudo: bool,
            dir_mode: str | None = None) -> None:
        """Copy a file or a directory tree to `dest`, byte-exact, touching nothing else there
        (what lands with which mode and owner: bakery/render/upload.py)."""

    def close(self) -> None:
        ...
