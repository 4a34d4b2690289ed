"""bakery's front door: parse flags, call bakery, print. No logic lives here.

    invoke bake --recipe web            bake an image from recipes/web.yaml
    invoke images                       list baked images
    invoke validate                     check every recipe
"""

from invoke import Collection, task

from bakery.cli import command, emit, parse_vars, required, settings_from


@task(
    positional=[],
    iterable=["var"],
    help={
        "recipe": "recipe name: recipes/NAME.yaml",
        "var": "KEY=VALUE for a variable the recipe declares (repeatable)",
        "force": "bake even if an image with the same inputs exists",
        "keep-on-error": "on failure keep the builder, key pair and security group for debugging",
        "json": "print the manifest as JSON on stdout (progress stays on stderr)",
    },
)
def bake(c, recipe, var=None, force=False, keep_on_error=False, json=False):
    """Bake an AMI from a recipe (skipped when an image with the same inputs exists)."""
    with command():
        required(recipe=recipe)
        from bakery.bake import bake as run_bake
        from bakery.progress import Reporter

        settings = settings_from(c)
        manifest = run_bake(settings, recipe, parse_vars(var), report=Reporter(prefix=f"[{recipe}] "),
                            force=force, keep_on_error=keep_on_error)
        if json:
            emit(manifest.to_json())
        elif manifest.skipped:
            emit(f"{manifest.ami_id} unchanged ({manifest.reason})")
        else:
            emit(f"{manifest.ami_id} {manifest.image_name} baked in {manifest.seconds:.1f}s "
                 f"(manifest: {manifest.manifest_path})")


@task(
    iterable=["recipe"],
    help={"recipe": "only these recipes (repeatable; default: every recipe)",
          "force": "bake even when nothing changed", "json": "print the table as JSON on stdout"},
)
def rebake(c, recipe=None, force=False, json=False):
    """Bake every recipe whose inputs changed; table of decisions (also to $GITHUB_STEP_SUMMARY)."""
    with command():
        from invoke.exceptions import Exit

        from bakery.bake.rebake import rebake as run_rebake
        from bakery.bake.rebake import rows_json, table
        from bakery.progress import Reporter

        rows = run_rebake(settings_from(c), recipe or None, force=force, report=Reporter())
        emit(__import__("json").dumps(rows_json(rows), indent=2) if json else table(rows))
        failed = [r.recipe for r in rows if r.decision == "failed"]
        if failed:
            raise Exit(f"error: {len(failed)} recipe(s) failed: {', '.join(failed)}", code=1)


@task(
    positional=[],
    iterable=["region"],
    help={"recipe": "recipe whose images to prune", "keep": "how many of the newest images to keep",
          "region": "also prune in this region (repeatable)", "dry-run": "only list what would go",
          "json": "print JSON on stdout"},
)
def prune(c, recipe, keep=3, region=None, dry_run=False, json=False):
    """Deregister old images of a recipe (and their snapshots), never one that is still used."""
    with command():
        required(recipe=recipe)
        from dataclasses import asdict

        from bakery.bake.rebake import prune as run_prune
        from bakery.progress import Reporter

        reports = run_prune(settings_from(c), recipe, int(keep), dry_run=dry_run, report=Reporter(),
                            regions=region or [])
        if json:
            emit(__import__("json").dumps([asdict(r) for r in reports], indent=2))
            return
        verb = "would remove" if dry_run else "removed"
        for r in reports:
            emit(f"{r.recipe}: kept {len(r.kept)}, {verb} {len(r.removed)}, spared {len(r.spared)} in use")
            for ami, why in r.spared.items():
                emit(f"  spared {ami}: used by {why}")
            for ami in r.removed:
                emit(f"  {verb} {ami}")


@task(help={"recipe": "only this recipe's images", "json": "print JSON on stdout"})
def images(c, recipe=None, json=False):
    """List baked images, newest first: recipe, inputs hash, creation time, state."""
    with command():
        from bakery.bake.images import image_rows, render_table

        rows = image_rows(settings_from(c), recipe)
        emit(__import__("json").dumps(rows, indent=2) if json else render_table(rows))


