"""The bake's steps on the builder: from a key pair to a finished image.

Each step reads what earlier steps wrote into the BakeState, does one thing, and registers the
undo of anything it creates on `ctx.stack` before it waits on it. Steps that create cloud
resources journal them (kind, id, region) so the janitor can find them after a crash.
"""

from __future__ import annotations

import shutil
import threading
import time

from bakery.bake.hygiene import HYGIENE, LEFTOVER_CHECK, findings
from bakery.bake.state import BakeState, Context, StepRecord
from bakery.cloud import tags as T
from bakery.cloud.access import caller_cidr
from bakery.cloud.images import snapshots_of
from bakery.cloud.instances import INSTANCE_TIMEOUT, InstanceSpec, Nic, Volume
from bakery.config.recipe import render_step
from bakery.errors import RemoteError, StepFailed
from bakery.remote.shell import KNOWN_HOSTS, builder_alias, write_known_hosts
from bakery.signals import quiet_spawn
from bakery.waits import Backoff, wait_for

# Waits for cloud-init inside the builder (or smoke instance): its modules may still be writing
# files the recipe's steps depend on. 2 = done with recoverable errors: usable, the recipe decides.
CLOUD_INIT_WAIT = """\
if command -v cloud-init >/dev/null 2>&1; then
  cloud-init status --wait >/dev/null; rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || { cloud-init status --long; exit "$rc"; }
fi
"""
CLOUD_INIT_TIMEOUT = 900
SBOM_TIMEOUT = 300  # a walk of the whole root file system and a digest of every uploaded file


def prefetch(module: str) -> None:
    """Import on a thread while this one waits on EC2: paramiko and cryptography take ~0.15 s
    of CPU to import, which then hides behind the builder's launch instead of following it."""
    import importlib

    with quiet_spawn():  # a signal meant for the bake must reach the main thread, not this one
        threading.Thread(target=importlib.import_module, args=(module,), name=f"import {module}", daemon=True).start()


def builder_spec(state: BakeState, role: str, image_id: str, root_device: str, user_data: str) -> InstanceSpec:
    """The builder (role 'builder') or the smoke instance (role 'smoke'): the recipe's builder settings."""
    b = state.recipe.builder
    return InstanceSpec(
        image_id=image_id, instance_types=tuple(b.instance_types),
        nics=(Nic(0, state.subnet["SubnetId"], (state.group_id,), public_ip=b.ssh.interface == "public_ip"),),
        volume=Volume.of(b.root_volume, root_device),
        tags=T.build_tags(state.recipe.name, state.build_id, role, temporary=True),
        # a builder after a checkpoint is another request than the first builder of the build
        token=f"{state.build_id}/{role}" + (f"/{image_id}" if image_id != state.source.id else ""), user_data=user_data, key_name=state.key_name,
        instance_profile=b.iam_instance_profile, imds_hop_limit=1, terminate_on_shutdown=True, market=b.market)


def launch(state: BakeState, ctx: Context, spec: InstanceSpec, what: str) -> dict:
    """Start the instance and register its termination (waited for) before anything waits on it."""
    ec2 = ctx.ec2
    instance = ec2.launch(spec, on_capacity=ctx.report.warn)
    iid = instance["InstanceId"]
    ctx.stack.created("instance", iid, ec2.region, f"{what} {iid}", lambda: ec2.terminate_and_wait(iid))
    return instance


def ssh_to(state: BakeState, ctx: Context, instance: dict, host_key, what: str):
    """An SSH connector to the instance through the dial, pinned to the host key we gave it."""
    from bakery.remote.dial import Bastion, Machine, Route
    from bakery.remote.ssh import SSHConnector, Target

    from bakery.config.settings import user_path

    ssh, b = state.recipe.builder.ssh, state.recipe.builder.ssh.bastion
    bastion = b and Bastion(b.host, b.port, b.user, b.key_file and str(user_path(b.key_file, ctx.settings.project_dir)))
    route = Route(address=ssh.interface, host=ssh.host, proxy_command=ssh.proxy_command, bastion=bastion,
                  user=ssh.user, builder=True)
    opener = ctx.dial(Machine.of(instance), ssh.port, route, ssh=True)
    label = f"{what} {instance['InstanceId']}" + (f" ({opener.where})" if opener.where else "")
    return SSHConnector(Target(opener=opener, user=ssh.user, login_key=state.login.paramiko_key(),
                               host_key=host_key.public_openssh, label=label))


