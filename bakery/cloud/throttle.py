"""One rate limiter per endpoint and region, shared by everything this process runs there.

EC2 throttles per account and region (a token bucket per action class). Several bakes at once
(`rebake --jobs`) that each retried on their own would each back off and come back together, and
one of them would run out of retries and fail while the others carry on. Here a throttled call
is not retried by botocore (bakery/cloud/session.py hands the error straight back): the facade
(bakery/cloud/ec2.py `call`) tells the region's limiter, which makes every caller in the region wait
before its next call, growing the pause while throttling goes on and shrinking it as calls pass.
Throttling slows everyone; nobody gives up before GIVE_UP_AFTER seconds of it on one call.
"""

from __future__ import annotations

import random
import threading
import time

# botocore's own throttling codes (its standard retry mode's list), and S3's
THROTTLE_CODES = {"Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
                  "TooManyRequestsException", "ProvisionedThroughputExceededException",
                  "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
                  "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
                  "EC2ThrottledException"}
INITIAL_PAUSE = 0.2   # seconds after the first throttled call
MAX_PAUSE = 20.0      # botocore's own cap on a retry's backoff
GIVE_UP_AFTER = 900.0  # seconds one call may spend throttled before it fails


class RegionThrottle:
    def __init__(self, clock=time.monotonic, sleep=time.sleep):
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep
        self._pause = 0.0        # the current pause after a throttled call
        self._resume_at = 0.0    # no call before this
        self.throttled_calls = 0

    def wait_turn(self) -> None:
        """Before a call: wait while the region is paused (a no-op when nothing was throttled)."""
        with self._lock:
            until = self._resume_at
        delay = until - self._clock()
        if delay > 0:
            self._sleep(delay)

    def throttled(self) -> None:
        """A call was throttled: pause everyone, longer each time (with jitter, so the callers do
        not all come back in the same instant)."""
        with self._lock:
            self.throttled_calls += 1
            self._pause = min(MAX_PAUSE, max(INITIAL_PAUSE, self._pause * 2))
            self._resume_at = max(self._resume_at, self._clock() + self._pause * random.uniform(0.5, 1.0))

    def passed(self) -> None:
        """A call went through: the pause shrinks back."""
        if self._pause:
            with self._lock:
                self._pause = self._pause / 2 if self._pause > INITIAL_PAUSE else 0.0


_REGISTRY: dict[tuple[str | None, str], RegionThrottle] = {}
_REGISTRY_LOCK = threading.Lock()


def for_region(endpoint_url: str | None, region: str) -> RegionThrottle:
    """The process's limiter for this endpoint and region."""
    with _REGISTRY_LOCK:
        return _REGISTRY.setdefault((endpoint_url, region), RegionThrottle())
