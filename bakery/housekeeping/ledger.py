"""The resource ledger: a local journal of every cloud resource a run creates.

Tags find a dead run's resources from anywhere (a fresh CI machine), but only once their
expiry has passed and only if the tags were applied. The ledger finds them on this machine at
once, by id, even when the run died between a create call and its tags, and it knows things
tags cannot say (the SSM value a publish overwrote, a launch template version number).

One JSON-lines file per run under STATE/ledger/, appended and fsynced per record, right after
the create call returns and before the run waits on the resource. The run holds an exclusive
flock on its file while it lives; the kernel drops it when the process dies, even on SIGKILL,
so the janitor can tell a live run from a dead one without trusting PIDs.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# The janitor removes what is outstanding in this order: an Auto Scaling group would replace the
# instances taken from it; instances hold groups, key pairs and ENIs; published pointers (SSM
# values, template versions) go before the images they name.
REMOVAL_ORDER = ("auto-scaling-group", "instance", "ssm-parameter", "launch-template-version", "security-group",
                 "key-pair", "image", "key-file")


@dataclass(frozen=True)
class Entry:
    kind: str            # one of REMOVAL_ORDER
    id: str              # instance id, group id, key name, AMI id, parameter name, "template:version", path
    region: str | None   # None for local things (the private key file)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def label(self) -> str:
        where = f" in {self.region}" if self.region else ""
        return f"{self.kind} {self.id}{where}"


@dataclass
class DeadRun:
    run: str
    what: str
    ci_run: str | None  # BAKERY_RUN_ID of the CI run it belonged to
    path: Path
    outstanding: list[Entry]


class Ledger:
    """The journal of one live run. `close()` deletes it when nothing is left outstanding."""

    def __init__(self, directory: Path, run: str, what: str):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / f"{run}.jsonl"
        self.run = run
        # os.open's descriptor is not inherited by child processes (sandboxes, sshd), so the
        # lock really dies with this process.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise
        self._outstanding: dict[tuple, Entry] = {}
        self._write({"event": "start", "run": run, "what": what, "pid": os.getpid(), "host": socket.gethostname(),
                     "ci_run": os.environ.get("BAKERY_RUN_ID")})

    def created(self, kind: str, rid: str, region: str | None, **extra) -> None:
        entry = Entry(kind, rid, region, extra)
        self._outstanding[(kind, rid, region)] = entry
        self._write({"event": "created", "kind": kind, "id": rid, "region": region, "extra": extra})

    def removed(self, kind: str, rid: str, region: str | None) -> None:
        self._settle("removed", kind, rid, region)

    def kept(self, kind: str, rid: str, region: str | None) -> None:
        """The resource is a product (a finished image, a launched instance): never the janitor's."""
        self._settle("kept", kind, rid, region)

    def outstanding(self) -> list[Entry]:
        return list(self._outstanding.values())

    def close(self) -> None:
        if self._fd is None:
            return
        if not self._outstanding:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock: from now on the janitor may act on what is left
        self._fd = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _settle(self, event: str, kind: str, rid: str, region: str | None) -> None:
        if self._outstanding.pop((kind, rid, region), None) is not None:
            self._write({"event": event, "kind": kind, "id": rid, "region": region})

    def _write(self, record: dict) -> None:
        _append(self._fd, record)


def _append(fd: int, record: dict) -> None:
    """One timestamped JSON line, on disk before the caller goes on."""
    record = {"t": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), **record}
    os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
    os.fsync(fd)


def read(path: Path) -> tuple[dict, list[Entry]]:
    """The run's start record, and what it created that was neither removed nor kept, oldest first.

    A torn last line (the process died mid-write) is ignored: the resource it would have named
    still carries the run's tags.
    """
    start, pending = {"what": path.stem}, {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        key = (rec.get("kind"), rec.get("id"), rec.get("region"))
        if rec.get("event") == "start":
            start = rec
        elif rec.get("event") == "created":
            pending[key] = Entry(*key, rec.get("extra") or {})
        elif rec.get("event") in ("removed", "kept"):
            pending.pop(key, None)
    return start, list(pending.values())


def dead_runs(directory: Path) -> tuple[list[DeadRun], list[str]]:
    """Runs whose process is gone (their lock is free), and the ids of the live ones."""
    dead, live = [], []
    if not directory.is_dir():
        return dead, live
    for path in sorted(directory.glob("*.jsonl")):
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.append(path.stem)
                continue
            start, outstanding = read(path)
            dead.append(DeadRun(path.stem, start.get("what", path.stem), start.get("ci_run"), path, outstanding))
        finally:
            os.close(fd)
    return dead, live


def settle(run: DeadRun, gone: list[Entry]) -> None:
    """Record what the janitor removed; delete the journal once nothing is left."""
    left = [e for e in run.outstanding if e not in gone]
    if not left:
        run.path.unlink(missing_ok=True)
        return
    fd = os.open(run.path, os.O_WRONLY | os.O_APPEND)
    try:
        for e in gone:
            _append(fd, {"event": "removed", "kind": e.kind, "id": e.id, "region": e.region, "by": "janitor"})
    finally:
        os.close(fd)