def wait_for_cloud_init(connector, ctx: Context, timeout: float, source: str) -> None:
    from bakery.progress import waiting

    with waiting(f"cloud-init on {connector.target.label} to finish"):  # the machine's time, not bakery's
        res = connector.run(CLOUD_INIT_WAIT, env={}, timeout=timeout, sudo=False,
                            on_output=lambda line: ctx.report.output(source, line))
    if res.exit_status != 0:
        raise RemoteError(f"{connector.target.label}: cloud-init did not finish cleanly (exit {res.exit_status})")


class CreateKeyPair:
    """A login key generated here (the private half never travels), imported as an EC2 key pair."""

    title = "create temporary key pair"

    def run(self, state: BakeState, ctx: Context) -> str:
        from bakery.housekeeping import cleanup
        from bakery.remote import keys

        state.login = keys.generate(f"bakery-{state.build_id}")
        key_dir = cleanup.key_dir(ctx.settings.state / "keys", state.build_id)
        ctx.stack.created("key-file", str(key_dir), None, "private key file",
                          lambda: shutil.rmtree(key_dir, ignore_errors=True))
        state.key_file = state.login.write_private(key_dir, "id_ed25519")
        name = f"bakery-{state.recipe.name}-{state.build_id}"
        ctx.ec2.import_key_pair(name, state.login.public_openssh,
                                T.build_tags(state.recipe.name, state.build_id, "key-pair", temporary=True))
        state.key_name = name
        ctx.stack.created("key-pair", name, ctx.ec2.region, f"key pair {name}", lambda: ctx.ec2.delete_key_pair(name))
        return name


class CreateSecurityGroup:
    """A group that admits SSH from the caller's own address only."""

    title = "create temporary security group"

    def run(self, state: BakeState, ctx: Context) -> str:
        ec2, b = ctx.ec2, state.recipe.builder
        state.subnet = ec2.subnet(b.subnet) if b.subnet else ec2.default_subnet("builder.subnet")
        state.caller_cidr = b.ssh.allowed_cidr or caller_cidr(ec2.settings.endpoint_url)
        group = ec2.create_security_group(f"bakery-{state.recipe.name}-{state.build_id}", state.subnet["VpcId"],
                                          T.build_tags(state.recipe.name, state.build_id, "security-group",
                                                       temporary=True))
        state.group_id = group
        ctx.stack.created("security-group", group, ec2.region, f"security group {group}",
                          lambda: ec2.delete_security_group(group))
        ec2.allow_tcp(group, 22, state.caller_cidr)
        return f"{group}: tcp/22 from {state.caller_cidr} only"


class LaunchBuilder:
    """The builder, from the source image, with a host key pinned through its user data (or, with
    `builder.host_key: console`, no user data: ReadHostKey pins the key it makes)."""

    title = "launch builder"

    def run(self, state: BakeState, ctx: Context) -> str:
        from bakery.remote import keys
        from bakery.render.builder import builder_user_data

        prefetch("bakery.remote.ssh")  # imported while EC2 starts the builder
        prefetch("bakery.evidence.sbom")  # the CycloneDX library and its schema checker, the same way
        user_data = None
        state.builder_host_key = None  # console: ReadHostKey reads the key this builder makes
        if state.recipe.builder.host_key == "injected":
            state.builder_host_key = keys.generate(f"bakery-host-{state.build_id}")
            remember_host_key(state, ctx)
            user_data = builder_user_data(state.builder_host_key)
        image = state.launch_from or state.source
        spec = builder_spec(state, "builder", image.id, image.root_device_name, user_data)
        state.builder = launch(state, ctx, spec, "builder")
        market = "spot" if state.builder.get("InstanceLifecycle") == "spot" else "on-demand"
        state.manifest.builder = {"instance_type": state.builder["InstanceType"], "market": market}
        return (f"{state.builder['InstanceId']} ({state.builder['InstanceType']}{', spot' if market == 'spot' else ''})"
                + (f" from checkpoint {image.id}" if state.launch_from else ""))


