"""bakery's front door: parse flags, call bakery, print what bakery.cli.show formats.

    bakery bake --recipe web            bake an image from recipes/web.yaml
    bakery launch --env prod            launch an environment from envs/prod.yaml
    bakery validate                     check every recipe, environment and template offline
    bakery diff --recipe web            what changed between the recipe's two newest images

The `bakery` command (`main`, the wheel's console script) runs these tasks in the working
directory: recipes/, envs/, userdata/ and invoke.yaml are read from there, as `invoke` reads them
next to a tasks.py. A repository's own tasks.py can add tasks around them
(`from bakery.tasks import namespace`); this repository's tasks.py is exactly that, so
`invoke bake --recipe web` here is `bakery bake --recipe web`.

Imports happen inside the tasks, so `--list` and `--help` load no SDK.
"""

import os

from invoke import Collection, Exit, Program, task

from bakery.cli import LOG_FORMAT_HELP, command, parse_int, parse_variables, required, settings_from
from bakery.errors import BakeryError


@task(
    positional=[],
    iterable=["var"],
    help={
        "recipe": "recipe name: recipes/NAME.yaml",
        "var": "KEY=VALUE for a variable the recipe declares (repeatable; wins over --var-file)",
        "var-file": "YAML file of variable values (name: value)",
        "force": "bake even if an image with the same inputs exists",
        "keep-on-error": "on failure keep the builder, key pair and security group for debugging",
        "json": "print the manifest as JSON on stdout (progress stays on stderr)",
        "no-cache": "run every step: neither resume from a checkpoint nor keep one",
        "log-format": LOG_FORMAT_HELP,
    },
)
def bake(c, recipe, var=None, var_file=None, force=False, keep_on_error=False, json=False, no_cache=False,
         log_format=None):
    """Bake an AMI from a recipe (skipped when an image with the same inputs exists)."""
    with command():
        required(recipe=recipe)
        from bakery.bake.run import bake as run_bake
        from bakery.cli import reporter, show

        settings = settings_from(c)
        show.bake(run_bake(settings, recipe, parse_variables(var, var_file),
                           report=reporter(settings, f"[{recipe}] ", log_format=log_format, live=not json), force=force,
                           keep_on_error=keep_on_error, cache=not no_cache),
                  json=json)


@task(
    iterable=["recipe", "var"],
    help={"recipe": "only these recipes (repeatable; default: every recipe not marked abstract)",
          "var": "KEY=VALUE for every selected recipe that declares KEY (repeatable; wins over --var-file)",
          "var-file": "YAML file of variable values (name: value), each for the recipes that declare it",
          "force": "bake even when nothing changed", "json": "print the table as JSON on stdout",
          "jobs": "bake up to N recipes at once, each after the recipe it is layered on (default 1)",
          "names": "bake nothing: print the recipes it would consider as one JSON list of groups, each "
                   "a tree of layers to bake in sequence, parents first (the workflow's matrix)",
          "log-format": LOG_FORMAT_HELP},
)
def rebake(c, recipe=None, var=None, var_file=None, force=False, json=False, names=False, jobs="1", log_format=None):
    """Bake every recipe whose inputs changed; table of decisions (also to $GITHUB_STEP_SUMMARY)."""
    with command():
        from bakery.bake.rebake import rebake as run_rebake
        from bakery.bake.rebake import job_groups
        from bakery.cli import reporter, show

        settings = settings_from(c)
        if names:
            show.recipe_names(job_groups(settings, recipe or None))
            return
        jobs = parse_int("--jobs", jobs, minimum=1)
        show.rebake(run_rebake(settings, recipe or None, variables=parse_variables(var, var_file), force=force,
                               report=reporter(settings, log_format=log_format, live=not json), jobs=jobs), json=json)


@task(
    positional=[],
    iterable=["region"],
    help={"recipe": "recipe whose images to prune", "keep": "how many of the newest images to keep (default 3)",
          "region": "also prune in this region (repeatable)", "dry-run": "only list what would go",
          "json": "print JSON on stdout"},
)
def prune(c, recipe, keep="3", region=None, dry_run=False, json=False):  # a string: parse_int says what is wrong
    """Deregister old images of a recipe (and their snapshots), never one that is still used."""
    with command():
        required(recipe=recipe)
        from bakery.cli import reporter, show
        from bakery.cloud.connect import open_cloud
        from bakery.housekeeping import prune as pruning

        settings, keep = settings_from(c), parse_int("--keep", keep)
        pruning.check(settings, recipe, keep)
        reports = pruning.prune(open_cloud(settings).ec2, recipe, keep, dry_run=dry_run, report=reporter(settings),
                                regions=region or [])
        show.prune(reports, json=json, dry_run=dry_run)


