"""Ctrl-C and SIGTERM become an `Interrupted` exception, so every cleanup still runs.

While cleanups run, further signals are noted but do not interrupt them: a second
Ctrl-C must not leave a builder running with SSH open.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

from bakery.errors import Interrupted

_state = {"shielded": False, "pending": None}


def _handler(signum, frame):
    name = signal.Signals(signum).name
    if _state["shielded"]:
        _state["pending"] = name
        print(f"bakery: {name} received; finishing clean-up first", file=sys.stderr, flush=True)
        return
    raise Interrupted(f"interrupted by {name}; cleaned up what this run created")


@contextlib.contextmanager
def interruptible():
    """Install the handlers for the duration of one command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def shielded():
    """Defer signals while cleaning up."""
    previous = _state["shielded"]
    _state["shielded"] = True
    try:
        yield
    finally:
        _state["shielded"] = previous
