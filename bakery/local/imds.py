"""The instance metadata service: http://169.254.169.254 for every running instance, as on EC2.

As on EC2 it lives outside the instance: the endpoint process listens on 169.254.169.254:80 on the
loopback of each VPC's namespace (the router's side of the fabric), every ENI gives its instance a
route there through its subnet's router (vpcnet.py), and the instance asking is the owner of the
private address the request comes from. Nothing of it is inside an instance (a service of the
image may bind port 80 on every address), and it answers before the machine's init runs, so
cloud-init's Ec2 datasource finds it at boot. Answers come from moto's live view of that instance:
IMDSv2 sessions (PUT /latest/api/token with a TTL, a token good for the instance that asked for it;
a request without a valid token is refused with 401 when the instance requires tokens, as EC2
does; with tokens optional IMDSv1 still answers), the hop limit on every answer (the IP TTL: the
answer reaches the instance without a routed hop, a container behind it does not get it with a
limit of 1), meta-data (instance-id, ami-id, instance-type, local-ipv4, mac, the
network/interfaces/macs tree, placement, public-keys, security-groups, iam), user-data, the
instance identity document, and an instance profile's credentials.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bakery.local import moto_state as M
from bakery.local.linklocal import METADATA_IP, PerVpc, tcp_listener
from bakery.local.netns import run_in

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TOKEN_TTL = 21600


class MetadataService(PerVpc):
    """The metadata service in every VPC's namespace (linklocal.py keeps one listener per VPC)."""

    def __init__(self) -> None:
        super().__init__("metadata service", METADATA_IP, _open)


