"""The VPC's DNS resolver (EC2's "AmazonProvidedDNS", also at 169.254.169.253) for local instances.

Instances' resolv.conf names it, as DHCP does on EC2. It answers what the VPC's resolver answers
itself and forwards the rest to the host's resolver, from the endpoint's own process (on EC2, too,
the resolver sits outside the VPC and reaches the internet whatever the instance's routes are):
- ``*.amazonaws.com``: the AWS APIs' link-local address (privatelink.py), as an interface VPC
  endpoint with private DNS answers with an address inside the VPC; so the AWS CLI and SDKs on an
  instance reach the local endpoint with their default endpoints, e.g. to fetch a tier's secrets;
- EC2's private host names (``ip-10-0-1-5.ec2.internal``, ``...<region>.compute.internal``): the
  address, when an instance of this VPC holds it; ``instance-data.ec2.internal``: the metadata service.
dnslib (a maintained, pure-Python DNS library) does the wire format, the UDP and TCP servers and the
forwarding.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.proxy import ProxyResolver
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from bakery.local import moto_state as M
from bakery.local.linklocal import API_IP, METADATA_IP, RESOLVER_IP, PerVpc
from bakery.local.netns import run_in

TTL = 60
#: what forwarded queries may take, as a stub resolver waits (glibc's default is 5 s per try)
UPSTREAM_TIMEOUT = 5.0
_PRIVATE_NAME = re.compile(r"ip-(\d{1,3})-(\d{1,3})-(\d{1,3})-(\d{1,3})\.(?:ec2|[a-z0-9-]+\.compute)\.internal")
log = logging.getLogger("bakery.local")
#: only malformed requests are worth a line in the endpoint's log
_LOG = DNSLogger(log="-request,-reply,-truncated", prefix=False, logf=lambda msg: log.warning("VPC DNS: %s", msg))


class VpcResolver(PerVpc):
    """The resolver in every VPC's namespace, on UDP and TCP port 53."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream or host_nameserver()
        super().__init__("DNS resolver", RESOLVER_IP, self._start)

    def _start(self, vpc_id: str, netns: str) -> _Servers:
        resolver = _Resolver(vpc_id, self.upstream)
        servers = run_in(netns, lambda: [DNSServer(resolver, address=RESOLVER_IP, port=53, tcp=tcp, logger=_LOG)
                                         for tcp in (False, True)])
        for server in servers:
            server.start_thread()
        return _Servers(servers)


class _Servers:
    def __init__(self, servers: list[DNSServer]):
        self.servers = servers

    def alive(self) -> bool:
        return all(s.isAlive() for s in self.servers)

    def close(self) -> None:
        for s in self.servers:
            s.stop()
            s.server.server_close()


class _Resolver(BaseResolver):
    def __init__(self, vpc_id: str, upstream: str):
        self.vpc_id = vpc_id
        self.forward = ProxyResolver(upstream, 53, timeout=UPSTREAM_TIMEOUT)

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        qname = request.q.qname
        name = str(qname).rstrip(".").lower()
        address = self._own(name)
        if address is None:
            return self.forward.resolve(request, handler)
        reply = request.reply()
        if address == "":
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=TTL))
        return reply  # other types of our own names: no data, as for a name with only an A record

    def _own(self, name: str) -> str | None:
        """The address for a name this resolver answers itself ("" if it has none), None to forward."""
        if name == "amazonaws.com" or name.endswith(".amazonaws.com"):
            return API_IP
        if name in ("instance-data", "instance-data.ec2.internal"):
            return METADATA_IP
        m = _PRIVATE_NAME.fullmatch(name)
        if m is not None:
            try:
                ip = str(ipaddress.IPv4Address(".".join(m.groups())))
            except ValueError:
                return ""
            return ip if M.instance_at(self.vpc_id, ip) is not None else ""
        if name.endswith(".internal"):
            return ""
        return None


def host_nameserver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    """The host's first IPv4 nameserver (where the endpoint's own lookups go)."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                return str(ipaddress.IPv4Address(parts[1]))
            except ValueError:
                continue
    return "127.0.0.53"