def remember_host_key(state: BakeState, ctx: Context) -> None:
    """`invoke ssh` to a kept builder pins the same key (removed with the build's private key)."""
    write_known_hosts(ctx.settings.state / "keys" / state.build_id / KNOWN_HOSTS, builder_alias(state.build_id),
                      [state.builder_host_key.public_openssh])


def console_host_key(ctx: Context, instance_id: str, timeout: float):
    """The ed25519 host key the instance's cloud-init made and printed on its console (it prints
    them at the end of its first boot, after sshd has started: a connection never precedes it)."""
    from bakery.cloud.console import host_keys
    from bakery.remote.keys import HostKey

    def ed25519() -> str | None:
        return next((k for k in host_keys(ctx.ec2.console_output(instance_id)) if k.startswith("ssh-ed25519 ")), None)

    return HostKey(wait_for(ed25519, what=f"{instance_id}'s SSH host keys on its console", timeout=timeout,
                            backoff=Backoff(initial=0.5, factor=1.5, max_interval=2.0),
                            hint=lambda: "cloud-init prints them as its first boot ends (GetConsoleOutput)"))


class ReadHostKey:
    """`builder.host_key: console`: pin the key the builder made, from its console output."""

    title = "read host key from console"

    def run(self, state: BakeState, ctx: Context) -> str:
        state.builder_host_key = console_host_key(ctx, state.builder["InstanceId"], state.recipe.builder.ssh.timeout)
        remember_host_key(state, ctx)
        return state.builder_host_key.fingerprint()


class WaitForBuilder:
    title = "wait for builder to run"

    def run(self, state: BakeState, ctx: Context) -> None:
        state.builder = ctx.ec2.wait_instance_state(state.builder["InstanceId"], "running", timeout=INSTANCE_TIMEOUT)


class ConnectSSH:
    """SSH through the dial; the server must present the host key we pinned."""

    title = "wait for SSH"

    def run(self, state: BakeState, ctx: Context) -> str:
        connector = ssh_to(state, ctx, state.builder, state.builder_host_key, "builder")
        connector.connect(timeout=state.recipe.builder.ssh.timeout)
        state.connector = connector
        ctx.stack.callback(connector.close)
        return f"{connector.target.label}, host key {state.builder_host_key.fingerprint()} verified"


class WaitForCloudInit:
    title = "wait for cloud-init"

    def run(self, state: BakeState, ctx: Context) -> None:
        wait_for_cloud_init(state.connector, ctx, CLOUD_INIT_TIMEOUT, "cloud-init")