@task(
    positional=[],
    help={
        "env": "environment name: envs/NAME.yaml",
        "tier": "launch only this tier",
        "dry-run": "print the plan (images, counts, subnets, user data size and hash); create nothing",
        "keep-on-error": "on failure keep the instances this run launched instead of terminating them",
        "json": "print the launch report as JSON on stdout",
    },
)
def launch(c, env, tier=None, dry_run=False, keep_on_error=False, json=False):
    """Launch an environment's tiers from their images with rendered user data; wait until healthy."""
    with command():
        required(env=env)
        from bakery.launch import launch as run_launch
        from bakery.cli.launch import summary
        from bakery.progress import Reporter

        report = run_launch(settings_from(c), env, tier=tier, dry_run=dry_run, keep_on_error=keep_on_error,
                            report=Reporter(prefix=f"[{env}] "))
        emit(report.to_json() if json else summary(report))


@task(positional=[], help={"env": "environment name", "tier": "tier name"})
def render(c, env, tier):
    """Print the exact user data `launch` would send for one tier (before gzip and base64)."""
    with command():
        required(env=env, tier=tier)
        import sys

        from bakery.cli.launch import rendered_user_data

        sys.stdout.write(rendered_user_data(settings_from(c), env, tier))  # byte for byte, no added newline


@task
def validate(c):
    """Check every recipe, environment and user data template; one line per problem."""
    with command():
        from bakery.render.validate import validate_all

        problems, checked = validate_all(settings_from(c))
        for line in problems:
            emit(line)
        if problems:
            from invoke.exceptions import Exit
            raise Exit(f"error: {len(problems)} problem(s) in {checked} file(s)", code=2)
        emit(f"ok: {checked} file(s) valid")


@task(help={"dry-run": "only list what would be removed",
            "older-than": "builds whose temporary resources are older than this (30m, 6h, 2d; default: expired)",
            "run-id": "builds of this CI run (BAKERY_RUN_ID at bake time), whatever their age"})
def janitor(c, dry_run=False, older_than=None, run_id=None):
    """Remove what dead runs left behind (builders, key pairs, groups, unfinished images, launches), by ledger and tags."""
    with command():
        from bakery.cloud.ec2 import EC2
        from bakery.housekeeping.janitor import janitor as run_janitor
        from bakery.housekeeping.janitor import parse_duration

        age = parse_duration(older_than) if older_than else None
        settings = settings_from(c)
        report = run_janitor(EC2(settings), older_than=age, run_id=run_id, dry_run=dry_run,
                             ledger_dir=settings.state / "ledger")
        verb = "would remove" if dry_run else "removed"
        for build, removed in report.builds.items():
            emit(f"{build}: {verb} {', '.join(removed) or 'nothing'}")
        for failure in report.failed:
            emit(f"not removed (left in the ledger): {failure}")
        emit(f"janitor: {len(report.builds)} dead run(s), {len(report.live)} live run(s) left alone"
             + (f", {len(report.failed)} failure(s)" if report.failed else ""))
        if report.failed:
            from bakery.errors import CloudError

            raise CloudError(f"janitor: {len(report.failed)} resource(s) not removed; run it again when the cause is fixed")


