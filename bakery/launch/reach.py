"""`invoke ssh`: the OpenSSH command that logs in to an instance, on either cloud.

A builder (kept with --keep-on-error) is reached with its build's own key and pinned host key, as
its recipe's SSH user. A launched instance is reached with the private key the user names
(`--key`, or the environment's `ssh.key_file`) as the environment's `ssh.user`, through its
`ssh.bastion` when one is declared, its host keys pinned from its console. Where the instance's
port is reached from this machine's shell is the dial seam's answer (an address, or on the local
cloud the instance's network namespace); nothing here asks which cloud it is.
"""

from __future__ import annotations

from collections.abc import Callable

from bakery.cloud import tags as T
from bakery.cloud.connect import open_cloud
from bakery.cloud.console import host_keys
from bakery.config.environment import Environment, load_environment
from bakery.config.settings import Settings, user_path
from bakery.errors import ConfigError, WaitTimeout
from bakery.remote.dial import Machine
from bakery.remote.shell import KNOWN_HOSTS, Jump, SshCommand, builder_alias, write_known_hosts
from bakery.waits import Backoff, wait_for

#: how long `invoke ssh` waits for a new instance's host keys to show on its console
HOST_KEYS_WAIT = 120.0


def ssh_command(settings: Settings, *, instance_id: str | None = None, env_name: str | None = None,
                tier: str | None = None, index: str = "0", key: str | None = None, user: str | None = None,
                command: str | None = None) -> SshCommand:
    """Checked offline first (which instance is meant, the environment file), then asked of the cloud."""
    if (instance_id is None) == (env_name is None):
        raise ConfigError("ssh: give --instance ID, or --env ENV --tier TIER [--index N]")
    if env_name is not None and tier is None:
        raise ConfigError("ssh: --env needs --tier (and --index for another slot than 0)")
    env = load_environment(settings.envs, env_name, settings.region) if env_name else None
    if env is not None:
        env.select(tier)
    key_file = user_path(key, settings.project_dir) if key is not None else None
    if key_file is not None and not key_file.is_file():
        raise ConfigError(f"ssh: --key: {key_file} is not a file")
    cloud = open_cloud(settings)
    ec2 = cloud.ec2
    if instance_id is not None:
        instance = ec2.describe_instance(instance_id)
        if instance is None:
            raise ConfigError(f"ssh: --instance: no instance {instance_id}")
    elif env.tiers[tier].auto_scaling:  # one slot, many instances: the Nth running, oldest first
        found = sorted(ec2.tier_instances(env_name, tier, states=("running",)),
                       key=lambda i: (i["LaunchTime"], i["InstanceId"]))
        if not index.isdigit() or int(index) >= len(found):
            raise ConfigError(f"{env.path}: tiers.{tier}: --index {index}: its Auto Scaling group runs "
                              f"{len(found)} instance(s), index 0 to {len(found) - 1} (oldest first)")
        instance = found[int(index)]
    else:
        found = ec2.tier_instances(env_name, tier, T.tag_filter(T.SLOT, index), states=("running",))
        if not found:
            raise ConfigError(f"{env.path}: tiers.{tier}: no running instance in slot {index!r} "
                              f"(launch it: invoke launch --env {env_name})")
        instance = found[0]
    iid = instance["InstanceId"]
    if instance["State"]["Name"] != "running":
        raise ConfigError(f"ssh: {iid} is {instance['State']['Name']}, not running")
    tags = T.tags_of(instance)
    machine = Machine(iid, instance.get("PrivateIpAddress"), instance.get("PublicIpAddress"))
    prefix, host = cloud.dial.shell_prefix(machine)
    if tags.get(T.ROLE) == "builder" and tags.get(T.BUILD_ID):
        return _builder(settings, tags, iid, prefix, host, user, command)
    if env is None and tags.get(T.ENVIRONMENT):
        try:
            env = load_environment(settings.envs, tags[T.ENVIRONMENT], settings.region)
        except ConfigError:
            env = None  # launched from an environment file this checkout does not have: defaults
    return _launched(settings, env, iid, lambda: ec2.console_output(iid), prefix, host, key, user, command)


def _builder(settings: Settings, tags: dict, iid: str, prefix: str, host: str, user: str | None,
             command: str | None) -> SshCommand:
    build_id = tags[T.BUILD_ID]
    key_dir = settings.state / "keys" / build_id
    key_file = key_dir / "id_ed25519"
    if not key_file.is_file() or not (key_dir / KNOWN_HOSTS).is_file():
        raise ConfigError(f"ssh: builder {iid}: build {build_id}'s key is not in {key_dir} (only a build kept "
                          "with --keep-on-error, from this state dir, can be reached)")
    if user is None:
        user = _recipe_user(settings, tags.get(T.RECIPE))
    return SshCommand(builder_alias(build_id), user, host, key_file, key_dir / KNOWN_HOSTS,
                      prefix=prefix.split(), command=command)


def _recipe_user(settings: Settings, recipe: str | None) -> str:
    from bakery.config.recipe import load_recipe

    try:
        return load_recipe(settings.recipes, recipe).builder.ssh.user if recipe else "admin"
    except ConfigError:
        return "admin"


def _launched(settings: Settings, env: Environment | None, iid: str, console: Callable[[], str], prefix: str,
              host: str, key: str | None, user: str | None, command: str | None) -> SshCommand:
    access = env.ssh if env is not None else None
    where = f"{env.path}: ssh.key_file" if env is not None else "ssh"
    chosen = key or (access.key_file if access else None)
    if chosen is None:
        raise ConfigError(f"{where}: no private key: give --key FILE (the private half of the tier's key pair) "
                          "or set ssh.key_file in the environment")
    key_file = user_path(chosen, settings.project_dir)
    if not key_file.is_file():
        raise ConfigError(f"{where}: {key_file} is not a file")
    try:  # cloud-init prints them as its first boot ends, which may be after sshd answers
        keys = wait_for(lambda: host_keys(console()) or None, what=f"{iid}'s SSH host keys on its console",
                        timeout=HOST_KEYS_WAIT, backoff=Backoff(initial=0.5, factor=1.5, max_interval=5.0))
    except WaitTimeout:
        raise ConfigError(f"ssh: {iid}: its console shows no SSH host keys after {HOST_KEYS_WAIT:g} s (cloud-init "
                          "prints them at the end of its first boot; EC2 may take minutes to show a console): "
                          "try again shortly") from None
    known = write_known_hosts(settings.state / KNOWN_HOSTS / iid, iid, keys)
    jump = None
    if access is not None and access.bastion is not None:
        b = access.bastion
        jump = Jump(b.host, b.user, b.port, user_path(b.key_file, settings.project_dir) if b.key_file else None)
    return SshCommand(iid, user or (access.user if access else "admin"), host, key_file, known,
                      prefix=prefix.split(), jump=jump, command=command)