class RunRecipeStep:
    """One of the recipe's steps, with its retries, timeout and failure policy."""

    title = None  # its stage line names the step and its position: "step 2/5: install nginx"

    def __init__(self, index: int):
        self.index = index

    def run(self, state: BakeState, ctx: Context) -> None:
        recipe = state.recipe
        step = render_step(recipe, recipe.steps[self.index], self.index, state.context)
        label = f"step {self.index + 1}/{len(recipe.steps)}: {step.name}"
        with ctx.report.stage(label, kind="step") as stage:
            record, why = self._attempts(state, ctx, step, label)
            stage.detail = (f"{why}; continuing (on_failure: continue)" if record.status == "continued"
                            else f"ok{f' after {record.attempts} attempts' if record.attempts > 1 else ''}")
        state.manifest.steps.append(record)

    def _attempts(self, state: BakeState, ctx: Context, step, label: str) -> tuple[StepRecord, str]:
        if step.kind == "reboot":  # no retries or failure policy: it comes back in time, or the bake ends
            start = time.monotonic()
            reboot_builder(state, ctx, step.reboot.timeout)
            return StepRecord(step.name, step.kind, "ok", 0, 1, round(time.monotonic() - start, 3)), ""
        attempts, start = 0, time.monotonic()
        while True:
            attempts += 1
            status, timed_out = self._once(state, ctx, step)
            seconds = round(time.monotonic() - start, 3)
            if status == 0:
                return StepRecord(step.name, step.kind, "ok", 0, attempts, seconds), ""
            why = f"timed out after {step.timeout:g}s" if timed_out else f"exited with status {status}"
            if attempts <= step.retries:
                ctx.report.warn(f"{label} {why}; retrying ({attempts}/{step.retries})")
                time.sleep(min(2.0 * attempts, 10))
                continue
            if step.on_failure == "continue":
                return StepRecord(step.name, step.kind, "continued", status, attempts, seconds), why
            raise StepFailed(f"{state.recipe.path}: {label} {why}"
                             f"{f' after {attempts} attempts' if attempts > 1 else ''}")

    @staticmethod
    def _once(state: BakeState, ctx: Context, step) -> tuple[int, bool]:
        from bakery.remote.ssh import ConnectionLost

        recipe, connector = state.recipe, state.connector
        if step.kind == "download":
            where = downloads_dir(ctx.settings.manifests, recipe.name, state.build_id) / step.download.dest
            try:
                for path in connector.get(step.download.source, where, sudo=step.sudo, timeout=step.timeout):
                    state.manifest.downloads.append(str(path))
                    ctx.report.output(step.name, f"{step.download.source} -> {path}")
                return 0, False
            except ConnectionLost:
                raise
            except RemoteError as exc:  # not there, unreadable, refused as it landed: a step failure
                ctx.report.output(step.name, exc.message)
                return 1, False
        if step.kind == "upload":
            up = step.upload
            try:
                connector.put(recipe.local_path(up.source), up.dest, mode=up.mode, owner=up.owner, sudo=step.sudo,
                              dir_mode=up.dir_mode)
                return 0, False
            except ConnectionLost:
                raise
            except RemoteError as exc:  # the upload itself failed (disk full, bad owner): a step failure
                ctx.report.output(step.name, exc.message)
                return 1, False
        script = step.shell if step.shell is not None else recipe.local_path(step.script).read_text()
        started = time.monotonic()
        marker = mark_boot(state) if step.expect_disconnect else None
        try:
            res = connector.run(script, env=step.env, timeout=step.timeout, sudo=step.sudo,
                                on_output=lambda line: ctx.report.output(step.name, line))
        except ConnectionLost:
            if marker is None:
                raise
            ctx.report.output(step.name, RECONNECTING)
            reconnect(state, ctx, deadline=started + step.timeout, new_boot_of=marker, same_boot_ok=True)
            return 0, False
        if marker is not None and res.exit_status == 0:
            # `systemctl reboot` returns before the machine goes down: whether it did is seen by
            # connecting again (the next boot, or the same one once a connection to it holds)
            ctx.report.output(step.name, RECONNECTING)
            reconnect(state, ctx, deadline=started + step.timeout, new_boot_of=marker, same_boot_ok=True)
        return res.exit_status, res.timed_out


RECONNECTING = "the step may end the connection (expect_disconnect): connecting again"


def mark_boot(state: BakeState) -> str:
    """A file in /run (a tmpfs: a new boot starts without it) that tells this boot from the next."""
    marker = f"/run/bakery-boot-{state.build_id}"
    res = state.connector.run(f": > {marker}", env={}, timeout=30, sudo=True, on_output=lambda line: None)
    if res.exit_status != 0:
        raise RemoteError(f"{state.connector.target.label}: cannot mark the boot (exit {res.exit_status})")
    return marker


def downloads_dir(manifests, recipe: str, build_id: str):
    """Where a build's download steps land: beside its manifest, RECIPE-BUILD.files/."""
    return manifests / f"{recipe}-{build_id}.files"


def reboot_builder(state: BakeState, ctx: Context, timeout: float) -> None:
    """Reboot the builder through EC2 and wait, within `timeout`, for SSH from its next boot: a file
    left in /run (a tmpfs) marks this boot, so an sshd still up on the old one is not taken for it."""
    deadline = time.monotonic() + timeout
    marker = mark_boot(state)
    state.connector.close()
    ctx.ec2.reboot_instance(state.builder["InstanceId"])
    reconnect(state, ctx, deadline=deadline, new_boot_of=marker)


