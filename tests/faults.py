"""Fault injection on the real HTTP path: a botocore `before-send` hook answers in the
endpoint's place, so botocore's retry logic and bakery's error handling see exactly
what a failing AWS would send."""

from __future__ import annotations

from botocore.awsrequest import AWSResponse


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
    """Fail `operation` with `code` for `times` calls (None: always), after letting `after` calls through."""

    def __init__(self, client, operation: str, code: str, status: int = 400, times: int | None = 1,
                 message: str = "injected fault", after: int = 0):
        self.operation, self.code, self.status, self.times, self.message = operation, code, status, times, message
        self.after = after
        self.calls = 0
        self.injected = 0
        client.meta.events.register(f"before-send.ec2.{operation}", self._handler)

    def _handler(self, request, **_):
        self.calls += 1
        if self.calls <= self.after:
            return None
        if self.times is None or self.injected < self.times:
            self.injected += 1
            return ec2_error(self.code, self.message, self.status)
        return None
