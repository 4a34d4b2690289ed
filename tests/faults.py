"""Fault injection on the real HTTP path: a botocore `before-send` hook answers in the
endpoint's place, so botocore's retry logic and bakery's error handling see exactly
what a failing AWS would send."""

from __future__ import annotations

import pytest
from botocore.awsrequest import AWSResponse


# The faults a real endpoint answers with, as Fault(...) keyword arguments.
TRANSIENT = {  # retried by botocore: the caller never sees them
    "throttling": dict(code="Throttling", status=400, times=2, message="Rate exceeded"),
    "server-error": dict(code="InternalError", status=500, times=2, message="An internal error has occurred"),
}
EXPIRED = dict(code="ExpiredToken", status=400, times=1, message="The security token included in the request is expired")
# (AWS sends this one with HTTP 500, which botocore retries 8 times with backoff before bakery sees
# it; sent with 400 here so the matrix does not sleep through those retries.)
CAPACITY = dict(code="InsufficientInstanceCapacity", status=400, message="We currently do not have sufficient capacity")


@pytest.fixture
def scaled_backoff():
    """botocore's retry backoff sleeps a hundredth of its time (0-1 s, then 0-2 s, ... per retry):
    whether and how often to retry is still botocore's decision; only the waiting is shortened.
    (botocore.endpoint uses `time` for that sleep alone.) Use it in modules that inject many
    transient faults in process."""
    import time
    import types

    import botocore.endpoint

    fast = types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")})
    fast.sleep = lambda seconds: time.sleep(seconds / 100)
    real = botocore.endpoint.time
    botocore.endpoint.time = fast
    yield
    botocore.endpoint.time = real


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


def ec2_error(code: str, message: str, status: int) -> AWSResponse:
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>{code}</Code>"
            f"<Message>{message}</Message></Error></Errors><RequestID>fault</RequestID></Response>").encode()
    return AWSResponse("http://fault", status, {"Content-Type": "text/xml"}, _Raw(body))


class Fault:
    """Fail `operation` with `code` for `times` calls (None: always), after letting `after` calls through.
    With `match`, only the calls whose parameters it accepts count (e.g. DescribeImages of one image)."""

    def __init__(self, client, operation: str, code: str, status: int = 400, times: int | None = 1,
                 message: str = "injected fault", after: int = 0, match=None):
        self.operation, self.code, self.status, self.times, self.message = operation, code, status, times, message
        self.after = after
        self.match = match
        self.calls = 0
        self.injected = 0
        client.meta.events.register(f"before-send.ec2.{operation}", self._handler)

    def _handler(self, request, **_):
        if self.match is not None:
            body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
            if not self.match(operation_of(request.headers, body)[1]):
                return None
        self.calls += 1
        if self.calls <= self.after:
            return None
        if self.times is None or self.injected < self.times:
            self.injected += 1
            return ec2_error(self.code, self.message, self.status)
        return None


class Stale:
    """The endpoint keeps showing an old state: in every answer to `operation` (DescribeInstances
    or DescribeImages), the items `match` selects that are in state `actual` are shown in
    `shown` instead, so a waiter for `actual` never sees it."""

    def __init__(self, client, operation: str, actual: str, shown: str, match=lambda item: True):
        self.operation, self.actual, self.shown, self.match = operation, actual, shown, match
        self.rewritten = 0
        client.meta.events.register(f"after-call.ec2.{operation}", self._rewrite)

    def _rewrite(self, parsed, **_):
        if self.operation == "DescribeInstances":
            items = [i for r in parsed.get("Reservations", []) for i in r.get("Instances", [])]
        else:
            items = parsed.get("Images", [])
        for item in items:
            state = item.get("State")
            name = state.get("Name") if isinstance(state, dict) else state
            if name != self.actual or not self.match(item):
                continue
            self.rewritten += 1
            if isinstance(state, dict):
                item["State"] = {**state, "Name": self.shown}
            else:
                item["State"] = self.shown


def role_is(role: str):
    """Match an instance or image by its bakery:role tag."""
    return lambda item: {"Key": "bakery:role", "Value": role} in item.get("Tags", [])


class ShortWaits:
    """Mixin for the EC2 facade: every wait gives up after `seconds` instead of minutes or hours,
    so a waiter that times out costs a test seconds. (The bake's waits have no setting.)"""

    seconds = 2.0

    def wait_instance_state(self, instance_id, want, timeout, *args, **kwargs):
        return super().wait_instance_state(instance_id, want, min(timeout, self.seconds), *args, **kwargs)

    def wait_image_available(self, image_id, timeout, *args, **kwargs):
        return super().wait_image_available(image_id, min(timeout, self.seconds), *args, **kwargs)

    def delete_security_group(self, group_id, timeout=120, *args, **kwargs):
        return super().delete_security_group(group_id, min(timeout, self.seconds), *args, **kwargs)


def short_waits(settings, seconds: float = 2.0):
    """The EC2 facade of `settings` with ShortWaits."""
    from bakery.cloud.ec2 import EC2

    facade = type("ShortWaitsEC2", (ShortWaits, EC2), {"seconds": seconds})
    return facade(settings)


def operation_of(headers, body: bytes) -> tuple[str, dict[str, str]]:
    """The API operation of a request and its parameters (query protocol: EC2, ELB; JSON: SSM)."""
    import json
    import urllib.parse

    target = headers.get("X-Amz-Target")
    if target:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return target.rpartition(".")[2], {k: str(v) for k, v in params.items()}
    params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
    return params.get("Action", ""), params


class Gate:
    """An HTTP proxy in front of the endpoint that holds one call: the `nth` call of `operation`
    whose parameters satisfy `match`. For a process we cannot hook (the CLI), this is how a test
    knows it is inside a given call, and keeps it there until a signal arrives.

    mode "before": the held call has not reached the endpoint, and never will.
    mode "after":  the endpoint has done it, and its answer is never delivered (lost in flight).
    """

    def __init__(self, upstream: str, operation: str, *, nth: int = 1, match=lambda params: True,
                 mode: str = "before"):
        import http.server
        import threading
        import urllib.parse

        self.operation, self.nth, self.match, self.mode = operation, nth, match, mode
        self.seen = 0
        self.calls: list[str] = []
        self.held = threading.Event()     # the call is being held now
        self._done = threading.Event()    # the test is finished with it: drop it (or let it through)
        self._let_through = False
        self._lock = threading.Lock()
        up = urllib.parse.urlsplit(upstream)
        self._upstream = (up.hostname, up.port)
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                gate._relay(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _relay(self, handler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        operation, params = operation_of(handler.headers, body)
        hold = False
        with self._lock:
            self.calls.append(operation)
            if operation == self.operation and self.match(params):
                self.seen += 1
                hold = self.seen == self.nth
        if hold and self.mode == "before":
            self.held.set()
            self._done.wait(120)
            if not self._let_through:
                handler.close_connection = True  # never forwarded: the caller has given up
                return
            hold = False
        status, headers, payload = self._forward(handler, body)
        if hold:
            self.held.set()
            self._done.wait(120)
            handler.close_connection = True  # done by the endpoint; the answer is lost
            return
        try:
            handler.send_response(status)
            for key, value in headers:
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:
            handler.close_connection = True

    def _forward(self, handler, body: bytes):
        import http.client

        conn = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            conn.request(handler.command, handler.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def release(self) -> None:
        """Let a call held "before" through after all: it reaches the endpoint and is answered."""
        self._let_through = True
        self._done.set()

    def close(self) -> None:
        self._done.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
