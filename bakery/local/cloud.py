"""The local cloud: a moto endpoint whose instances are real sandboxes.

bake.py and the rest of bakery talk plain EC2 to moto. This module hangs off the EC2
client's botocore events and does, after each successful call, what real EC2 would do
with real machines: RunInstances boots a sandbox from the image's layers with the
instance's user data and key pair (cloud-init reads them as it does on EC2),
StopInstances/TerminateInstances stop/destroy it, CreateImage captures its changes as
a layer, CreateTags and DeregisterImage keep the layer store (the durable record of
images) in step. The only extra thing bakery asks of it is a socket to an instance's
sshd (`socket_factory`), since sandboxes have no routed address.
"""

from __future__ import annotations

import base64
import ipaddress
import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from bakery.local.base import ensure_base_image, load_base_metadata
from bakery.local.endpoint import Endpoint
from bakery.local.errors import LocalCloudError
from bakery.local.layers import LayerStore
from bakery.local.sandbox import Sandbox
from bakery.local.vpcnet import VpcFabric

DEBIAN_OWNER = "136693071363"  # Debian's AWS account: recipes filter on it, here as on AWS
LOCAL_ACCOUNT = "123456789012"  # moto's account: images we bake are owned by "self"


class LocalCloud:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.layers = LayerStore(data_dir / "images")
        self.instances_dir = data_dir / "instances"
        self.endpoint = Endpoint(data_dir)
        self.fabric = VpcFabric(data_dir)

    # ---- lifecycle ----------------------------------------------------------------------

    def ensure_base(self, log: Callable[[str], None] = print) -> str:
        """Build (once) and register the Debian base image; returns its AMI id."""
        rootfs = ensure_base_image(self.data_dir, log=log)
        meta = load_base_metadata(rootfs)
        image_id = str(meta["id"])
        try:
            self.layers.meta(image_id)
        except LocalCloudError:
            created = str(meta["created"])
            # Debian's naming (debian-12-amd64-YYYYMMDD-NNNN) so the official source filter matches.
            name = f"debian-12-amd64-{created[:10].replace('-', '')}-{created[11:16].replace(':', '')}"
            self.layers.add_base(image_id, rootfs, {"ec2": {
                "name": name, "description": "Debian 12 (bookworm) local base: cloud-init, openssh-server",
                "owner_id": DEBIAN_OWNER, "creation_date": created, "tags": {}}})
        return image_id

    def up(self, log: Callable[[str], None] = print) -> str:
        """Start the endpoint if needed (building the base image the first time); returns its URL."""
        url = self.endpoint.running_url()
        if url:
            return url
        from bakery.local.prereqs import require

        require()
        self.ensure_base(log)
        return self.endpoint.up(self.registered_images())

    def down(self) -> dict[str, int]:
        """Destroy every instance and stop the endpoint; images stay in the layer store."""
        destroyed, failures = 0, []
        for box in self.sandboxes():
            try:
                box.destroy()
                destroyed += 1
            except LocalCloudError as exc:  # keep going: one stuck sandbox must not strand the rest
                failures.append(exc.message)
        self.fabric.teardown()
        stopped = self.endpoint.down()
        if failures:
            raise LocalCloudError(f"local.down: {len(failures)} instance(s) could not be removed: {failures[0]}")
        return {"instances_destroyed": destroyed, "endpoint_stopped": int(stopped)}

    def sandboxes(self) -> list[Sandbox]:
        if not self.instances_dir.is_dir():
            return []
        return [Sandbox.attach(d.name, self.instances_dir) for d in sorted(self.instances_dir.iterdir())
                if (d / "sandbox.json").is_file()]

    def registered_images(self) -> list[dict]:
        """The layer store's images in MOTO_AMIS_PATH form (moto's Ami constructor arguments)."""
        out = []
        for record in self.layers.list():
            ec2 = (record.get("meta") or {}).get("ec2")
            if not ec2 or ec2.get("deregistered"):
                continue
            out.append({"ami_id": record["id"], "name": ec2["name"], "description": ec2.get("description", ""),
                        "owner_id": ec2.get("owner_id", LOCAL_ACCOUNT), "architecture": "x86_64",
                        "virtualization_type": "hvm", "root_device_type": "ebs", "root_device_name": "/dev/xvda",
                        "creation_date": ec2.get("creation_date"), "state": "available", "public": False,
                        "tags": ec2.get("tags", {})})
        return out

    # ---- EC2 event hooks ----------------------------------------------------------------

    def attach(self, client) -> None:
        events = client.meta.events
        for op in ("CreateImage", "CreateTags", "DeregisterImage", "RunInstances", "AttachNetworkInterface",
                   "AssignPrivateIpAddresses", "ModifyNetworkInterfaceAttribute"):
            events.register(f"provide-client-params.ec2.{op}", _stash_params)
        # DetachNetworkInterface names only the attachment: find its ENI before the call forgets it
        events.register("provide-client-params.ec2.DetachNetworkInterface",
                        lambda params, context, **_: self._stash_detach(client, params, context))
        events.register("after-call.ec2.AttachNetworkInterface", lambda **kw: self._after_attach(client, **kw))
        events.register("after-call.ec2.DetachNetworkInterface", self._after_detach)
        events.register("after-call.ec2.AssignPrivateIpAddresses", lambda **kw: self._after_assign(client, **kw))
        events.register("after-call.ec2.ModifyNetworkInterfaceAttribute", self._after_modify_eni)
        events.register("after-call.ec2.RunInstances", lambda **kw: self._after_run(client, **kw))
        events.register("after-call.ec2.StopInstances", self._after_stop)
        events.register("after-call.ec2.TerminateInstances", self._after_terminate)
        events.register("after-call.ec2.CreateImage", lambda **kw: self._after_create_image(client, **kw))
        events.register("after-call.ec2.CreateTags", self._after_create_tags)
        events.register("after-call.ec2.DeregisterImage", self._after_deregister)

    def socket_factory(self, instance: dict):
        name = instance["InstanceId"]
        return lambda timeout: self.connect(name, 22, timeout)

    def connect(self, instance_id: str, port: int, timeout: float):
        """A TCP socket to the instance's port, opened inside its network namespace."""
        return Sandbox.attach(instance_id, self.instances_dir).connect(port, timeout)

    def _after_run(self, client, http_response, parsed, context, **_):
        if http_response.status_code >= 300:
            return
        started: list[Sandbox] = []
        try:
            for inst in parsed.get("Instances", []):
                started.append(self._boot(client, inst))
                for nic in inst.get("NetworkInterfaces", []):
                    self._wire(client, nic["NetworkInterfaceId"], inst["InstanceId"], nic["Attachment"]["DeviceIndex"])
        except BaseException:
            for box in started:
                box.destroy()
            ids = [i["InstanceId"] for i in parsed.get("Instances", [])]
            client.terminate_instances(InstanceIds=ids)
            raise

    def _boot(self, client, inst: dict) -> Sandbox:
        iid, image_id = inst["InstanceId"], inst["ImageId"]
        try:
            lowers = self.layers.lowers(image_id)
        except LocalCloudError as exc:
            raise LocalCloudError(f"cannot boot {iid}: {exc.message}") from None
        raw = client.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        value = raw.get("UserData", {}).get("Value")
        user_data = base64.b64decode(value) if value else None
        keys = []
        if inst.get("KeyName"):
            pairs = client.describe_key_pairs(KeyNames=[inst["KeyName"]], IncludePublicKey=True)["KeyPairs"]
            keys = [p["PublicKey"].strip() for p in pairs if p.get("PublicKey")]
        hostname = "ip-" + inst.get("PrivateIpAddress", "10.0.0.1").replace(".", "-")
        return Sandbox.start(iid, lowers, self.instances_dir, user_data=user_data,
                             meta_data={"instance-id": iid, "local-hostname": hostname, "public-keys": keys},
                             egress=True, hostname=hostname)

    def _each_sandbox(self, parsed, key: str):
        for change in parsed.get(key, []):
            d = self.instances_dir / change["InstanceId"]
            if (d / "sandbox.json").is_file():
                yield Sandbox.attach(change["InstanceId"], self.instances_dir)

    def _after_stop(self, http_response, parsed, **_):
        if http_response.status_code < 300:
            for box in self._each_sandbox(parsed, "StoppingInstances"):
                box.stop()

    def _after_terminate(self, http_response, parsed, **_):
        if http_response.status_code < 300:
            for box in self._each_sandbox(parsed, "TerminatingInstances"):
                for eni, att in self.fabric.status()["attachments"].items():
                    if att["netns"] == box.netns:
                        self.fabric.detach(eni)
                box.destroy()

    # ---- ENIs: the VPC fabric follows EC2's view of attachments ------------------------

    def _wire(self, client, eni_id: str, instance_id: str, device_index: int) -> None:
        """Give the instance's sandbox a veth for this ENI: its MAC, its IPs, on its subnet's bridge."""
        if not (self.instances_dir / instance_id / "sandbox.json").is_file():
            return
        eni = client.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
        subnet = client.describe_subnets(SubnetIds=[eni["SubnetId"]])["Subnets"][0]
        ips = [a["PrivateIpAddress"] for a in sorted(eni.get("PrivateIpAddresses", []), key=lambda a: not a.get("Primary"))]
        net = ipaddress.IPv4Network(subnet["CidrBlock"])
        if not ips or any(ipaddress.IPv4Address(ip) not in net for ip in ips):
            return  # moto's default VPC hands out addresses outside the subnet: nothing real to wire
        self.fabric.ensure_subnet(subnet["VpcId"], subnet["SubnetId"], subnet["CidrBlock"])
        box = Sandbox.attach(instance_id, self.instances_dir)
        self.fabric.attach(eni_id, subnet["SubnetId"], box.netns, device_index, eni["MacAddress"], ips,
                           eni.get("SourceDestCheck", True))

    def _after_attach(self, client, http_response, context, **_):
        if http_response.status_code < 300:
            p = context.get("bakery_params", {})
            self._wire(client, p["NetworkInterfaceId"], p["InstanceId"], p["DeviceIndex"])

    def _stash_detach(self, client, params, context) -> None:
        found = client.describe_network_interfaces(Filters=[
            {"Name": "attachment.attachment-id", "Values": [params["AttachmentId"]]}])["NetworkInterfaces"]
        context["bakery_eni"] = found[0]["NetworkInterfaceId"] if found else None

    def _after_detach(self, http_response, context, **_):
        if http_response.status_code < 300 and context.get("bakery_eni"):
            self.fabric.detach(context["bakery_eni"])

    def _after_assign(self, client, http_response, context, **_):
        if http_response.status_code < 300:
            eni_id = context["bakery_params"]["NetworkInterfaceId"]
            eni = client.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
            self.fabric.add_ips(eni_id, [a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])])

    def _after_modify_eni(self, http_response, context, **_):
        p = context.get("bakery_params", {})
        if http_response.status_code < 300 and "SourceDestCheck" in p:
            if p["NetworkInterfaceId"] in self.fabric.status()["attachments"]:
                self.fabric.set_source_dest_check(p["NetworkInterfaceId"], p["SourceDestCheck"]["Value"])

    def _after_create_image(self, client, http_response, parsed, context, **_):
        if http_response.status_code >= 300:
            return
        params = context.get("bakery_params", {})
        iid, image_id = params["InstanceId"], parsed["ImageId"]
        try:
            box = Sandbox.attach(iid, self.instances_dir)
            box.stop()  # EC2 reboots for a consistent snapshot unless NoReboot; stopping is the same here
            parent = client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["ImageId"]
            tags = {t["Key"]: t["Value"] for spec in params.get("TagSpecifications", [])
                    if spec.get("ResourceType") == "image" for t in spec.get("Tags", [])}
            tmp = Path(tempfile.mkdtemp(prefix=".capture-", dir=self.data_dir))
            try:
                layer = box.capture_layer(tmp / "layer.tar.zst")
                self.layers.add(image_id, layer, parent, {"ec2": {
                    "name": params.get("Name", image_id), "description": params.get("Description", ""),
                    "owner_id": LOCAL_ACCOUNT, "tags": tags,
                    "creation_date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")}})
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            client.deregister_image(ImageId=image_id)
            raise

    def _after_create_tags(self, http_response, context, **_):
        if http_response.status_code >= 300:
            return
        params = context.get("bakery_params", {})
        new = {t["Key"]: t.get("Value", "") for t in params.get("Tags", [])}
        for rid in params.get("Resources", []):
            if rid.startswith("ami-") and (self.layers.root / rid / "meta.json").is_file():
                ec2 = dict(self.layers.meta(rid).get("meta", {}).get("ec2", {}))
                ec2["tags"] = {**ec2.get("tags", {}), **new}
                self.layers.update_meta(rid, {"ec2": ec2})

    def _after_deregister(self, http_response, context, parsed, **_):
        if http_response.status_code >= 300:
            return
        image_id = context.get("bakery_image_id")
        if not image_id or not (self.layers.root / image_id / "meta.json").is_file():
            return
        if self.layers.children(image_id):
            # Images built on it still need its files: keep them, but it is no longer an AMI.
            ec2 = dict(self.layers.meta(image_id).get("meta", {}).get("ec2", {}))
            self.layers.update_meta(image_id, {"ec2": {**ec2, "deregistered": True}})
        else:
            self.layers.remove(image_id)


def _stash_params(params, context, **_):
    context["bakery_params"] = dict(params)
    if "ImageId" in params:
        context["bakery_image_id"] = params["ImageId"]