def _open(vpc_id: str, netns: str) -> _Server:
    server = _Server(vpc_id, run_in(netns, lambda: tcp_listener(METADATA_IP, 80)))
    server.start()
    return server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, vpc_id: str, sock: socket.socket):
        super().__init__((METADATA_IP, 80), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.vpc_id = vpc_id
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (the instance it was given to, expiry)
        self._thread = threading.Thread(target=self.serve_forever, name=f"imds-{vpc_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # cloud-init polls; one line per request would drown the endpoint's log

    def setup(self) -> None:
        super().setup()
        # the instance is the owner of the address asking (the fabric's source/dest check stops
        # an ENI from sending as another's address)
        instance = M.instance_at(self.server.vpc_id, self.client_address[0])
        self.instance_id = instance.id if instance is not None else None
        hops = instance.metadata_options.http_put_response_hop_limit if instance is not None else 1
        # EC2's hop limit is the answer's IP TTL: a container one hop further never sees it
        self.connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, max(1, int(hops)))

    def do_PUT(self) -> None:
        instance = self._instance()
        if instance is None:
            return
        if self.path.rstrip("/") != "/latest/api/token":
            return self._answer(404, "Not Found")
        if self.headers.get("X-Forwarded-For"):
            return self._answer(403, "Forbidden")
        try:
            ttl = int(self.headers.get(TOKEN_TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            return self._answer(400, "Bad Request")
        token = secrets.token_urlsafe(40)
        now = time.monotonic()
        tokens = self.server.tokens
        for old in [t for t, (_, expiry) in list(tokens.items()) if expiry <= now]:
            tokens.pop(old, None)
        tokens[token] = (instance.id, now + ttl)
        self._answer(200, token, headers={TOKEN_TTL_HEADER: str(ttl)})

    def do_GET(self) -> None:
        instance = self._instance()
        if instance is None:
            return
        token = self.headers.get(TOKEN_HEADER)
        if token is not None:
            owner, expiry = self.server.tokens.get(token, (None, 0.0))
            if owner != instance.id or expiry <= time.monotonic():
                return self._answer(401, "Unauthorized")
        elif instance.metadata_options.http_tokens == "required":
            return self._answer(401, "Unauthorized")
        version, _, rest = self.path.lstrip("/").partition("/")
        if not version:
            return self._answer(200, "latest\n2021-03-23\n2018-09-24")
        if version != "latest" and not (len(version) == 10 and version[4] == "-" and version[7] == "-"):
            return self._answer(404, "Not Found")
        tree = {"meta-data": lambda: meta_data(instance), "user-data": lambda: M.user_data(instance),
                "dynamic": lambda: {"instance-identity": {"document": json.dumps(identity(instance), indent=2)}}}
        kind, _, path = rest.partition("/")
        if not kind:
            return self._answer(200, "\n".join(["dynamic", "meta-data", "user-data"]))
        if kind not in tree:
            return self._answer(404, "Not Found")
        value = tree[kind]()
        for part in [p for p in path.split("/") if p]:
            value = value.get(part) if isinstance(value, dict) else None
            if value is None:
                return self._answer(404, "Not Found")
        if value is None:
            return self._answer(404, "Not Found")
        if isinstance(value, dict):
            labels = getattr(value, "labels", {})
            return self._answer(200, "\n".join(labels.get(k) or (f"{k}/" if isinstance(v, dict) else k)
                                               for k, v in value.items()))
        self._answer(200, value)

    def _instance(self):
        instance = M.find_instance(self.instance_id) if self.instance_id else None
        if instance is None or instance.metadata_options.http_endpoint == "disabled":
            self.close_connection = True  # as if nothing listened
            return None
        return instance

    def _answer(self, status: int, body, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else str(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


class _Listed(dict):
    """A directory whose listing names entries otherwise than their paths (public-keys: `0=name`, read as `0/`)."""

    def __init__(self, entries: dict, labels: dict[str, str]):
        super().__init__(entries)
        self.labels = labels


def meta_data(instance) -> dict:
    """The meta-data tree (a dict is a directory), from the instance's live record."""
    wirings = M.wirings(instance)
    primary = wirings[0] if wirings else None
    region = instance.region_name
    zone = instance.availability_zone or f"{region}a"
    hostname = instance.private_dns_name
    groups = [g.name for g in instance.security_groups] if instance.security_groups else []
    tree: dict = {
        "ami-id": instance.image_id, "ami-launch-index": "0", "ami-manifest-path": "(unknown)",
        "hostname": hostname, "local-hostname": hostname, "instance-id": instance.id,
        "instance-type": instance.instance_type, "instance-life-cycle": "on-demand",
        "local-ipv4": instance.private_ip or "", "mac": primary.mac if primary else "",
        "placement": {"availability-zone": zone, "region": region},
        "security-groups": "\n".join(groups),
        "services": {"domain": "amazonaws.com", "partition": "aws"},
        "network": {"interfaces": {"macs": {w.mac: interface(instance, w) for w in wirings}}},
    }
    if instance.public_ip:
        tree["public-ipv4"] = instance.public_ip
    keys = M.public_keys(instance)
    if keys:
        tree["public-keys"] = _Listed({"0": {"openssh-key": keys[0]}}, {"0": f"0={instance.key_name}"})
    role = M.instance_profile_role(instance)
    if role is not None:
        tree["iam"] = {"info": json.dumps({"Code": "Success", "LastUpdated": _now(),
                                           "InstanceProfileArn": role["profile_arn"],
                                           "InstanceProfileId": role["profile_id"]}, indent=2),
                       "security-credentials": {role["name"]: json.dumps(credentials(), indent=2)}}
    return tree


def interface(instance, w: M.Wiring) -> dict:
    return {"device-number": str(w.device_index), "interface-id": w.eni_id, "mac": w.mac,
            "local-ipv4s": "\n".join(w.ips), "subnet-id": w.subnet_id, "vpc-id": w.vpc_id,
            "subnet-ipv4-cidr-block": w.cidr, "owner-id": instance.ec2_backend.account_id,
            "security-group-ids": "\n".join(M.group_ids(w.eni_id, instance))}


def identity(instance) -> dict:
    return {"accountId": instance.ec2_backend.account_id, "architecture": "x86_64",
            "availabilityZone": instance.availability_zone or f"{instance.region_name}a", "imageId": instance.image_id,
            "instanceId": instance.id, "instanceType": instance.instance_type, "pendingTime": _now(),
            "privateIp": instance.private_ip, "region": instance.region_name, "version": "2017-09-30"}


def credentials() -> dict:
    """Short-lived credentials of the instance's role (the local endpoint accepts any)."""
    expiry = datetime.now(timezone.utc) + timedelta(hours=6)
    return {"Code": "Success", "LastUpdated": _now(), "Type": "AWS-HMAC",
            "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(), "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(120), "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
