"""Open the cloud the settings name: the one place that knows which cloud bakery is on.

`open_cloud(settings)` returns the EC2 facade for the endpoint and the Dial that reaches its
instances' ports (bakery.remote.dial). For `cloud: aws` that is the settings' endpoint (AWS or any
compatible one) and TCP to instances' addresses; for `cloud: local` it starts the local cloud on
demand (an endpoint on 127.0.0.1 with throwaway credentials, so real AWS credentials are never
sent to it; its own process turns EC2 calls into machines) and dials inside instances' network
namespaces. Workflows call this once, after
their input has been checked offline, and never ask which cloud they are on.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from bakery.cloud.ec2 import EC2
from bakery.config.settings import Settings
from bakery.errors import RemoteError
from bakery.remote.dial import Dial, Machine, Opener, Route, TcpDial, Vantage, address_of


@dataclass
class Cloud:
    ec2: EC2
    dial: Dial
    #: whether instances' consoles show their boot as it happens, so that cloud-init having
    #: finished is the readiness of a tier with no health check. The local cloud's do. EC2's show
    #: it too but may lag by minutes (and moto's is a canned log), so there a tier asks for it with
    #: `health_check: {type: cloud-init}`, and one without a check is reported "not checked".
    boot_console: bool = False


LOCAL_EVIDENCE_BUCKET = "bakery-evidence"


def logs_in_at_vantages(settings: Settings) -> bool:
    """Whether the cloud the settings name makes a check from another instance by logging in to
    it (so needs a key): known before the cloud is opened, so that a missing key is refused first."""
    return (SandboxDial if settings.cloud == "local" else TcpDial).logs_in_at_vantages


def open_cloud(settings: Settings) -> Cloud:
    if settings.cloud != "local":
        return Cloud(EC2(settings), TcpDial(settings.ssh_host, settings.ssh_port))
    from bakery.cloud.session import Session
    from bakery.local.cloud import LocalCloud

    local = LocalCloud(settings.local_data)
    url = local.up(log=lambda line: print(f"local cloud: {line}", file=sys.stderr, flush=True))
    session = Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=settings.region)
    # the local cloud keeps images' evidence in a bucket of its own, as an account's would be
    ec2 = EC2(dataclasses.replace(settings, endpoint_url=url,
                                  evidence_bucket=settings.evidence_bucket or LOCAL_EVIDENCE_BUCKET), session)
    ec2.ensure_bucket(ec2.settings.evidence_bucket)
    return Cloud(ec2, SandboxDial(local), boot_console=True)


class SandboxDial:
    """The local cloud's instances have no address routed from this machine. bakery's own
    connections (its SSH, smoke tests) open their socket inside the instance's network namespace;
    a connection from a vantage (a health check) opens it where that vantage is (another
    instance's namespace, the local cloud's internet, a probe host on the target's subnet) and
    dials the instance's address, through the VPC's gateways, ACLs and security groups."""

    logs_in_at_vantages = False

    def __init__(self, local):
        self.local = local

    def __call__(self, machine: Machine, port: int, route: Route = Route(), *, ssh: bool = False) -> Opener:
        if route.vantage is None:
            return Opener("", machine.private_ip or machine.instance_id,
                          lambda timeout: self.local.connect(machine.instance_id, port, timeout))
        address = address_of(machine, route)
        if isinstance(route.vantage, Vantage):
            vantage = route.vantage.machine.instance_id
            who, start = vantage, lambda: self.local.netns(vantage)
        elif route.address == "public_ip":
            who, start = "the internet", self.local.internet_netns
        elif machine.subnet_id:
            subnet = machine.subnet_id
            who, start = f"a host on {subnet}", lambda: self.local.fabric.probe_host(subnet)
        else:
            raise RemoteError(f"{machine.instance_id}: no subnet known for {address} to check it from")
        return Opener(f"{address}:{port} from {who}", address,
                      lambda timeout: self.local.connect_from(start, address, port, timeout))

    def shell_prefix(self, machine: Machine) -> tuple[str, str]:
        return f"ip netns exec {self.local.netns(machine.instance_id)} ", "127.0.0.1"
