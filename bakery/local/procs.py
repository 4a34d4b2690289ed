"""Identity-checked process handling: a pid file is trusted only with the start time it was
written with, so a recycled pid is never signalled."""

from __future__ import annotations

from pathlib import Path


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of a host pid, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def alive(pid: int, starttime: int) -> bool:
    """True if ``pid`` is still the process we started (same start time) and not a zombie."""
    if pid <= 0:
        return False
    st = proc_stat(pid)
    return st is not None and st[1] == starttime and st[0] not in ("Z", "X")


def starttime(pid: int) -> int:
    st = proc_stat(pid)
    return st[1] if st else 0
