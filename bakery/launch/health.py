"""Health checks of launched instances, made from where the environment says their clients are.

A tier's `health_check` probes one address of each instance: the private or public address of its
interface `interface` (a hot standby, which holds the tier's persistent interfaces only once it
takes over, at its primary). It is made from the tier the check names (`from: web`: a running
instance of web, preferring an active slot, with that instance's subnet, security groups and
address), or else from outside any instance (`OUTSIDE`, bakery.remote.dial). Either way it
crosses the network as that client's traffic would, so it passes only when the environment's
rules let that client in. How the connection gets to its starting point is the dial's business:
on the local cloud a socket opened in the vantage's network namespace, where addresses are routed
an SSH hop through the vantage, logged in as `invoke ssh` logs in (the environment's `ssh`).

The same check is the launch's readiness (`launch/run.py`) and what `invoke failover` asks of the
instance that gave up the interfaces before it becomes the new hot standby (`failover_probe`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from bakery.cloud import tags as T
from bakery.cloud.connect import Cloud, logs_in_at_vantages
from bakery.cloud.console import host_keys
from bakery.config.environment import Environment, HealthCheck
from bakery.config.settings import Settings, user_path
from bakery.errors import ConfigError, RemoteError, WaitTimeout
from bakery.network.eni import Probe, running_probe
from bakery.remote.dial import OUTSIDE, Bastion, Login, Machine, Opener, Route, Vantage, address_of
from bakery.remote.health import check_until

#: a standby that cannot answer its check within this is not one
PROBE_SECONDS = 10.0
#: how often a check that waits for its vantage (an instance of the tier it is made from, not
#: running yet) asks EC2 again: the probes themselves run every 0.25 s, the lookups need not
VANTAGE_LOOKUP_SECONDS = 2.0


class TierCheck:
    """A tier's http/tcp check, ready to be made against any of its instances."""

    def __init__(self, cloud: Cloud, env: Environment, tier: str, check: HealthCheck, project_dir: Path):
        self.cloud, self.env, self.tier, self.check = cloud, env, tier, check
        self.project_dir = project_dir
        self._vantage: Machine | None = None
        self._looked = 0.0
        self._keys: dict[str, tuple[str, ...]] = {}  # vantage instance -> its host keys, once on its console
        self._console_read = 0.0
        self._lock = threading.Lock()  # every instance's check runs on its own thread

    def until(self, instance_id: str, deadline: float) -> None:
        """Poll until the check passes; a WaitTimeout naming the instance and the last problem."""
        instance = self.cloud.ec2.describe_instance(instance_id)
        if instance is None:
            raise RemoteError(f"{instance_id}: EC2 no longer knows it")
        target = Machine.at_interface(instance, self.check.interface) or Machine.at_interface(instance, 0) \
            or Machine.of(instance)
        opener = _Deferred(address_of(target, Route(address=self.check.address)), lambda: self._opener(target))
        try:
            check_until(opener, instance_id, self.check, deadline)
        finally:
            opener.close()

    def _opener(self, target: Machine) -> Opener:
        """The dial's way to the target's port from the check's vantage; ConnectionRefusedError
        (retried by the check) while the vantage tier has no running instance."""
        if self.check.from_ is None:
            vantage = OUTSIDE
        else:
            machine = self._vantage_machine()
            vantage = Vantage(machine, login=lambda: self._login(machine))
        return self.cloud.dial(target, self.check.port, Route(address=self.check.address, vantage=vantage))

    def _vantage_machine(self) -> Machine:
        with self._lock:
            if self._vantage is None and time.monotonic() - self._looked >= VANTAGE_LOOKUP_SECONDS:
                self._looked = time.monotonic()
                found = self.cloud.ec2.tier_instances(self.env.name, self.check.from_, states=("running",))
                # an active slot first: it holds the tier's persistent interfaces, its real place
                found.sort(key=lambda i: (not T.tags_of(i).get(T.SLOT, "").isdigit(), T.tags_of(i).get(T.SLOT, "")))
                if found:
                    self._vantage = Machine.of(found[0])
            if self._vantage is None:
                raise ConnectionRefusedError(f"no running {self.check.from_} instance to check from yet")
            return self._vantage

    def _login(self, machine: Machine) -> Login:
        """How to log in to the vantage (where the dial needs to): as `invoke ssh` does."""
        access = self.env.ssh  # its key_file is there: require_logins said so before the launch
        with self._lock:  # every instance's check asks; the console is read at most every few seconds
            keys = self._keys.get(machine.instance_id)
            if keys is None and time.monotonic() - self._console_read >= VANTAGE_LOOKUP_SECONDS:
                self._console_read = time.monotonic()
                found = tuple(host_keys(self.cloud.ec2.console_output(machine.instance_id)))
                keys = self._keys[machine.instance_id] = found if found else None
        if not keys:  # cloud-init prints them as its first boot ends
            raise ConnectionRefusedError(f"{machine.instance_id}'s SSH host keys are not on its console yet")
        b = access.bastion
        bastion = b and Bastion(b.host, b.port, b.user, b.key_file and str(user_path(b.key_file, self.project_dir)))
        return Login(access.user, str(user_path(access.key_file, self.project_dir)), keys, bastion=bastion)


def require_logins(settings: Settings, env: Environment, tiers: list[str]) -> None:
    """Refused before the cloud is opened: a check made from another tier, where the dial starts it
    by logging in to that tier's instance, with no key to log in with."""
    if not logs_in_at_vantages(settings):
        return
    for name in tiers:
        check = env.tiers[name].health_check
        if check is None or check.from_ is None:
            continue
        key = user_path(env.ssh.key_file, settings.project_dir) if env.ssh.key_file is not None else None
        if key is None or not key.is_file():
            what = "is not set" if key is None else f"{key} is not a file"
            raise ConfigError(f"{env.path}: ssh.key_file: {what}; tiers.{name}.health_check.from: {check.from_} "
                              f"logs in to a {check.from_} instance to check {name} from there")
        bastion = env.ssh.bastion
        if bastion is not None and bastion.key_file is not None \
                and not user_path(bastion.key_file, settings.project_dir).is_file():
            raise ConfigError(f"{env.path}: ssh.bastion.key_file: {user_path(bastion.key_file, settings.project_dir)} "
                              f"is not a file; tiers.{name}.health_check.from: {check.from_} logs in through it")


class _Deferred:
    """An Opener (same face) made on the first attempt that can make it: the vantage may not run yet."""

    def __init__(self, host: str, make: Callable[[], Opener]):
        self.host = host
        self._make, self._opener = make, None

    @property
    def where(self) -> str:
        return self._opener.where if self._opener is not None else ""

    def open(self, timeout: float):
        if self._opener is None:
            self._opener = self._make()
        return self._opener.open(timeout)

    def close(self) -> None:
        if self._opener is not None:
            self._opener.close()


def failover_probe(cloud: Cloud, env: Environment, tier: str, project_dir: Path) -> Probe:
    """Running, and passing the tier's http/tcp health check (from its vantage, within
    PROBE_SECONDS) when it declares one: what a hot standby must be."""
    check = env.tiers[tier].health_check

    def probe(instance: dict) -> str | None:
        problem = running_probe(instance)
        if problem is not None or check is None or check.type == "cloud-init":
            return problem
        try:
            TierCheck(cloud, env, tier, check, project_dir).until(instance["InstanceId"],
                                                                  deadline=time.monotonic() + PROBE_SECONDS)
        except (WaitTimeout, RemoteError) as exc:
            return f"its {check.type} health check: {exc.message}"
        return None
    return probe