@task(help={"recipe": "only this recipe's images", "json": "print JSON on stdout"})
def images(c, recipe=None, json=False):
    """List baked images, newest first: recipe, inputs hash, creation time, state."""
    with command():
        from bakery.bake.images import image_rows
        from bakery.cli import show

        show.images(image_rows(settings_from(c), recipe), json=json)


@task(positional=[], help={
    "recipe": "recipe whose images to compare",
    "from": "the older image (default: the finished image before --to)",
    "to": "the newer image (default: the recipe's newest finished image)",
    "json": "print JSON on stdout"})
def diff(c, recipe, from_=None, to=None, json=False):
    """What changed between two images of a recipe (from their SBOMs): packages, Python packages, uploaded files."""
    with command():
        required(recipe=recipe)
        from bakery.cli import show
        from bakery.evidence.diff import diff_recipe

        show.diff(diff_recipe(settings_from(c), recipe, from_, to), json=json)


@task(
    positional=[],
    help={
        "env": "environment name: envs/NAME.yaml",
        "tier": "launch only this tier",
        "dry-run": "print the plan (images, counts, subnets, user data size and hash); create nothing",
        "keep-on-error": "on failure keep the instances this run launched instead of terminating them",
        "json": "print the launch report as JSON on stdout",
        "log-format": LOG_FORMAT_HELP,
    },
)
def launch(c, env, tier=None, dry_run=False, keep_on_error=False, json=False, log_format=None):
    """Launch an environment's tiers from their images with rendered user data; wait until healthy."""
    with command():
        required(env=env)
        from bakery.cli import reporter, show
        from bakery.launch.run import launch as run_launch

        settings = settings_from(c)
        show.launch(run_launch(settings, env, tier=tier, dry_run=dry_run, keep_on_error=keep_on_error,
                               report=reporter(settings, f"[{env}] ", "environment", log_format, not json)), json=json)


@task(
    positional=[],
    help={
        "env": "environment name: envs/NAME.yaml",
        "tier": "roll only this tier",
        "dry-run": "say which instances would move, to which image and how; change nothing",
        "json": "print the rollout report as JSON on stdout",
        "log-format": LOG_FORMAT_HELP,
    },
)
def rollout(c, env, tier=None, dry_run=False, json=False, log_format=None):
    """Move running tiers to their newest images, a slot at a time, each healthy first; roll back on failure."""
    with command():
        required(env=env)
        from bakery.cli import reporter, show
        from bakery.launch.rollout import rollout as run_rollout

        settings = settings_from(c)
        show.rollout(run_rollout(settings, env, tier=tier, dry_run=dry_run,
                                 report=reporter(settings, f"[{env}] ", "environment", log_format, not json)), json=json)


@task(positional=[], help={"env": "environment name", "tier": "tier name",
                           "part": "print only this part: its packed name (01-web.yaml), template or number",
                           "check": "check each cloud-config part against cloud-init's schema instead of printing"})
def render(c, env, tier, part=None, check=False):
    """Print the exact user data `launch` would send for one tier (before gzip and base64); offline."""
    with command():
        required(env=env, tier=tier)
        from bakery.cli import show
        from bakery.render.tier import render_for

        user_data, note, where = render_for(settings_from(c), env, tier)
        if check:
            from bakery.render.parts import check as check_parts

            show.render_checks(check_parts(user_data, where))
        elif part is not None:
            from bakery.render.parts import part as one_part

            show.render_text(one_part(user_data, part, where).text, note)
        else:
            show.render_text(user_data.text, note)


@task
def validate(c):
    """Check every recipe, environment and user data template; one line per problem."""
    with command():
        from bakery.cli import show
        from bakery.render.validate import validate_all

        show.validate(*validate_all(settings_from(c)))


@task(help={"build-id": "the bake to show (default: the newest that ran: built an image, or failed)",
            "png": "where to write the timeline picture (default: beside its manifest, as NAME.timeline.png)",
            "json": "print the stages as JSON on stdout"})
def report(c, build_id=None, png=None, json=False):
    """Where a bake's time went: each stage and step with its duration and share, and a timeline picture."""
    with command():
        from pathlib import Path

        from bakery.bake import timeline as timelines
        from bakery.cli import parse_build_id, show
        from bakery.errors import ConfigError

        settings = settings_from(c)
        found = timelines.load(settings.manifests, parse_build_id(build_id) if build_id else None)
        picture = Path(png) if png else found.manifest.with_suffix(".timeline.png")
        try:
            picture.write_bytes(timelines.png(found))
        except OSError as exc:
            raise ConfigError(f"--png {picture}: {exc.strerror or exc}") from None
        show.report(found, picture, json=json)


