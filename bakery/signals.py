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

_local = threading.local()  # shielded: per thread (each bake of a parallel rebake cleans up on its own)
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Worker threads (rebake --jobs) never see a signal: the main thread sets this, and each worker
# raises Interrupted at its next check point (an API call, a wait's poll, a step's output loop),
# outside its clean-up, so every bake unwinds and undoes what it made.
_cancelled = threading.Event()
_cancel_reason = {"why": ""}
# The signal the main thread's handler turned into Interrupted. Libraries catch `Exception` where
# they mean their own errors (paramiko's Packetizer.write_all turns anything raised during a
# socket send, the handler's Interrupted included, into EOFError), so the main thread raises it
# again at its next check point (an API call, a wait's poll, a step's output loop).
_received: dict[str, str | None] = {"name": None}


def cancel_workers(why: str) -> None:
    _cancel_reason["why"] = why
    _cancelled.set()


def clear_cancel() -> None:
    _cancelled.clear()


def check_cancelled() -> None:
    """Outside clean-up: in a worker thread, raise Interrupted once the main thread has cancelled;
    in the main thread, once a signal came (again, if a library swallowed the first raise)."""
    if getattr(_local, "shielded", False):
        return
    if threading.current_thread() is threading.main_thread():
        if _received["name"]:
            raise Interrupted(_message(_received["name"]))
        return
    if _cancelled.is_set():
        raise Interrupted(_cancel_reason["why"] or "interrupted")


def _message(name: str) -> str:
    return f"interrupted by {name}; cleaned up what this run created"


def block_in_this_thread() -> None:
    """For a worker thread (a ThreadPoolExecutor initializer, a thread's first call): Ctrl-C and
    SIGTERM are left to the main thread. The kernel hands a process signal to any thread that does
    not block it, and CPython runs handlers in the main thread only: one delivered to a worker
    leaves the main thread blocked in its call (an HTTP read the endpoint holds) until that
    returns, which can be a minute."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def _handler(signum, frame):
    name = signal.Signals(signum).name
    if getattr(_local, "shielded", False):
        print(f"bakery: {name} received; finishing clean-up first", file=sys.stderr, flush=True)
        return
    _received["name"] = name
    raise Interrupted(_message(name))


@contextlib.contextmanager
def quiet_spawn():
    """Threads started inside are born with Ctrl-C and SIGTERM blocked (block_in_this_thread,
    without the moment before a thread's first call): the mask is inherited, so the caller's own
    is blocked meanwhile and given back after (a signal that came meanwhile is delivered then)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def interruptible():
    """Install the handlers for the duration of one command (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in _SIGNALS}
    _received["name"] = None
    for s in old:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _received["name"] = None


@contextlib.contextmanager
def shielded():
    """Defer signals while cleaning up."""
    previous = getattr(_local, "shielded", False)
    _local.shielded = True
    try:
        yield
    finally:
        _local.shielded = previous
