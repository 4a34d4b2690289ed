"""The smoke test: boot the new image once, as a user would, and run the recipe's checks against it.

Only a passing image goes on to be published and marked finished. A failing one is tagged
`bakery:smoke=failed` and kept for inspection (never used by launch or skips; `prune` removes
it); a signal during the test is not a verdict on the image, so the bake just stops.
"""

from __future__ import annotations

import time

from bakery.bake.state import BakeState, Context
from bakery.bake.steps import builder_spec, console_host_key, launch, ssh_to, wait_for_cloud_init
from bakery.cloud import tags as T
from bakery.cloud.images import source_image
from bakery.config.recipe import render_check
from bakery.errors import BakeryError, Interrupted, RemoteError, StepFailed


class SmokeTest:
    title = None  # reports its own stages: launch, SSH, each check, terminate

    def run(self, state: BakeState, ctx: Context) -> None:
        try:
            self._test(state, ctx)
        except Interrupted:
            raise  # not a verdict on the image
        except BakeryError as exc:
            # Keep the image for inspection, marked so nothing ever uses or publishes it.
            ctx.ec2.tag([state.image_id], {T.SMOKE: "failed"})
            ctx.stack.keep("image", state.image_id, ctx.ec2.region)
            raise StepFailed(f"{state.recipe.path}: smoke test of {state.image_id} failed, not published: "
                             f"{exc.message}") from None
        ctx.ec2.tag([state.image_id], {T.SMOKE: "passed"})

    def _test(self, state: BakeState, ctx: Context) -> None:
        from bakery.remote import keys

        r, ec2, checks = ctx.report, ctx.ec2, state.recipe.checks
        console = state.recipe.builder.host_key == "console"  # pinned as the builder's was
        host_key = None if console else keys.generate(f"bakery-smoke-{state.build_id}")
        with r.stage("smoke test: launch") as s:
            if checks.health_check:  # the temporary group admits only SSH so far
                ec2.allow_tcp(state.group_id, checks.health_check.port, state.caller_cidr)
            image = source_image(state.image)
            spec = builder_spec(state, "smoke", image.id, image.root_device_name,
                                smoke_user_data(state, ctx, host_key))
            instance = launch(state, ctx, spec, "smoke instance")
            iid = instance["InstanceId"]
            started = time.monotonic()
            instance = ec2.wait_instance_state(iid, "running", timeout=checks.timeout)
            s.detail = iid
        if console:
            with r.stage("smoke test: read host key from console") as s:
                host_key = console_host_key(ctx, iid, checks.timeout)
                s.detail = host_key.fingerprint()
        connector = ssh_to(state, ctx, instance, host_key, "smoke instance")
        with r.stage("smoke test: SSH"):
            connector.connect(timeout=checks.timeout)
        try:
            wait_for_cloud_init(connector, ctx, checks.timeout, "smoke cloud-init")
            for i, raw in enumerate(checks.commands):
                check = render_check(state.recipe, raw, i, state.context)
                with r.stage(f"smoke check: {check.name}"):
                    res = connector.run(check.shell, env={}, timeout=check.timeout, sudo=True,
                                        on_output=lambda line, n=check.name: r.output(f"check {n}", line))
                    if res.exit_status != 0:
                        why = "timed out" if res.timed_out else f"exited with status {res.exit_status}"
                        raise RemoteError(f"check {check.name!r} {why}")
        finally:
            connector.close()
        if checks.health_check:
            self._health(state, ctx, instance, started + checks.timeout)
        with r.stage("smoke test: terminate"):
            ec2.terminate_and_wait(iid)

    @staticmethod
    def _health(state: BakeState, ctx: Context, instance: dict, deadline: float) -> None:
        from bakery.config.environment import HealthCheck
        from bakery.remote.dial import Machine, Route
        from bakery.remote.health import check_until

        hc, ssh = state.recipe.checks.health_check, state.recipe.builder.ssh
        with ctx.report.stage(f"smoke check: HTTP :{hc.port}{hc.path}"):
            opener = ctx.dial(Machine.of(instance), hc.port, Route(address=ssh.interface, host=ssh.host, builder=True))
            check_until(opener, instance["InstanceId"],
                        HealthCheck(type="http", port=hc.port, path=hc.path, expect_status=hc.expect_status),
                        deadline=deadline)


def smoke_user_data(state: BakeState, ctx: Context, host_key) -> str:
    """The pinned host key, plus the named environment's user data for its tier when declared."""
    from bakery.render.builder import smoke_user_data as build

    checks = state.recipe.checks
    if checks.environment is None:
        return build(host_key, None, f"{state.recipe.path}: checks")
    from bakery.config.environment import load_environment
    from bakery.render.tier import render_tier

    env = load_environment(ctx.settings.envs, checks.environment, ctx.settings.region)
    env.select(checks.tier)
    tier = render_tier(ctx.settings, env, checks.tier, state.image_id, ctx.ec2.region)
    return build(host_key, tier, f"{state.recipe.path}: checks")