@task(positional=["directory"],
      help={"directory": "the new repository (default: the working directory; made if missing)",
            "bakery-source": "what its workflow pip-installs, pinned to one commit: "
                             "'bakery @ git+https://github.com/OWNER/bakery@COMMIT' (default: where this bakery was "
                             "installed from, if that was one commit)"})
def init(c, directory=None, bakery_source=None):
    """Start a repository: recipes, environments, templates, settings and a rebake workflow."""
    with command():
        from pathlib import Path

        from bakery.cli import show
        from bakery.scaffold.init import checked_source
        from bakery.scaffold.init import init as run_init

        source = checked_source(bakery_source) if bakery_source is not None else None
        show.scaffold(run_init(Path(directory or "."), source))


@task(positional=[], help={"ami": "the image to check (in the settings' region)", "json": "print JSON on stdout"})
def verify(c, ami, json=False):
    """Check an image's signed provenance with the trusted key (verify_key): signature, subjects, tags."""
    with command():
        required(ami=ami)
        from bakery.cli import show
        from bakery.evidence.attestation import verify_ami

        show.verified(*verify_ami(settings_from(c), ami), json=json)


@task(help={"dry-run": "only list what would be removed",
            "older-than": "builds whose temporary resources are older than this (30m, 6h, 2d; default: expired)",
            "run-id": "builds of this CI run (BAKERY_RUN_ID at bake time), whatever their age, in every region the "
                      "recipes publish to, with the SSM values it wrote put back"})
def janitor(c, dry_run=False, older_than=None, run_id=None):
    """Remove what dead runs left behind (builders, key pairs, groups, unfinished images, launches), by ledger and tags."""
    with command():
        from bakery.cli import show
        from bakery.cloud.connect import open_cloud
        from bakery.housekeeping.janitor import janitor as run_janitor
        from bakery.housekeeping.janitor import parse_duration, publish_regions

        age = parse_duration(older_than) if older_than else None
        settings = settings_from(c)
        regions = publish_regions(settings.recipes) if run_id else []
        show.janitor(run_janitor(open_cloud(settings).ec2, older_than=age, run_id=run_id, dry_run=dry_run,
                                 ledger_dir=settings.state / "ledger", keys_dir=settings.state / "keys",
                                 regions=regions))


@task(positional=[], help={"build-id": "the build to remove (printed by bake)", "dry-run": "only list what would be removed"})
def clean(c, build_id, dry_run=False):
    """Remove what one build left behind (instances, security groups, key pairs, unfinished images, its private key)."""
    with command():
        required(build_id=build_id)
        from bakery.cli import parse_build_id, show
        from bakery.cloud.connect import open_cloud
        from bakery.housekeeping.cleanup import clean_build

        settings = settings_from(c)
        show.clean(clean_build(open_cloud(settings).ec2, parse_build_id(build_id), dry_run=dry_run,
                               keys_dir=settings.state / "keys"))


@task(help={"check": "install nothing: say what is missing, and fail if anything is"})
def local_install(c, check=False):
    """Install the local cloud's Debian packages (apt-get, as root) and check the host is ready."""
    with command():
        import sys

        from bakery.cli import show
        from bakery.local.prereqs import install

        show.local_install(install(lambda line: print(line, file=sys.stderr, flush=True), check_only=check))


@task
def local_up(c):
    """Start the local cloud (moto endpoint on 127.0.0.1; builds the Debian base image once)."""
    with command():
        from bakery.cli import show
        from bakery.local.cloud import LocalCloud

        show.local_up(LocalCloud(settings_from(c).local_data).up())


@task(help={"purge": "destroy the instances and forget key pairs, networks and parameters too (images stay)"})
def local_down(c, purge=False):
    """Stop the local cloud: its instances stop (and come back stopped at local.up); images are kept."""
    with command():
        from bakery.cli import show
        from bakery.local.cloud import LocalCloud

        show.local_down(LocalCloud(settings_from(c).local_data).down(purge=purge))


@task(help={"json": "print JSON on stdout"})
def local_status(c, json=False):
    """Show the local endpoint, its instances and its images."""
    with command():
        from bakery.cli import show
        from bakery.local.status import status

        show.local_status(status(settings_from(c).local_data), json=json)


