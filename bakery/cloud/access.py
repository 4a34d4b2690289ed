"""Access to a builder: its temporary key pair, its security group (a port open to the caller
only), and the caller's own address. A mixin of the EC2 facade."""

from __future__ import annotations

import socket
import urllib.parse
import urllib.request

from bakery.cloud import tags as T
from bakery.waits import Backoff, wait_for
from bakery.errors import CloudError, ConfigError


class AccessAPI:
    """Key pair and security group operations of the EC2 facade."""

    def import_key_pair(self, name: str, public_key: str, tags: dict[str, str]) -> str:
        resp = self.call("import-key-pair", self.client.import_key_pair, KeyName=name,
                         PublicKeyMaterial=public_key.encode(), TagSpecifications=T.tag_specs(tags, "key-pair"))
        return resp.get("KeyPairId", name)

    def key_pair(self, name: str) -> dict | None:
        return self.lookup(f"describe-key-pairs {name}", self.client.describe_key_pairs, "KeyPairs",
                           ("InvalidKeyPair.NotFound",), KeyNames=[name])

    def delete_key_pair(self, name: str) -> None:
        self.call(f"delete-key-pair {name}", self.client.delete_key_pair, KeyName=name)

    def create_security_group(self, name: str, vpc_id: str, tags: dict[str, str],
                              description: str = "bakery builder: SSH from the caller only") -> str:
        """An empty group; the caller registers its deletion before opening anything in it."""
        resp = self.call("create-security-group", self.client.create_security_group, GroupName=name,
                         Description=description, VpcId=vpc_id, TagSpecifications=T.tag_specs(tags, "security-group"))
        return resp["GroupId"]

    def security_group(self, group_id: str) -> dict | None:
        return self.lookup(f"describe-security-groups {group_id}", self.client.describe_security_groups,
                           "SecurityGroups", ("InvalidGroup.NotFound",), GroupIds=[group_id])

    def allow_tcp(self, group_id: str, port: int, cidr: str, description: str = "bakery caller") -> None:
        """Let `cidr` in on one TCP port (SSH to a builder, a smoke test's health check); a rule
        already there is fine (a health check on the SSH port)."""
        try:
            self.call("authorize-security-group-ingress", self.client.authorize_security_group_ingress,
                      GroupId=group_id, IpPermissions=[{"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                                                        "IpRanges": [{"CidrIp": cidr, "Description": description}]}])
        except CloudError as exc:
            if self.code_of(exc) != "InvalidPermission.Duplicate":
                raise

    def delete_security_group(self, group_id: str, timeout: float = 120) -> None:
        """Retry on DependencyViolation: the builder's ENI lingers for a while after terminate."""
        def attempt():
            try:
                self.call(f"delete-security-group {group_id}", self.client.delete_security_group, GroupId=group_id)
                return True
            except CloudError as exc:
                code = self.code_of(exc)
                if code == "InvalidGroup.NotFound":
                    return True
                if code == "DependencyViolation":
                    return None
                raise
        wait_for(attempt, what=f"security group {group_id} to be deletable", timeout=timeout,
                 backoff=Backoff(initial=0.5, max_interval=5))

    def tagged(self, key: str, value: str | None) -> dict[str, list[dict]]:
        """Every instance (not terminated), security group, key pair and image of this account
        carrying the tag (with this value; any value when None)."""
        flt = [T.tag_filter(key, *([value] if value is not None else []))]
        # shutting-down too: what is leaving still holds its group until it has gone
        return {"instances": self.instances(*flt, states=("shutting-down", *T.LIVE_STATES)),
                "security_groups": self.describe_all("describe_security_groups", "SecurityGroups", Filters=flt),
                "key_pairs": self.describe_all("describe_key_pairs", "KeyPairs", Filters=flt),
                "images": self.describe_images(Owners=["self"], Filters=flt)}


def caller_cidr(endpoint_url: str | None, timeout: float = 5.0) -> str:
    """The caller's own address as a /32, for the builder's temporary security group.

    With a custom endpoint (moto, LocalStack, the local cloud) that is the address this
    machine uses to reach the endpoint; on AWS it is our public address as AWS sees it.
    """
    if endpoint_url:
        host = urllib.parse.urlsplit(endpoint_url).hostname or "127.0.0.1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return f"{s.getsockname()[0]}/32"
    try:
        with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=timeout) as resp:
            addr = resp.read().decode().strip()
        socket.inet_aton(addr)
        return f"{addr}/32"
    except (OSError, ValueError) as exc:
        raise ConfigError(f"builder.ssh.allowed_cidr: not set, and this machine's public address could not "
                          f"be determined ({exc}); set it, e.g. allowed_cidr: 203.0.113.7/32") from None
