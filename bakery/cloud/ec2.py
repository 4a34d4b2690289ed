"""The only place that calls the EC2 and SSM APIs (botocore).

Every call that fails becomes a CloudError whose message names the call and the
endpoint's error code. Throttling and 5xx are retried by botocore's standard retry
mode; capacity errors are surfaced as `CapacityError` so the caller can fall back
to the next instance type.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import socket
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import botocore.exceptions
import botocore.parsers
from botocore.config import Config

from bakery.cloud.vpc import VpcAPI
from bakery.cloud.waits import Backoff, wait_for
from bakery.errors import CloudError, ConfigError, Interrupted
from bakery.config.settings import Settings

TAG_PREFIX = "bakery:"
AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "ExpiredToken", "ExpiredTokenException",
              "InvalidClientTokenId", "RequestExpired", "UnrecognizedClientException", "AccessDenied",
              "AccessDeniedException", "SignatureDoesNotMatch"}
CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported",
                  "InstanceLimitExceeded", "VcpuLimitExceeded", "InsufficientHostCapacity"}


class CapacityError(CloudError):
    """No capacity for this instance type here: try the next one."""


@dataclass(frozen=True)
class SourceImage:
    id: str
    name: str
    root_device_name: str
    owner: str


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def error_message(exc: BaseException, action: str) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code, msg = err.get("Code", "Error"), (err.get("Message") or "").strip().splitlines()
        first = msg[0] if msg else ""
        if code in AUTH_CODES:
            return f"{action}: not authorised ({code}): {first} (check AWS_PROFILE / credentials and the bake role's policy)"
        return f"{action}: {code}: {first}"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return f"{action}: no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"{action}: cannot reach the endpoint {exc.kwargs.get('endpoint_url', '')}"
    if isinstance(exc, botocore.parsers.ResponseParserError):
        return f"{action}: the endpoint failed with an unreadable response (a server error; see its log)"
    return f"{action}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class Session:
    """The part of boto3.Session bakery uses, on botocore alone: importing boto3 also imports
    s3transfer (~60 ms of every command's start-up), and bakery has no use for resources."""

    def __init__(self, *, profile_name: str | None = None, region_name: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None):
        import botocore.session

        from bakery.cloud.service_models import use_trimmed_models

        self.core = botocore.session.Session(profile=profile_name)
        if aws_access_key_id:
            self.core.set_credentials(aws_access_key_id, aws_secret_access_key)
        if region_name:
            self.core.set_config_variable("region", region_name)
        try:
            use_trimmed_models(self.core)  # the first thing that reads the profile
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(f"AWS profile {profile_name!r} not found (bakery.profile / AWS_PROFILE; "
                              "see ~/.aws/config)") from None
        self.events = self.core.get_component("event_emitter")

    def client(self, service: str, **kwargs):
        return self.core.create_client(service, **kwargs)

    def get_credentials(self):
        return self.core.get_credentials()


class EC2(VpcAPI):
    """A thin, typed facade over one region's EC2 and SSM clients."""

    def __init__(self, settings: Settings, session: Session | None = None):
        self.local = None
        if settings.cloud == "local":
            # The embedded cloud: our own moto endpoint, started on demand, and throwaway
            # credentials so real AWS credentials are never sent to it.
            from bakery.local.cloud import LocalCloud

            self.local = LocalCloud(settings.local_data)
            url = self.local.up(log=lambda line: print(f"local cloud: {line}", file=sys.stderr, flush=True))
            settings = dataclasses.replace(settings, endpoint_url=url)
            session = session or Session(aws_access_key_id="local", aws_secret_access_key="local",
                                         region_name=settings.region)
        self.settings = settings
        self.region = settings.region
        session = session or Session(profile_name=settings.profile, region_name=settings.region)
        config = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5, read_timeout=60,
                        user_agent_extra="bakery")
        self.session = session
        # every client made from this session (EC2, SSM, ELB) lets a signal through (see below)
        session.events.register("needs-retry", _interrupted_is_not_retried, unique_id="bakery-interrupted")
        session.events.register("needs-retry.ec2", _capacity_is_not_retried, unique_id="bakery-capacity")
        # region_name explicitly: a facade for another region may share the home region's session
        self.client = session.client("ec2", region_name=settings.region, endpoint_url=settings.endpoint_url,
                                     config=config)
        self._ssm = None
        self._config = config
        if self.local:
            self.local.attach(self.client)

    @property
    def ssm(self):
        if self._ssm is None:
            self._ssm = self.session.client("ssm", region_name=self.region, endpoint_url=self.settings.endpoint_url,
                                            config=self._config)
        return self._ssm

    def call(self, action: str, fn: Callable[..., Any], **kwargs) -> Any:
        try:
            return fn(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in CAPACITY_CODES:
                raise CapacityError(error_message(exc, action)) from exc
            raise CloudError(error_message(exc, action)) from exc
        except (botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError, OSError) as exc:
            raise CloudError(error_message(exc, action)) from exc

    def ensure_credentials_last(self, seconds: float, what: str) -> None:
        """Fail now, while clean-up can still run, if the credentials cannot outlive this wait.

        Credentials that refresh themselves (assume-role, web identity, SSO) are fine; temporary
        ones that cannot (e.g. exported with AWS_CREDENTIAL_EXPIRATION) are checked against the
        wait's deadline, instead of hanging on ExpiredToken half way (a classic Packer complaint).
        """
        from datetime import datetime, timezone

        creds = self.session.get_credentials()
        expiry = getattr(creds, "_expiry_time", None)
        if creds is None or expiry is None or getattr(creds, "method", "") not in ("env", "shared-credentials-file"):
            return
        left = (expiry - datetime.now(timezone.utc)).total_seconds()
        if left < seconds:
            raise CloudError(f"{what}: the AWS credentials expire in {max(0, int(left))}s, before this wait's "
                             f"{int(seconds)}s deadline; renew them with a longer session (e.g. "
                             "role-duration-seconds) and bake again")

    def code_of(self, exc: CloudError) -> str:
        cause = exc.__cause__
        if isinstance(cause, botocore.exceptions.ClientError):
            return cause.response.get("Error", {}).get("Code", "")
        return ""

    # ---- images -------------------------------------------------------------------------

    def resolve_source(self, source) -> SourceImage:
        """The AMI a recipe starts from: fixed id, newest match of a filter, or SSM parameter."""
        if source.ssm_parameter:
            resp = self.call(f"ssm get-parameter {source.ssm_parameter}", self.ssm.get_parameter,
                             Name=source.ssm_parameter)
            return self._image_by_id(resp["Parameter"]["Value"], f"SSM parameter {source.ssm_parameter}")
        if source.ami:
            return self._image_by_id(source.ami, "source.ami")
        f = source.filter
        filters = [{"Name": "name", "Values": [f.name]}, {"Name": "state", "Values": ["available"]},
                   {"Name": "architecture", "Values": [f.architecture]}]
        images = self._describe_images(Owners=f.owners, Filters=filters, IncludeDeprecated=f.include_deprecated)
        # Some endpoints ignore IncludeDeprecated; re-check here so the rule holds everywhere.
        if not f.include_deprecated:
            images = [i for i in images if not _is_deprecated(i)]
        images = [i for i in images if fnmatch.fnmatchcase(i.get("Name", ""), f.name)]
        if not images:
            raise ConfigError(f"source.filter: no available {f.architecture} image named {f.name!r} "
                              f"owned by {', '.join(f.owners)} in {self.region}")
        images.sort(key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")), reverse=True)
        if len(images) > 1 and not f.most_recent:
            raise ConfigError(f"source.filter: {len(images)} images match {f.name!r}; "
                              "narrow the filter or set most_recent: true")
        return source_image(images[0])

    def _image_by_id(self, ami: str, what: str) -> SourceImage:
        return source_image(self.available_image(ami, what))

    def available_image(self, ami: str, what: str) -> dict:
        """The image, or a ConfigError naming `what` when it does not exist or is not available."""
        try:
            images = self._describe_images(ImageIds=[ami])
        except CloudError as exc:
            if self.code_of(exc).startswith("InvalidAMIID"):
                images = []
            else:
                raise
        if not images or images[0].get("State") != "available":
            raise ConfigError(f"{what}: image {ami} does not exist or is not available in {self.region}")
        return images[0]

    def _describe_images(self, **kwargs) -> list[dict]:
        return self.describe_all("describe_images", "Images", **kwargs)

    def describe_all(self, operation: str, key: str, **kwargs) -> list[dict]:
        """Every item across pages: a large account's instances, groups or images do not fit one."""
        client = self.client
        action = operation.replace("_", "-")
        if not client.can_paginate(operation):
            return self.call(action, getattr(client, operation), **kwargs).get(key, [])
        out: list[dict] = []
        try:
            for page in client.get_paginator(operation).paginate(**kwargs):
                out.extend(page.get(key, []))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise CloudError(error_message(exc, action)) from exc
        return out

    def bakery_images(self, recipe: str | None = None, inputs_hash: str | None = None,
                      states: Iterable[str] = ("available",)) -> list[dict]:
        """Finished images this account baked with bakery, newest first."""
        filters = [{"Name": f"tag:{TAG_PREFIX}complete", "Values": ["true"]}]
        if recipe:
            filters.append({"Name": f"tag:{TAG_PREFIX}recipe", "Values": [recipe]})
        if inputs_hash:
            filters.append({"Name": f"tag:{TAG_PREFIX}inputs-hash", "Values": [inputs_hash]})
        if states:
            filters.append({"Name": "state", "Values": list(states)})
        images = self._describe_images(Owners=["self"], Filters=filters)
        images.sort(key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")), reverse=True)
        return images

    def create_image(self, instance_id: str, name: str, description: str, tags: dict[str, str]) -> str:
        resp = self.call("create-image", self.client.create_image, InstanceId=instance_id, Name=name,
                         Description=description[:255],
                         TagSpecifications=[{"ResourceType": "image", "Tags": tag_list(tags)}])
        return resp["ImageId"]

    def image_snapshots(self, image_id: str) -> list[str]:
        images = self._describe_images(ImageIds=[image_id])
        return snapshots_of(images[0]) if images else []

    def wait_image_available(self, image_id: str, timeout: float, backoff: Backoff | None = None) -> dict:
        self.ensure_credentials_last(timeout, f"waiting for image {image_id}")
        def check():
            images = self._describe_images(ImageIds=[image_id])
            if not images:
                return None  # eventual consistency right after CreateImage
            state = images[0].get("State")
            if state == "available":
                return images[0]
            if state in ("failed", "invalid", "deregistered", "error"):
                reason = images[0].get("StateReason", {}).get("Message", "")
                raise CloudError(f"image {image_id} ended in state {state}: {reason}")
            return None
        return wait_for(check, what=f"image {image_id} to become available", timeout=timeout,
                        **({"backoff": backoff} if backoff else {}))

    def deregister_image(self, image_id: str) -> None:
        snaps = self.image_snapshots(image_id)
        self.call(f"deregister-image {image_id}", self.client.deregister_image, ImageId=image_id)
        for snap in snaps:
            self.call(f"delete-snapshot {snap}", self.client.delete_snapshot, SnapshotId=snap)

    # ---- tags ---------------------------------------------------------------------------

    def tag(self, resource_ids: list[str], tags: dict[str, str]) -> None:
        if resource_ids:
            self.call("create-tags", self.client.create_tags, Resources=resource_ids, Tags=tag_list(tags))

    # ---- key pairs and security groups --------------------------------------------------

    def import_key_pair(self, name: str, public_key: str, tags: dict[str, str]) -> str:
        resp = self.call("import-key-pair", self.client.import_key_pair, KeyName=name,
                         PublicKeyMaterial=public_key.encode(),
                         TagSpecifications=[{"ResourceType": "key-pair", "Tags": tag_list(tags)}])
        return resp.get("KeyPairId", name)

    def delete_key_pair(self, name: str) -> None:
        self.call(f"delete-key-pair {name}", self.client.delete_key_pair, KeyName=name)

    def subnet(self, subnet_id: str | None) -> dict:
        """The given subnet, or the default VPC's first default subnet (by AZ) when None."""
        if subnet_id:
            resp = self.call(f"describe-subnets {subnet_id}", self.client.describe_subnets, SubnetIds=[subnet_id])
            return resp["Subnets"][0]
        resp = self.call("describe-subnets (default VPC)", self.client.describe_subnets,
                         Filters=[{"Name": "default-for-az", "Values": ["true"]}])
        subnets = sorted(resp.get("Subnets", []), key=lambda s: (s.get("AvailabilityZone", ""), s["SubnetId"]))
        if not subnets:
            raise ConfigError(f"builder.subnet: not set and region {self.region} has no default VPC; "
                              "set builder.subnet to a subnet id")
        return subnets[0]

    def create_security_group(self, name: str, vpc_id: str, tags: dict[str, str]) -> str:
        """An empty group; the caller registers its deletion before opening anything in it."""
        resp = self.call("create-security-group", self.client.create_security_group, GroupName=name,
                         Description="bakery builder: SSH from the caller only", VpcId=vpc_id,
                         TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list(tags)}])
        return resp["GroupId"]

    def allow_ssh(self, group_id: str, cidr: str) -> None:
        self.call("authorize-security-group-ingress", self.client.authorize_security_group_ingress,
                  GroupId=group_id, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                                    "IpRanges": [{"CidrIp": cidr, "Description": "bakery caller"}]}])

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

    # ---- instances ----------------------------------------------------------------------

    def run_instance(self, **params) -> dict:
        resp = self.call(f"run-instances ({params.get('InstanceType')})", self.client.run_instances,
                         MinCount=1, MaxCount=1, **params)
        return resp["Instances"][0]

    def describe_instance(self, instance_id: str) -> dict | None:
        try:
            resp = self.call(f"describe-instances {instance_id}", self.client.describe_instances,
                             InstanceIds=[instance_id])
        except CloudError as exc:
            if self.code_of(exc) == "InvalidInstanceID.NotFound":
                return None  # eventual consistency right after RunInstances
            raise
        for res in resp.get("Reservations", []):
            for inst in res.get("Instances", []):
                return inst
        return None

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
            if state in bad:
                reason = inst.get("StateReason", {}).get("Message", "")
                raise CloudError(f"instance {instance_id} is {state} instead of {want}{': ' + reason if reason else ''}")
            return None
        return wait_for(check, what=f"instance {instance_id} to be {want}", timeout=timeout,
                        **({"backoff": backoff} if backoff else {}))

    def stop_instance(self, instance_id: str) -> None:
        self.call(f"stop-instances {instance_id}", self.client.stop_instances, InstanceIds=[instance_id])

    def terminate_instance(self, instance_id: str) -> None:
        try:
            self.call(f"terminate-instances {instance_id}", self.client.terminate_instances,
                      InstanceIds=[instance_id])
        except CloudError as exc:
            if self.code_of(exc) != "InvalidInstanceID.NotFound":
                raise

    # ---- launch templates -----------------------------------------------------------------

    def new_launch_template_version(self, name: str, data: dict, description: str, *,
                                    merge_latest: bool = False, initial: dict | None = None) -> int:
        """A new version of the named template (created on first use, with `initial` added to
        `data`); returns its number. `merge_latest` keeps everything else from the latest version
        and changes only `data`'s keys."""
        c = self.client
        try:
            self.call("describe-launch-templates", c.describe_launch_templates, LaunchTemplateNames=[name])
        except CloudError as exc:
            if "NotFound" not in self.code_of(exc):
                raise
            resp = self.call("create-launch-template", c.create_launch_template, LaunchTemplateName=name,
                             LaunchTemplateData={**(initial or {}), **data}, VersionDescription=description)
            return resp["LaunchTemplate"]["LatestVersionNumber"]
        resp = self.call("create-launch-template-version", c.create_launch_template_version,
                         LaunchTemplateName=name, LaunchTemplateData=data, VersionDescription=description,
                         **({"SourceVersion": "$Latest"} if merge_latest else {}))
        return resp["LaunchTemplateVersion"]["VersionNumber"]

    def delete_launch_template_version(self, name: str, version: int) -> None:
        """Undo `new_launch_template_version`: version 1 was the template's creation, so the
        template goes with it; a later version is deleted unless something made it the default."""
        c = self.client
        try:
            if version == 1:
                self.call(f"delete-launch-template {name}", c.delete_launch_template, LaunchTemplateName=name)
                return
            resp = self.call(f"delete-launch-template-versions {name}", c.delete_launch_template_versions,
                             LaunchTemplateName=name, Versions=[str(version)])
        except CloudError as exc:
            if "NotFound" in self.code_of(exc):
                return
            raise
        for failed in resp.get("UnsuccessfullyDeletedLaunchTemplateVersions", []):
            error = failed.get("ResponseError", {})
            if error.get("Code") != "launchTemplateVersionDoesNotExist":
                raise CloudError(f"launch template {name} version {version} not deleted: "
                                 f"{error.get('Message', error.get('Code', 'unknown error'))}")

    # ---- SSM ----------------------------------------------------------------------------

    def parameter_value(self, name: str) -> str | None:
        try:
            return self.call(f"ssm get-parameter {name}", self.ssm.get_parameter, Name=name)["Parameter"]["Value"]
        except CloudError as exc:
            if self.code_of(exc) == "ParameterNotFound":
                return None
            raise

    def restore_parameter(self, name: str, previous: str | None, ours: str) -> None:
        """Undo `publish_parameter`, only while the parameter still holds our value (a later
        publish by someone else wins): put the previous value back, or delete what we created."""
        if self.parameter_value(name) != ours:
            return
        if previous is None:
            self.call(f"ssm delete-parameter {name}", self.ssm.delete_parameter, Name=name)
        else:
            self.call(f"ssm put-parameter {name}", self.ssm.put_parameter, Name=name, Value=previous,
                      Type="String", DataType="aws:ec2:image", Overwrite=True)

    def publish_parameter(self, name: str, image_id: str) -> int:
        resp = self.call(f"ssm put-parameter {name}", self.ssm.put_parameter, Name=name, Value=image_id,
                         Type="String", DataType="aws:ec2:image", Overwrite=True)
        got = self.call(f"ssm get-parameter {name}", self.ssm.get_parameter, Name=name)["Parameter"]
        if got["Value"] != image_id:
            raise CloudError(f"ssm parameter {name} reads back {got['Value']!r}, expected {image_id}")
        return resp.get("Version", 0)


