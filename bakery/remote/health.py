"""Health checks: is the instance ready for service (HTTP status or TCP connect)?

On AWS the check dials the instance's address; on the local cloud, which has no routed
addresses, it dials inside the instance's network namespace. Either way it polls with
back-off until the deadline, which is measured from the launch. Probes are capped at one
every 0.5 s: they cost the instance almost nothing, and the cap bounds how late we notice
readiness (the ready-for-service time `invoke launch` reports).
"""

from __future__ import annotations

import http.client
import socket
import time

from bakery.cloud.waits import Backoff, wait_for
from bakery.config.environment import HealthCheck
from bakery.errors import WaitTimeout


class _SocketHTTPConnection(http.client.HTTPConnection):
    def __init__(self, sock: socket.socket, host: str, timeout: float):
        super().__init__(host, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # already connected
        pass


def probe(connect, check: HealthCheck, host: str) -> str | None:
    """None when healthy, else what went wrong (for the timeout message)."""
    try:
        sock = connect(check.port, 3.0)
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


def check_until(ec2, instance_id: str, address: str | None, check: HealthCheck, deadline: float) -> None:
    if ec2.local is not None:
        def connect(port, timeout):
            return ec2.local.connect(instance_id, port, timeout)
    else:
        if not address:
            raise WaitTimeout(f"health of {instance_id}: it has no {check.address.replace('_', ' ')} to check")

        def connect(port, timeout):
            return socket.create_connection((address, port), timeout=timeout)
    last = ["not checked yet"]

    def attempt():
        problem = probe(connect, check, address or instance_id)
        if problem is None:
            return True
        last[0] = problem
        return None
    wait_for(attempt, what=f"{instance_id} to pass its {check.type} health check on port {check.port}",
             timeout=max(0.0, deadline - time.monotonic()), backoff=Backoff(initial=0.05, factor=1.5, max_interval=0.5),
             hint=lambda: last[0])
