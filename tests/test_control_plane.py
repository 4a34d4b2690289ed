"""The local endpoint's control plane in front of moto (bakery/local/control.py): moto, which is not
thread-safe, answers one request at a time; what is slow around a request (reading a running
machine's console from its systemd) happens outside, so it never holds up the other clients."""

from __future__ import annotations

import io
import threading
import time
import urllib.parse
from types import SimpleNamespace

from bakery.local import moto_extensions
from bakery.local.control import ControlPlane, OneRequestAtATime

INSTANCE = "i-0123456789abcdef0"


def request(action: str, **params: str) -> dict:
    body = urllib.parse.urlencode({"Action": action, "Version": "2016-11-15", **params}).encode()
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "", "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/x-www-form-urlencoded", "wsgi.input": io.BytesIO(body)}


def answered(app, environ) -> bytes:
    return b"".join(app(environ, lambda status, headers, exc_info=None: None))


def within(seconds: float, fn, *args):
    """fn(*args), which must return within `seconds` (held up, it fails the test instead of hanging it)."""
    out: list = []
    done = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    done.start()
    done.join(seconds)
    assert out, f"held up for more than {seconds} s"
    return out[0]


class Moto:
    """A stand-in for moto's app that counts how many requests are inside it at once; it answers a
    GetConsoleOutput with what the control plane read for it."""

    def __init__(self) -> None:
        self.inside = self.most = 0
        self.count = threading.Lock()

    def __call__(self, environ, start_response):
        with self.count:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.02)
        body = environ["wsgi.input"].read()
        read = moto_extensions.console_read.get()
        with self.count:
            self.inside -= 1
        start_response("200 OK", [("Content-Type", "text/xml")])
        return [read[1].encode() if b"GetConsoleOutput" in body and read else b"<ok/>"]


def test_moto_answers_one_request_at_a_time_however_many_clients_call_at_once():
    moto = Moto()
    app = OneRequestAtATime(moto)
    threads = [threading.Thread(target=answered, args=(app, request("DescribeInstances"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert moto.most == 1


def test_a_slow_console_read_holds_up_no_other_request_and_reaches_moto_with_its_request():
    release, reading = threading.Event(), threading.Event()

    def console_output(instance_id: str) -> str:  # a running machine's systemd, slow to answer
        reading.set()
        assert release.wait(10)
        return f"console of {instance_id}"

    machines = SimpleNamespace(console_output=console_output, machine_state=lambda iid: "running")
    plane = ControlPlane(Moto(), machines, SimpleNamespace(nudge=lambda: None), SimpleNamespace(save=lambda: None))
    console: list[bytes] = []
    slow = threading.Thread(target=lambda: console.append(answered(plane, request("GetConsoleOutput",
                                                                                    InstanceId=INSTANCE))))
    slow.start()
    try:
        assert reading.wait(10)
        # while the console is still being read: a read, and a change too
        assert within(5, answered, plane, request("DescribeInstances")) == b"<ok/>"
        assert within(5, answered, plane, request("CreateTags", **{"ResourceId.1": INSTANCE})) == b"<ok/>"
    finally:
        release.set()
        slow.join(10)
    assert console == [f"console of {INSTANCE}".encode()]
    assert moto_extensions.console_read.get() is None  # nothing of it stays for the thread's next request