@task(positional=[], help={"env": "environment name", "dry-run": "only print the plan", "json": "print JSON on stdout"})
def network_up(c, env, dry_run=False, json=False):
    """Create the environment's VPC, subnets, groups, ACLs, Elastic IPs and persistent ENIs that are missing."""
    with command():
        required(env=env)
        from bakery.cli import show
        from bakery.network import Network, open_env

        cloud, environment = open_env(settings_from(c), env)
        show.network_up(Network(cloud.ec2, environment).up(dry_run=dry_run), json=json, dry_run=dry_run)


@task(positional=[], help={"env": "environment name", "json": "print JSON on stdout"})
def network_status(c, env, json=False):
    """Show each ENI (IPs, MAC, groups, attachment) and Elastic IP; warn about idle Elastic IPs."""
    with command():
        required(env=env)
        from bakery.cli import show
        from bakery.network import open_env, status

        cloud, environment = open_env(settings_from(c), env)
        show.network_status(status(cloud.ec2, environment), json=json)


@task(positional=[], help={"env": "environment name", "json": "print JSON on stdout"})
def status(c, env, json=False):
    """Instances with their images (newer one baked?), ENIs, Elastic IPs, drift from the file."""
    with command():
        required(env=env)
        from bakery.cli import show
        from bakery.launch.status import fleet_status
        from bakery.network import open_env

        cloud, environment = open_env(settings_from(c), env)
        show.fleet_status(fleet_status(cloud.ec2, environment), json=json)


@task(positional=[], help={"env": "environment name", "tier": "tier whose persistent ENIs move",
            "to": "instance id to move them to (default: the tier's running standby)", "json": "print JSON"})
def failover(c, env, tier, to=None, json=False):
    """Move a tier's persistent ENIs and Elastic IPs to a hot standby; report the time taken."""
    with command():
        required(env=env, tier=tier)
        from bakery.cli import reporter, show
        from bakery.launch.failover import failover as run_failover

        settings = settings_from(c)
        show.failover(run_failover(settings, env, tier, to, reporter(settings, f"[{env}] ", "environment")), json=json)


@task(positional=[], help={
    "instance": "the instance id (a launched instance, or a builder kept with --keep-on-error)",
    "env": "environment name (with --tier)", "tier": "tier name", "index": "the tier's slot (default 0; standby-0, ...)",
    "key": "private key file (default: the environment's ssh.key_file)", "user": "login user (default: ssh.user)",
    "command": "run this command instead of a login shell", "print": "print the ssh command instead of running it"})
def ssh(c, instance=None, env=None, tier=None, index="0", key=None, user=None, command=None, print_=False):
    """Log in to an instance with the OpenSSH client, its host keys pinned; on either cloud."""
    from bakery import cli

    with cli.command():
        from bakery.launch.reach import ssh_command

        cmd = ssh_command(settings_from(c), instance_id=instance, env_name=env, tier=tier, index=index, key=key,
                          user=user, command=command)
        if print_:
            print(cmd.line())
            return
    cli.exec_argv(cmd.argv())


network = Collection("network")
network.add_task(network_up, "up")
network.add_task(network_status, "status")

local = Collection("local")
local.add_task(local_install, "install")
local.add_task(local_up, "up")
local.add_task(local_down, "down")
local.add_task(local_status, "status")

ns = Collection(bake, rebake, prune, launch, rollout, render, status, failover, ssh, images, diff, validate, verify,
                clean, janitor, init, report, network, local)
# Every setting is declared here so INVOKE_BAKERY_<KEY> environment variables can set it
# (invoke only maps environment variables onto keys it already knows).
ns.configure({"bakery": {"cloud": "aws", "region": None, "profile": None, "endpoint_url": None,
                         "project_dir": None, "recipes_dir": None, "envs_dir": None,
                         "userdata_dir": None, "state_dir": None,
                         "ssh_host": None, "ssh_port": None, "data_dir": None,
                         "evidence_bucket": None, "signing_key": None, "verify_key": None, "osv_feed": None,
                         "checkpoint_after": None, "checkpoint_days": None, "heartbeat": None,
                         "log_format": None}})
namespace = ns