#: how long a connection to the same boot must last before a step that may drop it is taken to
#: have restarted sshd (or nothing) rather than begun a reboot: an sshd still up on a machine
#: that is shutting down accepts a connection and then dies with it; systemd stops sshd within
#: seconds of `systemctl reboot`
SETTLE_SECONDS = 10.0


def reconnect(state: BakeState, ctx: Context, *, deadline: float, new_boot_of: str,
              same_boot_ok: bool = False) -> None:
    """SSH to the builder again, pinned to the same host key, until `deadline`: to a boot where the
    marker `new_boot_of` is gone, or (`same_boot_ok`) to the same boot once a connection to it has
    lasted SETTLE_SECONDS. Then cloud-init's per-boot stages are waited for."""
    from bakery.errors import WaitTimeout
    from bakery.remote.ssh import ConnectionLost

    def gone() -> WaitTimeout:
        return WaitTimeout(f"{state.recipe.path}: builder {state.builder['InstanceId']} did not come back over SSH "
                           "within the step's deadline")

    state.connector.close()
    quiet = lambda line: None  # noqa: E731
    while True:
        if deadline - time.monotonic() <= 0:
            raise gone()
        connector = ssh_to(state, ctx, state.builder, state.builder_host_key, "builder")
        try:
            connector.connect(timeout=deadline - time.monotonic())
            new_boot = connector.run(f"test ! -e {new_boot_of}", env={}, timeout=30, sudo=False,
                                     on_output=quiet).exit_status == 0
            if not new_boot and same_boot_ok and deadline - time.monotonic() > SETTLE_SECONDS:
                time.sleep(SETTLE_SECONDS)
                new_boot = connector.run("true", env={}, timeout=30, sudo=False, on_output=quiet).exit_status == 0
            if new_boot:
                break
        except WaitTimeout:
            raise gone() from None
        except ConnectionLost:
            pass  # the old boot's sshd, going down with the machine
        connector.close()  # the old boot, still up: the reboot has not begun
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    state.connector = connector
    ctx.stack.callback(connector.close)
    wait_for_cloud_init(connector, ctx, max(1.0, min(CLOUD_INIT_TIMEOUT, deadline - time.monotonic())), "cloud-init")


class CollectSbom:
    """What the image contains, read from the builder before hygiene (bakery/evidence/sbom.py):
    every dpkg package, every Python distribution, every file the recipe's uploads brought with
    its digest, in one remote command. Written beside the manifest; its digest goes in the
    manifest and on the image as a tag. A bake that fails takes the file back, unless the image
    is kept for inspection (a failed smoke test): then the SBOM says what it holds."""

    title = "collect SBOM"

    def run(self, state: BakeState, ctx: Context) -> str:
        from bakery.evidence import sbom

        recipe, connector = state.recipe, state.connector
        uploads = [render_step(recipe, step, i, state.context).upload for i, step in enumerate(recipe.steps)
                   if step.upload is not None]
        files = sbom.uploaded_paths([(recipe.local_path(up.source), up.dest) for up in uploads])
        lines: list[str] = []
        res = connector.run(sbom.collection_script(files), env={}, timeout=SBOM_TIMEOUT, sudo=True,
                            on_output=lines.append)
        where = connector.target.label
        if res.exit_status != 0:
            why = f"timed out after {SBOM_TIMEOUT}s" if res.timed_out else f"exit {res.exit_status}"
            raise RemoteError(f"{where}: SBOM collection failed ({why}): {lines[-1] if lines else 'no output'}")
        found = sbom.parse_collection(lines, files, recipe=recipe.name, build_id=state.build_id,
                                      inputs_hash=state.manifest.inputs_hash, source_ami=state.source.id, where=where)
        for warning in found.warnings[:3]:
            ctx.report.warn(f"SBOM: {warning}")
        path = sbom.sbom_path(ctx.settings.manifests, recipe.name, state.build_id)
        region = ctx.ec2.region

        def forget() -> None:
            if not (state.image_id and ctx.stack.is_kept("image", state.image_id, region)):
                path.unlink(missing_ok=True)
        ctx.stack.undo("SBOM file", forget, only_on_failure=True)
        state.manifest.sbom_sha256 = found.sbom.write(path)
        state.manifest.sbom, state.sbom = str(path), found.sbom
        return f"{found.sbom.summary()}: {path.name}"


