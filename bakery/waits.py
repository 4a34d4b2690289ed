"""Adaptive polling with one explicit deadline per wait.

Poll fast at first (most resources on a local or mocked endpoint are ready at once,
and on AWS an instance often runs within seconds), then back off to `max_interval`,
which bounds how late a wait notices: polls are paced from the start of the previous
one, so neither API latency nor a slow connect attempt stretches the cadence, and the
first poll after the resource is ready starts at most `max_interval` later. Packer's
fixed 15 s poll adds up to 15 s per wait.

The default cap, 0.9 s, keeps a wait's lag under 1 s on AWS (0.9 s plus half a round
trip, ~0.05 s) at about one DescribeInstances/DescribeImages call per second: 6 % of EC2's
refill rate for a non-mutating action (20 tokens/s per account and region, bucket of
100), so a dozen concurrent bakes stay clear of RequestLimitExceeded. The opening burst
(0.1, 0.2, 0.4, 0.8 s) costs four extra calls and catches instant endpoints early.

BAKERY_TIME_SCALE (default 1) runs every wait's clock faster: 0.1 makes each interval
and deadline ten times shorter in real time. It is for benches and tests against an
endpoint whose state delays are scaled down the same way; never set it against AWS.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Callable, TypeVar

from bakery.errors import WaitTimeout
from bakery.progress import waiting
from bakery.signals import check_cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.1
    factor: float = 2.0
    max_interval: float = 0.9

    def intervals(self):
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_interval)


DEFAULT = Backoff()


def time_scale() -> float:
    raw = os.environ.get("BAKERY_TIME_SCALE", "")
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale < float("inf"):
        # A clean-up wait must not fail over a test knob: run at real speed instead.
        warnings.warn(f"BAKERY_TIME_SCALE={raw!r} is not a positive number; waiting in real time", RuntimeWarning,
                      stacklevel=3)
        return 1.0
    return scale


def wait_for(check: Callable[[], T | None], *, what: str, timeout: float, backoff: Backoff = DEFAULT,
             clock: Callable[[], float] | None = None, sleep: Callable[[float], None] | None = None,
             hint: Callable[[], str] | None = None) -> T:
    """Call `check` until it returns something other than None; raise WaitTimeout at the deadline.

    `check` may raise to abort the wait (e.g. the instance terminated instead of running).
    `clock` and `sleep` default to real time, scaled by BAKERY_TIME_SCALE.
    """
    if clock is None or sleep is None:
        scale = time_scale()
        clock = clock or (lambda: time.monotonic() / scale)
        sleep = sleep or (lambda seconds: time.sleep(seconds * scale))
    with waiting(what):  # the running stage shows what it waits for, and counts the time as the cloud's
        return _poll(check, what, timeout, backoff, clock, sleep, hint)


def _poll(check: Callable[[], T | None], what: str, timeout: float, backoff: Backoff, clock: Callable[[], float],
          sleep: Callable[[float], None], hint: Callable[[], str] | None) -> T:
    deadline = clock() + timeout
    for delay in backoff.intervals():
        check_cancelled()  # a parallel rebake's worker, cancelled: unwind and clean up
        polled = clock()
        result = check()
        if result is not None:
            return result
        now = clock()
        remaining = deadline - now
        if remaining <= 0:
            extra = f": {hint()}" if hint else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        pause = min(delay - (now - polled), remaining)
        if pause > 0:
            sleep(pause)
    raise AssertionError("unreachable")
