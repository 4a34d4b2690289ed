"""What EC2 calls do to the local cloud's machines, applied from bakery's client.

After each successful call that real EC2 would turn into something physical, this does the same
with the local cloud's machines (bakery.local.cloud): RunInstances boots a sandbox from the
image's layers with the instance's user data and key pair (cloud-init reads them as on EC2),
Stop/TerminateInstances stop or destroy it, CreateImage captures its changes as a layer,
CreateTags and DeregisterImage keep the layer store (the durable record of images) in step, and
ENI attach/detach, secondary IPs and the source/dest check follow EC2's view onto the VPC fabric.

It lives on bakery's own client, so only bakery's calls have these effects; issue 13 moves it into
the endpoint, where every client's calls do. It is attached once, by bakery.cloud.connect.
"""

from __future__ import annotations

import base64

from bakery.local.cloud import LocalCloud

# Calls whose parameters the after-call hook needs (botocore hands it only the response).
_REMEMBER_PARAMS = ("CreateImage", "CreateTags", "DeregisterImage", "RunInstances", "AttachNetworkInterface",
                    "AssignPrivateIpAddresses", "ModifyNetworkInterfaceAttribute")


class LocalEffects:
    def __init__(self, local: LocalCloud):
        self.local = local

    def attach(self, client) -> None:
        events = client.meta.events
        for op in _REMEMBER_PARAMS:
            events.register(f"provide-client-params.ec2.{op}", _stash_params)
        # DetachNetworkInterface names only the attachment: find its ENI before the call forgets it
        events.register("provide-client-params.ec2.DetachNetworkInterface",
                        lambda params, context, **_: self._stash_detach(client, params, context))
        on = {"RunInstances": lambda **kw: self._after_run(client, **kw),
              "StopInstances": self._after_stop, "TerminateInstances": self._after_terminate,
              "CreateImage": lambda **kw: self._after_create_image(client, **kw),
              "CreateTags": self._after_create_tags, "DeregisterImage": self._after_deregister,
              "AttachNetworkInterface": lambda **kw: self._after_attach(client, **kw),
              "DetachNetworkInterface": self._after_detach,
              "AssignPrivateIpAddresses": lambda **kw: self._after_assign(client, **kw),
              "ModifyNetworkInterfaceAttribute": self._after_modify_eni}
        for op, hook in on.items():
            events.register(f"after-call.ec2.{op}", _only_on_success(hook))

    # ---- instances ----------------------------------------------------------------------

    def _after_run(self, client, parsed, **_):
        started: list[str] = []
        try:
            for inst in parsed.get("Instances", []):
                self._boot(client, inst)
                started.append(inst["InstanceId"])
                for nic in inst.get("NetworkInterfaces", []):
                    self._wire(client, nic["NetworkInterfaceId"], inst["InstanceId"], nic["Attachment"]["DeviceIndex"])
        except BaseException:
            for iid in started:
                self.local.destroy(iid)
            client.terminate_instances(InstanceIds=[i["InstanceId"] for i in parsed.get("Instances", [])])
            raise

    def _boot(self, client, inst: dict) -> None:
        iid = inst["InstanceId"]
        raw = client.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        value = raw.get("UserData", {}).get("Value")
        keys = []
        if inst.get("KeyName"):
            pairs = client.describe_key_pairs(KeyNames=[inst["KeyName"]], IncludePublicKey=True)["KeyPairs"]
            keys = [p["PublicKey"].strip() for p in pairs if p.get("PublicKey")]
        self.local.boot(iid, inst["ImageId"], user_data=base64.b64decode(value) if value else None,
                        public_keys=keys, private_ip=inst.get("PrivateIpAddress"))

    def _after_stop(self, parsed, **_):
        for change in parsed.get("StoppingInstances", []):
            self.local.stop(change["InstanceId"])

    def _after_terminate(self, parsed, **_):
        for change in parsed.get("TerminatingInstances", []):
            self.local.destroy(change["InstanceId"])

    # ---- ENIs: the VPC fabric follows EC2's view of attachments ------------------------

    def _wire(self, client, eni_id: str, instance_id: str, device_index: int) -> None:
        if not self.local.has_machine(instance_id):
            return
        eni = client.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
        subnet = client.describe_subnets(SubnetIds=[eni["SubnetId"]])["Subnets"][0]
        ips = [a["PrivateIpAddress"] for a in sorted(eni.get("PrivateIpAddresses", []), key=lambda a: not a.get("Primary"))]
        self.local.wire(eni_id, instance_id, device_index, vpc_id=subnet["VpcId"], subnet_id=subnet["SubnetId"],
                        cidr=subnet["CidrBlock"], mac=eni["MacAddress"], ips=ips,
                        source_dest_check=eni.get("SourceDestCheck", True))

    def _after_attach(self, client, context, **_):
        p = context.get("bakery_params", {})
        self._wire(client, p["NetworkInterfaceId"], p["InstanceId"], p["DeviceIndex"])

    def _stash_detach(self, client, params, context) -> None:
        found = client.describe_network_interfaces(Filters=[
            {"Name": "attachment.attachment-id", "Values": [params["AttachmentId"]]}])["NetworkInterfaces"]
        context["bakery_eni"] = found[0]["NetworkInterfaceId"] if found else None

    def _after_detach(self, context, **_):
        if context.get("bakery_eni"):
            self.local.unwire(context["bakery_eni"])

    def _after_assign(self, client, context, **_):
        eni_id = context["bakery_params"]["NetworkInterfaceId"]
        eni = client.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
        self.local.add_ips(eni_id, [a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])])

    def _after_modify_eni(self, context, **_):
        p = context.get("bakery_params", {})
        if "SourceDestCheck" in p:
            self.local.set_source_dest_check(p["NetworkInterfaceId"], p["SourceDestCheck"]["Value"])

    # ---- images -------------------------------------------------------------------------

    def _after_create_image(self, client, parsed, context, **_):
        params = context.get("bakery_params", {})
        iid, image_id = params["InstanceId"], parsed["ImageId"]
        try:
            parent = client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["ImageId"]
            tags = {t["Key"]: t["Value"] for spec in params.get("TagSpecifications", [])
                    if spec.get("ResourceType") == "image" for t in spec.get("Tags", [])}
            self.local.capture_image(iid, image_id, parent, name=params.get("Name", image_id),
                                     description=params.get("Description", ""), tags=tags)
        except BaseException:
            client.deregister_image(ImageId=image_id)
            raise

    def _after_create_tags(self, context, **_):
        params = context.get("bakery_params", {})
        new = {t["Key"]: t.get("Value", "") for t in params.get("Tags", [])}
        for rid in params.get("Resources", []):
            if rid.startswith("ami-"):
                self.local.tag_image(rid, new)

    def _after_deregister(self, context, **_):
        if context.get("bakery_image_id"):
            self.local.forget_image(context["bakery_image_id"])


def _only_on_success(hook):
    def run(http_response, **kw):
        if http_response.status_code < 300:
            hook(http_response=http_response, **kw)
    return run


def _stash_params(params, context, **_):
    context["bakery_params"] = dict(params)
    if "ImageId" in params:
        context["bakery_image_id"] = params["ImageId"]
