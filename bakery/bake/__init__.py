"""The bake: a recipe becomes an image, and nothing else is left behind.

Like Packer's builder, the bake is an ordered list of stages; each stage that creates
something registers its undo on an ExitStack right away, so undo runs in reverse on
success, failure, exception, Ctrl-C and SIGTERM, and only for what was created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from bakery.errors import BakeryError, CloudError, ConfigError, Interrupted, RemoteError, StepFailed
from bakery.bake.hygiene import HYGIENE, LEFTOVER_CHECK, findings
from bakery.progress import Reporter
from bakery.config.recipe import Recipe, Step, inputs_hash, load_recipe, render_step, template_context
from bakery.config.settings import Settings
from bakery.signals import shielded

CLOUD_INIT_WAIT = """\
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init status --wait >/dev/null; rc=$?
  # 2 = done with recoverable errors: the builder is usable, the recipe decides.
  [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || { cloud-init status --long; exit "$rc"; }
fi
"""

TEMP_TTL = timedelta(hours=6)


@dataclass
class StepRecord:
    name: str
    kind: str
    status: str  # ok | failed | continued
    exit_status: int | None
    attempts: int
    seconds: float


@dataclass
class Manifest:
    recipe: str
    build_id: str
    region: str
    ami_id: str | None
    image_name: str | None
    source_ami: str
    inputs_hash: str
    skipped: bool
    reason: str
    started_at: str
    seconds: float
    variables: dict[str, str]
    steps: list[StepRecord] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    ssm_parameter: str | None = None
    published: dict | None = None
    manifest_path: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _prefetch(module: str) -> None:
    """Import on a thread while this one waits on EC2: paramiko and cryptography take ~0.15 s
    of CPU to import, which then hides behind the builder's launch instead of following it."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=(module,), name=f"import {module}", daemon=True).start()


def new_build_id() -> str:
    return datetime.now(timezone.utc).strftime("b-%Y%m%d%H%M%S-") + secrets.token_hex(3)


class CleanupStack(contextlib.ExitStack):
    """ExitStack whose undo actions are shielded from signals and never mask the cause.

    Cloud resources go through `created()`: journalled in the run's ledger before anything
    waits on them, so a crash Python cannot see still leaves a record for the janitor.
    """

    def __init__(self, report: Reporter | None = None, ledger=None):  # pop_all() builds one without arguments
        super().__init__()
        self.report = report
        self.ledger = ledger
        self.failures: list[str] = []
        self._kept: set[tuple] = set()

    def created(self, kind: str, rid: str, region: str | None, label: str, fn: Callable[[], None],
                **extra) -> None:
        """Journal a new resource and register its undo (skipped once `keep()` says it is a product)."""
        key = (kind, rid, region)
        if self.ledger is not None:
            self.ledger.created(kind, rid, region, **extra)

        def undo():
            if key in self._kept:
                return
            fn()
            if self.ledger is not None:
                self.ledger.removed(kind, rid, region)
        self.undo(label, undo)

    def keep(self, kind: str, rid: str, region: str | None) -> None:
        self._kept.add((kind, rid, region))
        if self.ledger is not None:
            self.ledger.kept(kind, rid, region)

    def keep_all(self) -> None:
        """--keep-on-error: everything outstanding stays for inspection (its tags still expire)."""
        if self.ledger is not None:
            for e in self.ledger.outstanding():
                self.keep(e.kind, e.id, e.region)

    def undo(self, label: str, fn: Callable[[], None]) -> None:
        def run():
            with shielded():
                try:
                    with self.report.stage(f"clean up: {label}"):
                        fn()
                except BakeryError as exc:
                    self.failures.append(f"{label}: {exc.message}")
                    self.report.warn(f"clean-up of {label} failed: {exc.message}")
                except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                    self.failures.append(f"{label}: {exc}")
                    self.report.warn(f"clean-up of {label} failed: {type(exc).__name__}: {exc}")
        self.callback(run)


class Bake:
    """One run of one recipe. `run()` returns the Manifest or raises a BakeryError."""

    def __init__(self, settings: Settings, recipe: Recipe, variables: dict[str, str], *,
                 report: Reporter, force: bool = False, keep_on_error: bool = False, ec2=None):
        from bakery.cloud.ec2 import EC2

        self.settings = settings
        self.recipe = recipe
        self.variables = recipe.resolve_vars(variables)
        self.report = report
        self.force = force
        self.keep_on_error = keep_on_error
        self.ec2 = ec2 or EC2(settings)
        self.build_id = new_build_id()
        self.context = template_context(recipe, self.variables, self.build_id,
                                        datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"))
        self.started = time.monotonic()
        self.manifest: Manifest | None = None

    # ---- tags ---------------------------------------------------------------------------

    def tags(self, role: str, temporary: bool) -> dict[str, str]:
        tags = {"bakery:recipe": self.recipe.name, "bakery:build-id": self.build_id, "bakery:role": role}
        if os.environ.get("BAKERY_RUN_ID"):  # a CI run's clean-up job finds its own builds by this
            tags["bakery:run-id"] = os.environ["BAKERY_RUN_ID"]
        if temporary:
            tags["bakery:expires"] = (datetime.now(timezone.utc) + TEMP_TTL).strftime("%Y-%m-%dT%H:%M:%SZ")
            tags["Name"] = f"bakery-{role}-{self.recipe.name}-{self.build_id}"
        return tags

    # ---- the bake -----------------------------------------------------------------------

    def run(self) -> Manifest:
        r = self.report
        started_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with r.stage("resolve source image") as s:
            try:
                source = self.ec2.resolve_source(self.recipe.source)
            except ConfigError as exc:
                raise ConfigError(f"{self.recipe.path}: {exc.message}") from None
            s.detail = f"{source.id} ({source.name})"
        with r.stage("hash inputs") as s:
            from bakery.bake.digests import DigestCache

            digest = inputs_hash(self.recipe, self.variables, source.id,
                                 DigestCache(self.settings.state / "digests.json"))
            s.detail = digest
        manifest = Manifest(recipe=self.recipe.name, build_id=self.build_id, region=self.ec2.region, ami_id=None,
                            image_name=None, source_ami=source.id, inputs_hash=digest, skipped=False, reason="",
                            started_at=started_at, seconds=0.0, variables=self.variables)
        self.manifest = manifest
        if not self.force and self._skip(manifest, digest):
            return manifest
        # Two bakes of one recipe on this machine: the second waits, then finds the first's image.
        lock = self._lock()
        if not self.force and self._skip(manifest, digest):
            lock.close()
            return manifest
        manifest.reason = "forced" if self.force else "no image with these inputs"
        _prefetch("bakery.remote.ssh")
        from bakery.housekeeping.ledger import Ledger

        try:
            with lock, Ledger(self.settings.state / "ledger", self.build_id, f"bake {self.recipe.name}") as ledger, \
                    CleanupStack(r, ledger) as stack:
                try:
                    self._bake(stack, source, digest, manifest)
                except BaseException:
                    if self.keep_on_error:
                        self._keep(stack)
                    raise
        except BaseException:
            if not self.keep_on_error:
                self._sweep()
            raise
        manifest.stages = r.timings()
        manifest.seconds = round(time.monotonic() - self.started, 3)
        self._write_manifest(manifest)
        return manifest

    def _skip(self, manifest: Manifest, digest: str) -> bool:
        existing = self.ec2.bakery_images(recipe=self.recipe.name, inputs_hash=digest)
        if not existing:
            return False
        image = existing[0]
        manifest.skipped, manifest.ami_id, manifest.image_name = True, image["ImageId"], image.get("Name")
        manifest.reason = f"inputs unchanged: {image['ImageId']} already has inputs hash {digest}"
        manifest.seconds = round(time.monotonic() - self.started, 3)
        return True

    def _lock(self):
        from bakery.housekeeping.locks import exclusive

        return exclusive(self.settings.state / "locks", f"bake-{self.ec2.region}-{self.recipe.name}",
                         lambda: self.report.info(f"another bake of {self.recipe.name} is running here; waiting"))

    def _bake(self, stack: CleanupStack, source, digest: str, manifest: Manifest) -> None:
        from bakery.remote import keys

        r, ec2, recipe = self.report, self.ec2, self.recipe
        region = ec2.region
        b = recipe.builder
        self.resources: dict[str, str] = {}

        with r.stage("create temporary key pair") as s:
            login = keys.generate(f"bakery-{self.build_id}")
            key_dir = self.settings.state / "keys" / self.build_id
            stack.created("key-file", str(key_dir), None, "private key file",
                          lambda: shutil.rmtree(key_dir, ignore_errors=True))
            self.key_file = login.write_private(key_dir, "id_ed25519")
            key_name = f"bakery-{recipe.name}-{self.build_id}"
            ec2.import_key_pair(key_name, login.public_openssh, self.tags("key-pair", True))
            self.resources["key_pair"] = key_name
            stack.created("key-pair", key_name, region, f"key pair {key_name}", lambda: ec2.delete_key_pair(key_name))
            s.detail = key_name

        with r.stage("create temporary security group") as s:
            subnet = ec2.subnet(b.subnet)
            from bakery.cloud.ec2 import caller_cidr
            cidr = b.ssh.allowed_cidr or caller_cidr(ec2.settings)
            group = ec2.create_security_group(f"bakery-{recipe.name}-{self.build_id}", subnet["VpcId"],
                                              self.tags("security-group", True))
            self.resources["security_group"] = group
            stack.created("security-group", group, region, f"security group {group}",
                          lambda: ec2.delete_security_group(group))
            ec2.allow_ssh(group, cidr)
            s.detail = f"{group}: tcp/22 from {cidr} only"

        host_key = keys.generate(f"bakery-host-{self.build_id}")
        with r.stage("launch builder") as s:
            instance = self._launch(source, subnet, group, key_name, host_key)
            iid = instance["InstanceId"]
            self.resources["instance"] = iid
            stack.created("instance", iid, region, f"builder {iid}", lambda: self._terminate(iid))
            s.detail = f"{iid} ({instance['InstanceType']})"

        with r.stage("wait for builder to run") as s:
            instance = ec2.wait_instance_state(iid, "running", timeout=600)

        connector = self._connector(instance, login, host_key)
        with r.stage("wait for SSH") as s:
            connector.connect(timeout=b.ssh.timeout)
            stack.callback(connector.close)
            s.detail = f"{connector.target.label}, host key {host_key.fingerprint()} verified"

        with r.stage("wait for cloud-init") as s:
            res = connector.run(CLOUD_INIT_WAIT, env={}, timeout=900, sudo=False,
                                on_output=lambda line: r.output("cloud-init", line))
            if res.exit_status != 0:
                raise RemoteError(f"{connector.target.label}: cloud-init did not finish cleanly "
                                  f"(exit {res.exit_status})")

        for index, step in enumerate(recipe.steps):
            step = render_step(recipe, step, index, self.context)
            manifest.steps.append(self._run_step(connector, index, step))

        with r.stage("clean image (hygiene)"):
            res = connector.run(HYGIENE, env={}, timeout=300, sudo=True, on_output=lambda l: r.output("hygiene", l))
            if res.exit_status != 0:
                raise RemoteError(f"{connector.target.label}: hygiene before the snapshot failed "
                                  f"(exit {res.exit_status})")
        with r.stage("check image for leftovers") as s:
            lines: list[str] = []
            res = connector.run(LEFTOVER_CHECK, env={}, timeout=300, sudo=True, on_output=lines.append)
            leaks = findings(lines)
            if leaks:
                more = f" and {len(leaks) - 3} more" if len(leaks) > 3 else ""
                raise StepFailed(f"{recipe.path}: refusing to snapshot: the image would carry "
                                 f"{', '.join(leaks[:3])}{more}; remove it in a step")
            if res.exit_status != 0:
                raise RemoteError(f"{connector.target.label}: leftover check failed (exit {res.exit_status})")
            s.detail = "none"
        connector.close()

        with r.stage("stop builder"):
            ec2.stop_instance(iid)
            ec2.wait_instance_state(iid, "stopped", timeout=900)

        from bakery.config.templating import image_name
        name = image_name(recipe.image.name, self.context, f"{recipe.path}: image.name")
        image_tags = {**recipe.image.tags, "Name": name, **self.tags("image", False),
                      "bakery:inputs-hash": digest, "bakery:source-ami": source.id}
        with r.stage("create image") as s:
            image_id = ec2.create_image(iid, name, recipe.image.description or recipe.description, image_tags)
            self.resources["image"] = image_id
            s.detail = f"{image_id} {name}"
            stack.created("image", image_id, region, f"unfinished image {image_id}",
                          lambda: ec2.deregister_image(image_id))
        # what becomes part of the product once the image is finished (until then: undone on failure)
        products = [("image", image_id, region)]

        def made(kind: str, rid: str, where: str | None, label: str, fn, **extra) -> None:
            products.append((kind, rid, where))
            stack.created(kind, rid, where, label, fn, **extra)

        with r.stage("wait for image"):
            from bakery.cloud.ec2 import snapshots_of

            image = ec2.wait_image_available(image_id, timeout=3600)
            # CreateImage cannot tag snapshots everywhere (moto, older APIs): tag them explicitly.
            ec2.tag(snapshots_of(image), {**image_tags, "bakery:role": "snapshot"})
        manifest.ami_id, manifest.image_name = image_id, name

        if recipe.checks:
            try:
                self._smoke(stack, image, subnet, group, key_name, login, cidr)
            except Interrupted:
                raise  # not a verdict on the image
            except BakeryError as exc:
                # Keep the image for inspection, marked so nothing ever uses or publishes it.
                ec2.tag([image_id], {"bakery:smoke": "failed"})
                stack.keep("image", image_id, region)
                raise StepFailed(f"{recipe.path}: smoke test of {image_id} failed, not published: {exc.message}") from None
            ec2.tag([image_id], {"bakery:smoke": "passed"})

        if recipe.image.ssm_parameter:
            with r.stage("publish SSM parameter") as s:
                param = recipe.image.ssm_parameter
                previous = ec2.parameter_value(param)
                # journalled before the put: restoring is a no-op unless the parameter holds this image
                made("ssm-parameter", param, region, f"SSM parameter {param}",
                     lambda: ec2.restore_parameter(param, previous, image_id), previous=previous, value=image_id)
                version = ec2.publish_parameter(param, image_id)
                manifest.ssm_parameter = recipe.image.ssm_parameter
                s.detail = f"{recipe.image.ssm_parameter} = {image_id} (version {version})"
        if recipe.publish:
            from bakery.bake.publish import publish

            published = publish(ec2, recipe.publish, image_id, name, image_tags, report=r, created=made)
            manifest.published = dataclasses.asdict(published)
        # Only now is the image a finished product: skips and lifecycle commands look for this tag.
        ec2.tag([image_id], {"bakery:complete": "true"})
        for product in products:
            stack.keep(*product)

    # ---- pieces -------------------------------------------------------------------------

    def _launch(self, source, subnet: dict, group: str, key_name: str, host_key, *, role: str = "builder",
                user_data: str | None = None) -> dict:
        """Try each instance type in order; capacity errors move on to the next one."""
        from bakery.cloud.ec2 import CapacityError, tag_list
        from bakery.render.builder import builder_user_data

        b = self.recipe.builder
        volume = {"VolumeSize": b.root_volume.size_gb, "VolumeType": b.root_volume.type,
                  "Encrypted": b.root_volume.encrypted, "DeleteOnTermination": True}
        if b.root_volume.kms_key_id:
            volume["KmsKeyId"] = b.root_volume.kms_key_id
        params = {
            "ImageId": source.id, "KeyName": key_name,
            "UserData": user_data or builder_user_data(host_key),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            "BlockDeviceMappings": [{"DeviceName": b.root_volume.device_name or source.root_device_name, "Ebs": volume}],
            "NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": subnet["SubnetId"], "Groups": [group],
                                   "AssociatePublicIpAddress": b.ssh.interface == "public_ip",
                                   "DeleteOnTermination": True}],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list(self.tags(role, True))}
                                  for kind in ("instance", "volume", "network-interface")],
        }
        if b.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": b.iam_instance_profile}
        errors = []
        for itype in b.instance_types:
            # The same token for a retried call of the same attempt: EC2 launches at most once.
            token = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bakery/{self.build_id}/{role}/{itype}"))
            try:
                return self.ec2.run_instance(InstanceType=itype, ClientToken=token, **params)
            except CapacityError as exc:
                errors.append(exc.message)
                self.report.warn(f"{exc.message}; trying the next instance type")
        raise CloudError(f"no capacity for any of {', '.join(b.instance_types)}: {errors[-1]}")

    def _smoke(self, stack: CleanupStack, image: dict, subnet: dict, group: str, key_name: str, login,
               cidr: str) -> None:
        """Boot the new image once, as a user would, and run the recipe's checks against it."""
        from bakery.cloud.ec2 import source_image
        from bakery.remote import keys

        r, ec2, checks = self.report, self.ec2, self.recipe.checks
        image_id = image["ImageId"]
        host_key = keys.generate(f"bakery-smoke-{self.build_id}")
        with r.stage("smoke test: launch") as s:
            user_data = self._smoke_user_data(host_key, image_id)
            if checks.health_check and not self.ec2.local:  # the temporary group admits only SSH so far
                ec2.call("authorize-security-group-ingress", ec2.client.authorize_security_group_ingress,
                         GroupId=group, IpPermissions=[{"IpProtocol": "tcp", "FromPort": checks.health_check.port,
                                                        "ToPort": checks.health_check.port,
                                                        "IpRanges": [{"CidrIp": cidr}]}])
            instance = self._launch(source_image(image), subnet, group, key_name, host_key, role="smoke", user_data=user_data)
            iid = instance["InstanceId"]
            stack.created("instance", iid, self.ec2.region, f"smoke instance {iid}", lambda: self._terminate(iid))
            started = time.monotonic()
            instance = ec2.wait_instance_state(iid, "running", timeout=checks.timeout)
            s.detail = iid
        connector = self._connector(instance, login, host_key)
        with r.stage("smoke test: SSH"):
            connector.connect(timeout=checks.timeout)
        try:
            res = connector.run(CLOUD_INIT_WAIT, env={}, timeout=checks.timeout, sudo=False,
                                on_output=lambda line: r.output("smoke cloud-init", line))
            if res.exit_status != 0:
                raise RemoteError(f"cloud-init did not finish cleanly on {iid} (exit {res.exit_status})")
            for check in checks.commands:
                with r.stage(f"smoke check: {check.name}"):
                    res = connector.run(check.shell, env={}, timeout=check.timeout, sudo=True,
                                        on_output=lambda line, n=check.name: r.output(f"check {n}", line))
                    if res.exit_status != 0:
                        why = "timed out" if res.timed_out else f"exited with status {res.exit_status}"
                        raise RemoteError(f"check {check.name!r} {why}")
        finally:
            connector.close()
        if checks.health_check:
            from bakery.config.environment import HealthCheck
            from bakery.remote.health import check_until

            hc = checks.health_check
            with r.stage(f"smoke check: HTTP :{hc.port}{hc.path}"):
                address = instance.get("PublicIpAddress") if self.recipe.builder.ssh.interface == "public_ip" \
                    else instance.get("PrivateIpAddress")
                check_until(ec2, iid, self.settings.ssh_host or address,
                            HealthCheck(type="http", port=hc.port, path=hc.path, expect_status=hc.expect_status),
                            deadline=started + checks.timeout)
        with r.stage("smoke test: terminate"):
            self._terminate(iid)

    def _smoke_user_data(self, host_key, image_id: str) -> str:
        """The pinned host key, plus the named environment's user data for its tier when declared."""
        import email.message
        from email.mime.multipart import MIMEMultipart
        from email.mime.text import MIMEText

        from bakery.render.builder import builder_user_data

        checks = self.recipe.checks
        host_part = builder_user_data(host_key)
        if checks.environment is None:
            return host_part
        from bakery.config.environment import load_environment
        from bakery.launch import render_tier

        env = load_environment(self.settings.envs, checks.environment)
        env.select(checks.tier)
        rendered = render_tier(self.settings, env, checks.tier, image_id, self.ec2.region)
        doc = MIMEMultipart("mixed")
        part = MIMEText(host_part, "cloud-config")
        part.add_header("Content-Disposition", "attachment", filename="00-bakery-hostkey.yaml")
        part["Merge-Type"] = "list(append)+dict(no_replace,recurse_list)+str()"
        doc.attach(part)
        if rendered is not None:
            inner = email.message_from_string(rendered.text)
            if not inner.is_multipart():
                ctype = "cloud-config" if rendered.text.startswith("#cloud-config") else "x-shellscript"
                inner = MIMEText(rendered.text, ctype)
                inner.add_header("Content-Disposition", "attachment", filename=f"01-{checks.tier}")
                if ctype == "cloud-config":
                    inner["Merge-Type"] = "list(append)+dict(no_replace,recurse_list)+str()"
            doc.attach(inner)
        return doc.as_string()

    def _connector(self, instance: dict, login, host_key):
        from bakery.remote.ssh import Bastion, SSHConnector, Target

        ssh = self.recipe.builder.ssh
        host, port, factory = ssh.host, ssh.port, None
        if ssh.interface == "public_ip":
            host = instance.get("PublicIpAddress")
        elif ssh.interface == "private_ip":
            host = instance.get("PrivateIpAddress")
        if self.settings.ssh_host:
            host = self.settings.ssh_host
        if self.settings.ssh_port:
            port = self.settings.ssh_port
        if self.ec2.local:  # sandboxes have no routed address: connect inside their netns
            factory = self.ec2.local.socket_factory(instance)
        if not host and factory is None:
            raise RemoteError(f"builder {instance['InstanceId']} has no {ssh.interface.replace('_', ' ')} "
                              "(use interface: private_ip, or a subnet that maps public IPs)")
        bastion = Bastion(ssh.bastion.host, ssh.bastion.port, ssh.bastion.user, ssh.bastion.key_file) if ssh.bastion else None
        label = f"builder {instance['InstanceId']} ({host}:{port})" if factory is None else f"builder {instance['InstanceId']}"
        return SSHConnector(Target(host=host or "sandbox", port=port, user=ssh.user, login_key=login.paramiko_key(),
                                   host_key=host_key.public_openssh, label=label, sock_factory=factory,
                                   proxy_command=ssh.proxy_command, bastion=bastion))

    def _run_step(self, connector, index: int, step: Step) -> StepRecord:
        from bakery.remote.ssh import ConnectionLost

        r = self.report
        label = f"step {index + 1}/{len(self.recipe.steps)}: {step.name}"
        attempts, start = 0, time.monotonic()
        status = None
        with r.stage(label) as s:
            while True:
                attempts += 1
                if step.kind == "upload":
                    up = step.upload
                    try:
                        connector.put(self.recipe.local_path(up.source), up.dest, mode=up.mode, owner=up.owner,
                                      sudo=step.sudo)
                        status, timed_out = 0, False
                    except ConnectionLost:
                        raise
                    except RemoteError as exc:  # the upload itself failed (disk full, bad owner): a step failure
                        r.output(step.name, exc.message)
                        status, timed_out = 1, False
                else:
                    script = step.shell if step.shell is not None else self.recipe.local_path(step.script).read_text()
                    res = connector.run(script, env=step.env, timeout=step.timeout, sudo=step.sudo,
                                        on_output=lambda line: r.output(step.name, line))
                    status, timed_out = res.exit_status, res.timed_out
                if status == 0:
                    s.detail = f"ok{f' after {attempts} attempts' if attempts > 1 else ''}"
                    return StepRecord(step.name, step.kind, "ok", 0, attempts, round(time.monotonic() - start, 3))
                why = f"timed out after {step.timeout:g}s" if timed_out else f"exited with status {status}"
                if attempts <= step.retries:
                    r.warn(f"{label} {why}; retrying ({attempts}/{step.retries})")
                    time.sleep(min(2.0 * attempts, 10))
                    continue
                if step.on_failure == "continue":
                    s.detail = f"{why}; continuing (on_failure: continue)"
                    return StepRecord(step.name, step.kind, "continued", status, attempts,
                                      round(time.monotonic() - start, 3))
                raise StepFailed(f"{self.recipe.path}: {label} {why}"
                                 f"{f' after {attempts} attempts' if attempts > 1 else ''}")

    def _sweep(self) -> None:
        """After a failure, what carries this build's tags but never reached the clean-up stack:
        the endpoint made it and its answer was lost (a signal while the create call was in flight)."""
        from bakery.housekeeping.cleanup import clean_build

        with shielded():
            try:
                found = clean_build(self.ec2, self.build_id).removed
            except Exception as exc:  # noqa: BLE001 - never mask the failure on its way out
                self.report.warn(f"clean-up sweep of build {self.build_id} failed: {getattr(exc, 'message', exc)}")
                return
        if found:
            self.report.warn(f"removed what the endpoint made without answering: {', '.join(found)}")

    def _terminate(self, instance_id: str) -> None:
        self.ec2.terminate_instance(instance_id)
        self.ec2.wait_instance_state(instance_id, "terminated", timeout=600)

    def _keep(self, stack: CleanupStack) -> None:
        """--keep-on-error: leave the builder for debugging and say how to reach and remove it."""
        stack.keep_all()
        stack.pop_all()
        res = getattr(self, "resources", {})
        iid = res.get("instance")
        lines = [f"--keep-on-error: kept build {self.build_id}: " +
                 ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in res.items())]
        if iid and getattr(self, "key_file", None):
            lines.append(f"  reach it:  ssh -i {self.key_file} {self.recipe.builder.ssh.user}@<builder address>")
        lines.append(f"  remove it: invoke clean --build-id {self.build_id}")
        for line in lines:
            self.report.warn(line)

    def _write_manifest(self, manifest: Manifest) -> None:
        directory = self.settings.state / "manifests"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{manifest.recipe}-{manifest.build_id}.json"
        manifest.manifest_path = str(path)
        path.write_text(manifest.to_json() + "\n")


def bake(settings: Settings, recipe_name: str, variables: dict[str, str], *, report: Reporter,
         force: bool = False, keep_on_error: bool = False) -> Manifest:
    recipe = load_recipe(settings.recipes, recipe_name)
    return Bake(settings, recipe, variables, report=report, force=force, keep_on_error=keep_on_error).run()
