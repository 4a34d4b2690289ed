"""Adaptive polling with one explicit deadline per wait.

Poll fast at first (most resources on a local or mocked endpoint are ready at once,
and on AWS an instance often runs within seconds), then back off so a long wait on
AWS costs few API calls. Packer's fixed 5-15 s poll adds up to a full interval of
idle time after the resource is ready; this caps it at `max_interval`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from bakery.errors import WaitTimeout

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.1
    factor: float = 1.5
    max_interval: float = 2.0

    def intervals(self):
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_interval)


DEFAULT = Backoff()


def wait_for(check: Callable[[], T | None], *, what: str, timeout: float, backoff: Backoff = DEFAULT,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
             hint: Callable[[], str] | None = None) -> T:
    """Call `check` until it returns something other than None; raise WaitTimeout at the deadline.

    `check` may raise to abort the wait (e.g. the instance terminated instead of running).
    """
    deadline = clock() + timeout
    for delay in backoff.intervals():
        result = check()
        if result is not None:
            return result
        remaining = deadline - clock()
        if remaining <= 0:
            extra = f": {hint()}" if hint else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{extra}")
        sleep(min(delay, remaining))
    raise AssertionError("unreachable")
