"""Instances: one RunInstances request for every instance bakery starts (builder, smoke test,
tier), its waits, stop and terminate. A mixin of the EC2 facade.

Builders, smoke instances and tier instances differ in data, not in how they are asked for:
`InstanceSpec` says what one instance is, `launch()` asks for it the one way bakery launches
anything (instance types in order, capacity errors move on to the next at once, a client token
so a retried or concurrent request gets the same instance back), and `template_data()` says the
same thing as a launch template, so an instance started from a template bakery wrote is the
instance bakery would have started.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from bakery.cloud import tags as T
from bakery.cloud.session import CapacityError
from bakery.progress import say
from bakery.waits import Backoff, wait_for
from bakery.errors import CloudError

if TYPE_CHECKING:
    from bakery.config.recipe import RootVolume

TERMINAL = ("shutting-down", "terminated")
INSTANCE_TIMEOUT = 600  # seconds for an instance to reach running (or terminated)


@dataclass(frozen=True)
class Volume:
    size_gb: int = 8
    type: str = "gp3"
    encrypted: bool = True
    kms_key_id: str | None = None
    device_name: str = "/dev/xvda"
    iops: int | None = None
    throughput: int | None = None

    @classmethod
    def of(cls, spec: "RootVolume | None", device_name: str) -> "Volume":
        """A recipe's or tier's root_volume (None: the defaults) on the image's root device unless
        it names another."""
        if spec is None:
            return cls(device_name=device_name)
        return cls(spec.size_gb, spec.type, spec.encrypted, spec.kms_key_id, spec.device_name or device_name,
                   spec.iops, spec.throughput)

    def mapping(self) -> dict:
        ebs = {"VolumeSize": self.size_gb, "VolumeType": self.type, "Encrypted": self.encrypted,
               "DeleteOnTermination": True}
        if self.kms_key_id:
            ebs["KmsKeyId"] = self.kms_key_id
        if self.iops is not None:
            ebs["Iops"] = self.iops
        if self.throughput is not None:
            ebs["Throughput"] = self.throughput
        return {"DeviceName": self.device_name, "Ebs": ebs}


@dataclass(frozen=True)
class Nic:
    """A network interface made with the instance (deleted with it)."""

    device_index: int
    subnet_id: str
    groups: tuple[str, ...]
    public_ip: bool | None = None     # None: the subnet's MapPublicIpOnLaunch decides
    private_ip: str | None = None
    description: str | None = None

    def request(self) -> dict:
        nic = {"DeviceIndex": self.device_index, "SubnetId": self.subnet_id, "Groups": list(self.groups),
               "DeleteOnTermination": True}
        if self.description is not None:
            nic["Description"] = self.description
        if self.private_ip:
            nic["PrivateIpAddress"] = self.private_ip
        if self.public_ip is not None:
            nic["AssociatePublicIpAddress"] = self.public_ip
        return nic


@dataclass(frozen=True)
class InstanceSpec:
    """Everything one RunInstances asks for."""

    image_id: str
    instance_types: tuple[str, ...]   # tried in order; a capacity error moves on to the next
    nics: tuple[Nic, ...]
    volume: Volume
    tags: dict[str, str]              # on the instance, its volumes and its ENIs, at creation
    token: str                        # the same token for the same request: EC2 launches at most once
    token_per_type: bool = True       # each instance type its own token (a builder's fallback types);
                                      # False: the token alone (a tier slot: concurrent launchers agree)
    label: str | None = None          # names the request in errors (default: the instance type)
    user_data: str | bytes | None = None
    key_name: str | None = None
    instance_profile: str | None = None
    # 1: only the instance itself reaches IMDS (a builder); 2: containers on a tier instance too
    imds_hop_limit: int = 1
    terminate_on_shutdown: bool = False  # a builder that shuts itself down is gone, not a stopped leftover
    template_tags: dict[str, str] = field(default_factory=dict)  # what a launch template stamps instead of `tags`
    market: str = "on-demand"         # "spot": every type as spot first, then every type on demand

    def attempts(self) -> list[tuple[str, str]]:
        """(instance type, market) in the order they are tried: a capacity error moves on."""
        markets = ("spot", "on-demand") if self.market == "spot" else ("on-demand",)
        return [(itype, market) for market in markets for itype in self.instance_types]

    def request(self, instance_type: str, token: str, market: str = "on-demand") -> dict:
        params = {
            "ImageId": self.image_id, "InstanceType": instance_type, "MinCount": 1, "MaxCount": 1,
            "ClientToken": token,
            "MetadataOptions": self._metadata(),
            "BlockDeviceMappings": [self.volume.mapping()],
            "NetworkInterfaces": [n.request() for n in self.nics],
            "TagSpecifications": T.tag_specs(self.tags, "instance", "volume", "network-interface"),
        }
        if self.user_data:
            params["UserData"] = self.user_data
        if self.key_name:
            params["KeyName"] = self.key_name
        if self.instance_profile:
            params["IamInstanceProfile"] = {"Name": self.instance_profile}
        if self.terminate_on_shutdown:
            params["InstanceInitiatedShutdownBehavior"] = "terminate"
        if market == "spot":  # one-time: an interrupted builder is gone, and the bake fails and cleans up
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        return params

    def template_data(self) -> dict:
        """The same instance as LaunchTemplateData (an Auto Scaling group picks the subnets)."""
        data = {"ImageId": self.image_id, "InstanceType": self.instance_types[0],
                "MetadataOptions": self._metadata(), "BlockDeviceMappings": [self.volume.mapping()],
                "SecurityGroupIds": list(self.nics[0].groups) if self.nics else [],
                "TagSpecifications": T.tag_specs(self.template_tags, "instance", "volume")}
        if self.user_data:  # launch templates take base64 that the caller encodes (unlike RunInstances)
            raw = self.user_data.encode() if isinstance(self.user_data, str) else self.user_data
            data["UserData"] = base64.b64encode(raw).decode()
        if self.key_name:
            data["KeyName"] = self.key_name
        if self.instance_profile:
            data["IamInstanceProfile"] = {"Name": self.instance_profile}
        return data

    def _metadata(self) -> dict:
        return {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": self.imds_hop_limit}


def client_token(*parts: str) -> str:
    """A deterministic client token: the same parts, the same token (EC2 allows 64 characters)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "bakery/" + "/".join(parts)))


