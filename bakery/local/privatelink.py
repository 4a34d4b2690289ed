"""The AWS APIs inside every VPC, as interface VPC endpoints with private DNS give them on EC2.

An instance's SDK or AWS CLI calls ``https://ssm.<region>.amazonaws.com`` (its default endpoint);
the VPC's resolver (resolver.py) answers every ``*.amazonaws.com`` name with 169.254.169.250, and
here the endpoint process accepts TLS on that address in the VPC's namespace with a certificate for
the AWS host names (issued by the local cloud's CA, which the base image trusts: tls.py), and relays
the decrypted requests to the local endpoint on the host's loopback. So a tier's ``secrets:`` are
fetched at boot with the instance profile's credentials, unchanged from EC2, and anything an
instance asks of EC2 goes through the same control plane as every other client.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from pathlib import Path

from bakery.local.linklocal import API_IP, PerVpc, tcp_listener
from bakery.local.netns import run_in
from bakery.local.tls import issue

log = logging.getLogger("bakery.local")

#: the regions an instance may name; a certificate for "*.<region>.amazonaws.com" covers every
#: service's regional host name (a wildcard matches one label only)
REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "eu-west-1", "eu-west-2",
           "eu-west-3", "eu-central-1", "eu-central-2", "eu-north-1", "eu-south-1", "eu-south-2", "ap-south-1",
           "ap-south-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2",
           "ap-southeast-3", "ap-southeast-4", "ap-east-1", "sa-east-1", "me-south-1", "me-central-1",
           "af-south-1", "il-central-1")
HANDSHAKE_TIMEOUT = 10.0
CHUNK = 65536


class ApiEndpoints(PerVpc):
    """TLS on 169.254.169.250:443 in every VPC's namespace, relayed to the endpoint at 127.0.0.1:port."""

    def __init__(self, port: int, ca_dir: Path, work_dir: Path) -> None:
        self.target = ("127.0.0.1", port)
        self.ca_dir = ca_dir
        self.work_dir = work_dir
        self._context: ssl.SSLContext | None = None
        super().__init__("AWS API endpoint", API_IP, self._start)

    def context(self) -> ssl.SSLContext:
        """The server's TLS context: a certificate issued once per endpoint process."""
        if self._context is None:
            cert, key = self.work_dir / "api.pem", self.work_dir / "api.key"
            issue(self.ca_dir, ["amazonaws.com", "*.amazonaws.com", *[f"*.{r}.amazonaws.com" for r in REGIONS]],
                  cert, key)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert, key)
            self._context = ctx
        return self._context

    def _start(self, vpc_id: str, netns: str) -> _Relay:
        relay = _Relay(vpc_id, run_in(netns, lambda: tcp_listener(API_IP, 443)), self.context(), self.target)
        relay.start()
        return relay


class _Relay:
    def __init__(self, vpc_id: str, sock: socket.socket, context: ssl.SSLContext, target: tuple[str, int]):
        self.sock = sock
        self.context = context
        self.target = target
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"api-{vpc_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), name="api-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """One client connection: TLS in, plain HTTP to the endpoint (made from the host's namespace,
        where this process's threads live), bytes both ways until either side ends."""
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            client = self.context.wrap_socket(conn, server_side=True)
            client.settimeout(None)
            upstream = socket.create_connection(self.target, timeout=HANDSHAKE_TIMEOUT)
            upstream.settimeout(None)
        except (OSError, ssl.SSLError) as exc:
            log.info("AWS API endpoint: a connection ended before its first request: %s", exc)
            conn.close()
            return
        pump = threading.Thread(target=_copy, args=(client, upstream), daemon=True)
        pump.start()
        _copy(upstream, client)
        pump.join(timeout=5)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """src to dst until src ends; then both close (HTTP clients never half-close a request)."""
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except (OSError, ValueError):  # the other direction closed both
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()
