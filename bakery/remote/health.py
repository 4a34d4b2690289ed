"""Health checks: is the instance ready for service (HTTP status or TCP connect)?

A check is handed an Opener (bakery.remote.dial) for the instance's port and polls it with
back-off until the deadline, which is measured from the launch. Probes are capped at one every
0.25 s: they cost the instance almost nothing, and the cap bounds how late we notice readiness
(the ready-for-service time `invoke launch` reports).
"""

from __future__ import annotations

import http.client
import socket
import time

from bakery.waits import Backoff, wait_for
from bakery.config.environment import HealthCheck
from bakery.remote.dial import Opener


class _SocketHTTPConnection(http.client.HTTPConnection):
    def __init__(self, sock: socket.socket, host: str, timeout: float):
        super().__init__(host, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # already connected
        pass


def probe(connect, check: HealthCheck, host: str) -> str | None:
    """None when healthy, else what went wrong (for the timeout message)."""
    try:
        sock = connect(3.0)
    except OSError as exc:
        return f"connect: {exc.strerror or exc}"
    try:
        if check.type == "tcp":
            return None
        conn = _SocketHTTPConnection(sock, host, timeout=5.0)
        conn.request("GET", check.path, headers={"User-Agent": "bakery-health"})
        status = conn.getresponse().status
        return None if status == check.expect_status else f"HTTP {status}, expected {check.expect_status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"http: {exc}"
    finally:
        sock.close()


def check_until(opener: Opener, instance_id: str, check: HealthCheck, deadline: float) -> None:
    """Poll until the check passes; a WaitTimeout naming the instance and the last problem otherwise."""
    last = ["not checked yet"]

    def attempt():
        problem = probe(opener.open, check, opener.host)
        if problem is None:
            return True
        last[0] = problem
        return None
    wait_for(attempt, what=f"{instance_id} to pass its {check.type} health check on port {check.port}",
             timeout=max(0.0, deadline - time.monotonic()), backoff=Backoff(initial=0.05, factor=1.5, max_interval=0.25),
             hint=lambda: f"{last[0]}; checked at {opener.where}" if opener.where else last[0])