class InstancesAPI:
    """Instance operations of the EC2 facade."""

    def launch(self, spec: InstanceSpec, *, on_capacity: Callable[[str], None] | None = None) -> dict:
        """Start one instance as `spec` says; the instance record RunInstances returned (a spot
        instance's says so in InstanceLifecycle, as EC2's own does)."""
        errors = []
        attempts = spec.attempts()
        for itype, market in attempts:
            which = itype if market == "on-demand" else f"{itype} spot"
            key = (itype,) if market == "on-demand" else (itype, "spot")  # on-demand keeps the tokens it had
            params = spec.request(itype, client_token(spec.token, *key) if spec.token_per_type
                                  else client_token(spec.token, *key[1:]), market)
            action = f"run-instances ({spec.label or which})"
            try:
                inst = self.call(action, self.client.run_instances, **params)["Instances"][0]
                # EC2 remembers a token for hours: after a rolled-back launch the same request is
                # handed the instance that was terminated. Ask again under a token derived from it,
                # so every launcher that meets the same dead instance still agrees on the next token.
                for _ in range(5):
                    if inst["State"]["Name"] not in TERMINAL:
                        break
                    params["ClientToken"] = str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                           f"{params['ClientToken']}/{inst['InstanceId']}"))
                    inst = self.call(action, self.client.run_instances, **params)["Instances"][0]
                if market == "spot":
                    inst.setdefault("InstanceLifecycle", "spot")
                return inst
            except CapacityError as exc:
                errors.append(exc.message)
                if on_capacity is not None and (itype, market) != attempts[-1]:
                    following = attempts[attempts.index((itype, market)) + 1]
                    on_capacity(f"{exc.message}; trying " + ("the next instance type" if following[1] == market
                                                              else "on-demand instances"))
        tried = ", ".join(spec.instance_types) + (" (spot, then on demand)" if spec.market == "spot" else "")
        raise CloudError(f"no capacity for any of {tried}: {errors[-1]}")

    def describe_instance(self, instance_id: str) -> dict | None:
        """The instance's record; None when EC2 does not know it (yet, or any more)."""
        return next(iter(self._instances_by_id([instance_id])), None)

    def _instances_by_id(self, ids: list[str]) -> list[dict]:
        try:
            resp = self.call(f"describe-instances {' '.join(ids)}", self.client.describe_instances, InstanceIds=ids)
        except CloudError as exc:
            if self.code_of(exc) == "InvalidInstanceID.NotFound":
                return []  # eventual consistency right after RunInstances
            raise
        return [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]

    def instances(self, *filters: dict, states: tuple[str, ...] | None = T.LIVE_STATES) -> list[dict]:
        """Every instance matching the filters (all pages), by default only those not terminated."""
        filters = list(filters) + ([{"Name": "instance-state-name", "Values": list(states)}] if states else [])
        reservations = self.describe_all("describe_instances", "Reservations", Filters=filters)
        return [i for r in reservations for i in r["Instances"]]

    def tier_instances(self, env: str, tier: str, *filters: dict,
                       states: tuple[str, ...] | None = T.LIVE_STATES) -> list[dict]:
        """An environment's tier as it runs: its instances (by default those not terminated)."""
        return self.instances(T.tag_filter(T.ENVIRONMENT, env), T.tag_filter(T.TIER, tier), *filters, states=states)

    def console_output(self, instance_id: str) -> str:
        """The instance's console as EC2 has it now (Latest: a Nitro instance's current buffer)."""
        resp = self.call(f"get-console-output {instance_id}", self.client.get_console_output,
                         InstanceId=instance_id, Latest=True)
        return resp.get("Output") or ""

    def wait_instance_state(self, instance_id: str, want: str, timeout: float,
                            backoff: Backoff | None = None) -> dict:
        if want != "terminated":  # clean-up must still try, whatever the credentials' lifetime
            self.ensure_credentials_last(timeout, f"waiting for instance {instance_id} to be {want}")
        bad = {"running": {"shutting-down", "terminated", "stopping", "stopped"},
               "stopped": {"terminated", "shutting-down"}, "terminated": set()}[want]

        def check():
            inst = self.describe_instance(instance_id)
            if inst is None:
                # not found: not yet visible after RunInstances, or already forgotten after termination
                return {"InstanceId": instance_id, "State": {"Name": "terminated"}} if want == "terminated" else None
            state = inst["State"]["Name"]
            if state == want:
                return inst
            say(f"{instance_id}: {state}")
            if state in bad:
                reason = inst.get("StateReason", {}).get("Message", "")
                raise CloudError(f"instance {instance_id} is {state} instead of {want}{': ' + reason if reason else ''}")
            return None
        return wait_for(check, what=f"instance {instance_id} to be {want}", timeout=timeout,
                        **({"backoff": backoff} if backoff else {}))

    def stop_instance(self, instance_id: str) -> None:
        self.call(f"stop-instances {instance_id}", self.client.stop_instances, InstanceIds=[instance_id])

    def reboot_instance(self, instance_id: str) -> None:
        """An OS reboot, as EC2 does it (a clean one, a hard one after four minutes): the instance
        stays running, keeps its disks and addresses."""
        self.call(f"reboot-instances {instance_id}", self.client.reboot_instances, InstanceIds=[instance_id])

    def terminate_instances(self, instance_ids: list[str]) -> None:
        """Terminate; an instance EC2 no longer knows is already gone."""
        try:
            self.call(f"terminate-instances {' '.join(instance_ids)}", self.client.terminate_instances,
                      InstanceIds=instance_ids)
        except CloudError as exc:
            if self.code_of(exc) != "InvalidInstanceID.NotFound":
                raise

    def terminate_instance(self, instance_id: str) -> None:
        self.terminate_instances([instance_id])

    def terminate_and_wait(self, instance_id: str, timeout: float = 600) -> None:
        self.terminate_instance(instance_id)
        self.wait_instance_state(instance_id, "terminated", timeout=timeout)