@task(positional=[], help={"build-id": "the build to remove (printed by bake)", "dry-run": "only list what would be removed"})
def clean(c, build_id, dry_run=False):
    """Remove what one build left behind (instances, security groups, key pairs, unfinished images)."""
    with command():
        required(build_id=build_id)
        from bakery.housekeeping.cleanup import clean_build
        from bakery.cloud.ec2 import EC2

        report = clean_build(EC2(settings_from(c)), build_id, dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        for item in report.removed:
            emit(f"{verb} {item}")
        emit(f"{build_id}: {len(report.removed)} resource(s) {verb}")


@task
def local_up(c):
    """Start the local cloud (moto endpoint on 127.0.0.1; builds the Debian base image once)."""
    with command():
        from bakery.local.cloud import LocalCloud

        cloud = LocalCloud(settings_from(c).local_data)
        emit(f"local cloud up: {cloud.up()}")


@task
def local_down(c):
    """Destroy every local instance and stop the endpoint; baked images are kept."""
    with command():
        from bakery.local.cloud import LocalCloud

        result = LocalCloud(settings_from(c).local_data).down()
        emit(f"local cloud down: {result['instances_destroyed']} instance(s) destroyed, "
             f"endpoint {'stopped' if result['endpoint_stopped'] else 'was not running'}")


@task(help={"json": "print JSON on stdout"})
def local_status(c, json=False):
    """Show the local endpoint, its instances and its images."""
    with command():
        from bakery.local.status import render_status, status

        info = status(settings_from(c).local_data)
        emit(__import__("json").dumps(info, indent=2) if json else render_status(info))


@task(positional=[], help={"env": "environment name", "dry-run": "only print the plan", "json": "print JSON on stdout"})
def network_up(c, env, dry_run=False, json=False):
    """Create the environment's VPC, subnets, groups, ACLs, Elastic IPs and persistent ENIs that are missing."""
    with command():
        required(env=env)
        from bakery.network import Network
        from bakery.network import open_env

        ec2, environment = open_env(settings_from(c), env)
        actions = Network(ec2, environment).up(dry_run=dry_run)
        if json:
            emit(__import__("json").dumps([a.__dict__ for a in actions], indent=2))
        else:
            emit("\n".join(a.line() for a in actions) + ("\n(dry run: nothing created)" if dry_run else ""))


@task(positional=[], help={"env": "environment name", "json": "print JSON on stdout"})
def network_status(c, env, json=False):
    """Show each ENI (IPs, MAC, groups, attachment) and Elastic IP; warn about idle Elastic IPs."""
    with command():
        required(env=env)
        from bakery.network import render_status, status
        from bakery.network import open_env

        info = status(*open_env(settings_from(c), env))
        emit(__import__("json").dumps(info, indent=2) if json else render_status(info))


@task(positional=[], help={"env": "environment name", "tier": "tier whose persistent ENIs move",
            "to": "instance id to move them to (default: the tier's running standby)", "json": "print JSON"})
def failover(c, env, tier, to=None, json=False):
    """Move a tier's persistent ENIs and Elastic IPs to a hot standby; report the time taken."""
    with command():
        required(env=env, tier=tier)
        from dataclasses import asdict

        from bakery.network import failover as run_failover
        from bakery.network import open_env
        from bakery.progress import Reporter

        ec2, environment = open_env(settings_from(c), env)
        result = run_failover(ec2, environment, tier, to, Reporter(prefix=f"[{env}] "))
        if json:
            emit(__import__("json").dumps(asdict(result), indent=2))
        else:
            emit(f"{env}/{tier}: interfaces moved {result.from_instance} -> {result.to_instance} "
                 f"in {result.seconds:.2f}s")
            for i in result.interfaces:
                emit(f"  {i['eni']} dev {i['device_index']} {','.join(i['ips'])} {i['mac']}")


network = Collection("network")
network.add_task(network_up, "up")
network.add_task(network_status, "status")

local = Collection("local")
local.add_task(local_up, "up")
local.add_task(local_down, "down")
local.add_task(local_status, "status")

ns = Collection(bake, rebake, prune, launch, render, failover, images, validate, clean, janitor, network, local)
# Every setting is declared here so INVOKE_BAKERY_<KEY> environment variables can set it
# (invoke only maps environment variables onto keys it already knows).
ns.configure({"bakery": {"cloud": "aws", "region": None, "profile": None, "endpoint_url": None,
                         "project_dir": None, "recipes_dir": None, "envs_dir": None,
                         "userdata_dir": None, "state_dir": None,
                         "ssh_host": None, "ssh_port": None, "data_dir": None}})