def _interrupted_is_not_retried(caught_exception=None, **_) -> None:
    """Ctrl-C or SIGTERM during a request raises Interrupted inside botocore's send, which wraps
    any exception there in a retryable HTTPClientError: the call would be sent again and the
    signal lost. Raise it instead of retrying."""
    cause = getattr(caught_exception, "kwargs", {}).get("error")
    if isinstance(cause, Interrupted):
        raise cause


def snapshots_of(image: dict) -> list[str]:
    """The EBS snapshots behind an image, from its DescribeImages record."""
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]


def _capacity_is_not_retried(response=None, operation=None, **_) -> None:
    """EC2 answers InsufficientInstanceCapacity with HTTP 500, which botocore's standard mode
    retries up to 8 times with backoff: the next instance type is the better answer. Raising
    here ends the call with the error before botocore sleeps."""
    parsed = response[1] if isinstance(response, tuple) and len(response) == 2 else None
    code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    if code in CAPACITY_CODES and operation is not None:
        raise botocore.exceptions.ClientError(parsed, operation.name)


def _is_deprecated(image: dict) -> bool:
    from datetime import datetime, timezone
    when = image.get("DeprecationTime")
    if not when:
        return False
    try:
        return datetime.fromisoformat(when.replace("Z", "+00:00")) <= datetime.now(timezone.utc)
    except ValueError:
        return False


def source_image(image: dict) -> SourceImage:
    return SourceImage(id=image["ImageId"], name=image.get("Name", ""),
                       root_device_name=image.get("RootDeviceName") or "/dev/xvda",
                       owner=image.get("OwnerId", ""))


def caller_cidr(settings: Settings, timeout: float = 5.0) -> str:
    """The caller's own address as a /32, for the builder's temporary security group.

    With a custom endpoint (moto, LocalStack, the local cloud) that is the address this
    machine uses to reach the endpoint; on AWS it is our public address as AWS sees it.
    """
    if settings.endpoint_url:
        host = urllib.parse.urlsplit(settings.endpoint_url).hostname or "127.0.0.1"
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