def version() -> str:
    """The installed package's version ("0+unknown" when bakery runs from a checkout it was not
    installed from)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("bakery")
    except PackageNotFoundError:
        return "0+unknown"


#: bash completion for `bakery`: invoke's own script, but the word being completed also travels in
#: BAKERY_COMPLETING, since invoke receives the command line as one string and an empty last word
#: (`bakery bake --recipe web <TAB>`) does not survive that
BASH_COMPLETION = """\
# bakery's tab completion for bash: eval "$(bakery --print-completion-script bash)"
_complete_bakery() {
    local candidates
    candidates=$(BAKERY_COMPLETING="$2" bakery --complete -- "${COMP_WORDS[@]}")
    COMPREPLY=( $(compgen -W "${candidates}" -- "$2") )
}
complete -F _complete_bakery -o default bakery
"""


def flag_values(words: str, settings: dict, current: str | None = None) -> list[str] | None:
    """The recipes or environments a `--recipe` / `--env` being completed can name (None: another
    word, which invoke completes). `words` is the command line so far, the program's name first;
    `current` the word being completed, when the shell says (None: guess from `words`)."""
    import shlex
    from pathlib import Path

    from bakery.config.environment import list_environments
    from bakery.config.recipe import list_recipes
    from bakery.config.settings import Settings

    try:
        tokens = shlex.split(words)[1:]
    except ValueError:  # an open quote
        return None
    if current is None:
        current = tokens[-1] if tokens and not tokens[-1].startswith("-") and len(tokens) > 1 else ""
    if current:
        tokens = tokens[:-1]  # a partial value: the shell's compgen matches it
    flag = tokens[-1] if tokens else ""
    if flag not in ("--recipe", "--env"):
        return None
    try:
        where = Settings.load(dict(settings), project_dir=Path.cwd())
    except BakeryError:  # a broken setting: nothing to offer, and no error in the middle of a prompt
        return []
    if flag == "--env":
        return list_environments(where.envs)
    return [name for name in list_recipes(where.recipes) if not _abstract(where.recipes / f"{name}.yaml")]


def _abstract(path) -> bool:
    """A template for extends, which no task bakes: not offered (a file that does not parse is)."""
    from bakery.config.abstract import is_abstract

    try:
        return is_abstract(path)
    except BakeryError:
        return False


class BakeryProgram(Program):
    """invoke's Program over bakery's tasks, its project being the working directory: invoke.yaml
    is loaded from there and settings resolve paths against it (bakery.cli.settings_from), as
    they do next to a tasks.py."""

    def parse_collection(self) -> None:
        self.config.set_project_location(os.getcwd())
        try:
            self.config.load_project()
        except Exception as exc:  # invoke.yaml that is not YAML: one line, as for any bad input
            mark = getattr(exc, "problem_mark", None)
            where = f"{os.path.join(os.getcwd(), 'invoke.yaml')}" + (f":{mark.line + 1}" if mark else "")
            raise Exit(f"error: {where}: {getattr(exc, 'problem', None) or exc}", code=2) from None
        super().parse_collection()

    def parse_cleanup(self) -> None:
        # Shell completion asks `bakery --complete -- WORDS`: invoke completes task names and flags;
        # the value of --recipe or --env is a file's name in this project
        if self.args.complete.value:
            # as invoke's Executor does before a task: the collection's keys, then INVOKE_BAKERY_* onto them
            self.config.load_collection(self.collection.configuration())
            self.config.load_shell_env()
            names = flag_values(self.core.remainder, self.config.get("bakery") or {},
                                os.environ.get("BAKERY_COMPLETING"))
            if names is not None:
                print("\n".join(names))
                raise Exit
        super().parse_cleanup()


def _init_argv(argv: list[str]) -> list[str]:
    """`bakery init [DIR]`: invoke's positional arguments are required, and take whatever comes,
    `--help` included. Ask for the task's help as `bakery --help init` does, and give the working
    directory when no DIR is (right after `init`, so a flag missing its value still says so)."""
    at = next((i for i, word in enumerate(argv[1:], 1) if not word.startswith("-")), None)
    if at is None or argv[at] != "init":  # core flags (`--debug`, `-e`) may come before the task
        return argv
    rest = argv[at + 1:]
    if {"-h", "--help"} & set(rest):
        return [*argv[:at], "--help", "init"]
    bare, i = [], 0
    while i < len(rest):
        word = rest[i]
        if word in ("-b", "--bakery-source", "-d", "--directory"):
            i += 1  # its value follows
        elif not word.startswith("-"):
            bare.append(word)
        i += 1
    named = any(w in ("-d", "--directory") or w.startswith("--directory=") for w in rest)
    return argv if bare or named else [*argv[:at + 1], ".", *rest]


def main(argv: list[str] | None = None) -> None:
    """The `bakery` command."""
    import sys

    argv = _init_argv(list(sys.argv if argv is None else argv))
    if argv[1:] in (["--print-completion-script", "bash"], ["--print-completion-script=bash"]):
        print(BASH_COMPLETION, end="")
        return
    try:
        BakeryProgram(name="bakery", binary="bakery", namespace=namespace, version=version()).run(argv)
    except BrokenPipeError:  # `bakery --list | head`: the reader left; nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