class CleanImage:
    """Hygiene before the snapshot: logs, caches, keys and cloud-init's instance state go."""

    title = "clean image (hygiene)"

    def run(self, state: BakeState, ctx: Context) -> None:
        res = state.connector.run(HYGIENE, env={}, timeout=300, sudo=True,
                                  on_output=lambda line: ctx.report.output("hygiene", line))
        if res.exit_status != 0:
            raise RemoteError(f"{state.connector.target.label}: hygiene before the snapshot failed "
                              f"(exit {res.exit_status})")


class CheckForLeftovers:
    """Refuse to snapshot an image that would carry credentials or keys; then hang up."""

    title = "check image for leftovers"

    def run(self, state: BakeState, ctx: Context) -> str:
        lines: list[str] = []
        res = state.connector.run(LEFTOVER_CHECK, env={}, timeout=300, sudo=True, on_output=lines.append)
        leaks = findings(lines)
        if leaks:
            more = f" and {len(leaks) - 3} more" if len(leaks) > 3 else ""
            raise StepFailed(f"{state.recipe.path}: refusing to snapshot: the image would carry "
                             f"{', '.join(leaks[:3])}{more}; remove it in a step")
        if res.exit_status != 0:
            raise RemoteError(f"{state.connector.target.label}: leftover check failed (exit {res.exit_status})")
        state.connector.close()
        return "none"


class StopBuilder:
    title = "stop builder"

    def run(self, state: BakeState, ctx: Context) -> None:
        iid = state.builder["InstanceId"]
        ctx.ec2.stop_instance(iid)
        ctx.ec2.wait_instance_state(iid, "stopped", timeout=900)


class CreateImage:
    """The image, tagged with its recipe and inputs hash; unfinished (removed on failure) until
    MarkFinished."""

    title = "create image"

    def run(self, state: BakeState, ctx: Context) -> str:
        from bakery.config.recipe import render_image

        recipe, ec2 = state.recipe, ctx.ec2
        state.image_name, description, tags = render_image(recipe, state.context)
        state.image_tags = {**tags, "Name": state.image_name,
                            **T.build_tags(recipe.name, state.build_id, "image", temporary=False),
                            T.INPUTS_HASH: state.manifest.inputs_hash, T.SOURCE_AMI: state.source.id,
                            **({T.SBOM: state.manifest.sbom_sha256} if state.manifest.sbom_sha256 else {})}
        image_id = ec2.create_image(state.builder["InstanceId"], state.image_name, description, state.image_tags)
        state.image_id = image_id
        ctx.stack.created("image", image_id, ec2.region, f"unfinished image {image_id}",
                          lambda: ec2.deregister_image(image_id), product=True)
        return f"{image_id} {state.image_name}"


class WaitForImage:
    title = "wait for image"

    def run(self, state: BakeState, ctx: Context) -> None:
        state.image = ctx.ec2.wait_image_available(state.image_id, timeout=3600)
        # CreateImage cannot tag snapshots everywhere (moto, older APIs): tag them explicitly.
        ctx.ec2.tag(snapshots_of(state.image), {**state.image_tags, T.ROLE: "snapshot"})
        state.manifest.ami_id, state.manifest.image_name = state.image_id, state.image_name


class MarkFinished:
    """Only now is the image a product: skips, launches and lifecycle commands look for this tag,
    in every region the image was published to (prune and launch there find the copy by it)."""

    title = None

    def run(self, state: BakeState, ctx: Context) -> None:
        images = (state.manifest.published or {}).get("images") or {ctx.ec2.region: state.image_id}
        finished = {T.COMPLETE: "true", **({T.SMOKE: "passed"} if state.recipe.checks else {})}
        for region, image_id in images.items():
            ctx.ec2.in_region(region).tag([image_id], finished)
