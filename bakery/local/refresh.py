"""Auto Scaling instance refresh for the local cloud's endpoint, as AWS documents it (moto 5.2 has
none): StartInstanceRefresh, DescribeInstanceRefreshes, CancelInstanceRefresh, RollbackInstanceRefresh.

A refresh replaces a group's instances with instances of its launch template (or of the
`DesiredConfiguration` it names, which the group keeps once the refresh succeeds), in batches
small enough that `MinHealthyPercentage` of the desired capacity stays in service: each batch's
instances are terminated and Auto Scaling launches their replacements; the next batch starts once
those have booted and their `InstanceWarmup` has passed. With `SkipMatching`, instances already on
the desired launch template version are left alone. A replacement that does not boot fails the
refresh (`Failed`, with the reason), and the group keeps the launch template it had. Cancelling
stops it after the batch in progress (`Cancelled`). Rolling back (asked for, or by itself on a
failure with `AutoRollback`) stops it after that batch, puts back the launch template the group
had and replaces every instance the refresh made from it, in the same batches
(`RollbackInProgress`, then `RollbackSuccessful` or `RollbackFailed`); a refresh started without
a DesiredConfiguration has nothing to return to and is refused (`IrreversibleInstanceRefresh`).
One refresh per group at a time: another start is refused with `InstanceRefreshInProgress`.

Healthy here means EC2's health: the instance's machine has booted (an ELB health check is not
modelled). Refresh records live in the endpoint's memory: a restarted endpoint forgets them.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable
from xml.sax.saxutils import escape

from bakery.local import moto_state as M

log = logging.getLogger("bakery.local")

ACTIONS = ("StartInstanceRefresh", "DescribeInstanceRefreshes", "CancelInstanceRefresh", "RollbackInstanceRefresh")
NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
ACTIVE = ("Pending", "InProgress", "Cancelling", "RollbackInProgress")
BOOT_DEADLINE = 600.0  # a replacement that has not booted by then fails the refresh


class RefreshError(Exception):
    """An error answer: (code, message), HTTP 400."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Refresh:
    id: str
    group: str
    min_healthy: int
    warmup: float
    skip_matching: bool
    template: dict | None          # DesiredConfiguration.LaunchTemplate, or None: the group's own
    status: str = "Pending"
    reason: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ended: datetime | None = None
    auto_rollback: bool = False    # Preferences.AutoRollback: a failed refresh rolls back by itself
    to_update: int = 0
    updated: int = 0
    made: list[str] = field(default_factory=list)  # the instances it launched
    cancel: threading.Event = field(default_factory=threading.Event)        # stop after the batch in progress
    rolling_back: threading.Event = field(default_factory=threading.Event)  # ... and then roll back

    def percentage(self) -> int:
        return 100 if self.status == "Successful" else (100 * self.updated // self.to_update if self.to_update else 0)


class Refreshes:
    """The endpoint's instance refreshes. `changes` is the control plane's hold on moto's state
    (its change lock, then moto's own: control.py Held); `machine_state(id)` says whether an
    instance's machine has booted; `scaled()` shows what Auto Scaling started or ended as EC2 does
    (control.py)."""

    def __init__(self, changes: AbstractContextManager, machine_state: Callable[[str], str],
                 scaled: Callable[[], None]):
        self.changes = changes
        self.machine_state = machine_state
        self.scaled = scaled
        self.refreshes: list[Refresh] = []
        self._lock = threading.Lock()

    # ---- the API ----------------------------------------------------------------------------

    def answer(self, action: str, params: dict[str, str]) -> tuple[int, bytes]:
        """(HTTP status, XML body) for one of ACTIONS."""
        try:
            result = getattr(self, "_" + action)(params)
            status, body = 200, (f"<{action}Response xmlns=\"{NS}\"><{action}Result>{result}</{action}Result>"
                                 f"<ResponseMetadata><RequestId>{secrets.token_hex(8)}</RequestId></ResponseMetadata>"
                                 f"</{action}Response>")
        except RefreshError as exc:
            status, body = 400, (f"<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{exc.code}</Code>"
                                 f"<Message>{escape(exc.message)}</Message></Error>"
                                 f"<RequestId>{secrets.token_hex(8)}</RequestId></ErrorResponse>")
        return status, body.encode()

    def _StartInstanceRefresh(self, params: dict[str, str]) -> str:
        name = params.get("AutoScalingGroupName", "")
        group = _group(name)
        with self._lock:
            if any(r.group == name and r.status in ACTIVE for r in self.refreshes):
                raise RefreshError("InstanceRefreshInProgress",
                                   f"An Instance Refresh is already in progress and blocks the execution of this "
                                   f"Instance Refresh for group {name}.")
            template = None
            if any(k.startswith("DesiredConfiguration.LaunchTemplate.") for k in params):
                template = {k.rsplit(".", 1)[1]: v for k, v in params.items()
                            if k.startswith("DesiredConfiguration.LaunchTemplate.")}
                _check_template(group, template)
            warmup = params.get("Preferences.InstanceWarmup")
            refresh = Refresh(
                id=f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}-"
                   f"{secrets.token_hex(6)}",
                group=name, min_healthy=int(params.get("Preferences.MinHealthyPercentage", 90)),
                warmup=float(warmup if warmup is not None else (group.health_check_grace_period or 0)),
                skip_matching=params.get("Preferences.SkipMatching", "false").lower() == "true", template=template,
                auto_rollback=params.get("Preferences.AutoRollback", "false").lower() == "true")
            if not 0 <= refresh.min_healthy <= 100:
                raise RefreshError("ValidationError", "MinHealthyPercentage must be between 0 and 100")
            self.refreshes.append(refresh)
        threading.Thread(target=self._run, args=(refresh,), name=f"refresh {refresh.id}", daemon=True).start()
        return f"<InstanceRefreshId>{refresh.id}</InstanceRefreshId>"

    def _DescribeInstanceRefreshes(self, params: dict[str, str]) -> str:
        name = params.get("AutoScalingGroupName", "")
        _group(name)
        ids = {v for k, v in params.items() if k.startswith("InstanceRefreshIds.member.")}
        members = []
        for r in sorted(self.refreshes, key=lambda r: r.started, reverse=True):  # newest first, as AWS lists them
            if r.group != name or (ids and r.id not in ids):
                continue
            end = f"<EndTime>{_iso(r.ended)}</EndTime>" if r.ended else ""
            members.append(
                f"<member><InstanceRefreshId>{r.id}</InstanceRefreshId><AutoScalingGroupName>{escape(r.group)}"
                f"</AutoScalingGroupName><Status>{r.status}</Status><StatusReason>{escape(r.reason)}</StatusReason>"
                f"<StartTime>{_iso(r.started)}</StartTime>{end}<PercentageComplete>{r.percentage()}"
                f"</PercentageComplete><InstancesToUpdate>{max(0, r.to_update - r.updated)}</InstancesToUpdate>"
                f"<Preferences><MinHealthyPercentage>{r.min_healthy}</MinHealthyPercentage><InstanceWarmup>"
                f"{int(r.warmup)}</InstanceWarmup><SkipMatching>{str(r.skip_matching).lower()}</SkipMatching>"
                f"</Preferences></member>")
        return f"<InstanceRefreshes>{''.join(members)}</InstanceRefreshes>"

    def _CancelInstanceRefresh(self, params: dict[str, str]) -> str:
        with self._lock:
            refresh = self._active(params.get("AutoScalingGroupName", ""))
            refresh.status = "Cancelling"
            refresh.cancel.set()
        return f"<InstanceRefreshId>{refresh.id}</InstanceRefreshId>"

    def _RollbackInstanceRefresh(self, params: dict[str, str]) -> str:
        with self._lock:
            refresh = self._active(params.get("AutoScalingGroupName", ""))
            if not refresh.template:
                raise RefreshError("IrreversibleInstanceRefresh",
                                   "The instance refresh cannot be rolled back: it was started without a "
                                   "DesiredConfiguration, so there is no previous configuration to return to.")
            refresh.status = "RollbackInProgress"
            refresh.rolling_back.set()
            refresh.cancel.set()
        return f"<InstanceRefreshId>{refresh.id}</InstanceRefreshId>"

    def _active(self, name: str) -> Refresh:
        """The group's refresh in progress (or pending), which Cancel and Rollback act on."""
        _group(name)
        active = [r for r in self.refreshes if r.group == name and r.status in ("Pending", "InProgress")]
        if not active:
            raise RefreshError("ActiveInstanceRefreshNotFound",
                               f"No in progress or pending Instance Refresh found for Auto Scaling group {name}")
        return active[0]

    # ---- the work -----------------------------------------------------------------------------

    def _run(self, refresh: Refresh) -> None:
        try:
            self._refresh(refresh)
        except Exception as exc:  # noqa: BLE001 - a refresh that breaks says so in its status
            log.exception("instance refresh %s", refresh.id)
            self._end(refresh, "Failed", f"the refresh stopped: {type(exc).__name__}: {exc}")

    def _refresh(self, refresh: Refresh) -> None:
        with self.changes:
            group = _group(refresh.group)
            before = (group.ec2_launch_template, group.launch_template_version, group.provided_launch_template_version)
            old_version = _version(group)
            if refresh.template:
                _configure(group, refresh.template)
            target = _version(group)
            old = [s.instance.id for s in group.instance_states
                   if not (refresh.skip_matching and getattr(s.instance, "bakery_template_version", None) == target)]
            refresh.to_update = len(old)
            if refresh.status == "Pending":
                refresh.status = "InProgress"
        problem = self._batches(refresh, old, target, counted=True)
        if refresh.cancel.is_set() and not refresh.rolling_back.is_set():
            return self._end(refresh, "Cancelled", "Cancelled by the user.")
        if refresh.rolling_back.is_set() or (problem and refresh.auto_rollback):
            return self._roll_back(refresh, before, old_version, problem)
        if problem:
            self._restore(refresh, before)  # the group keeps the configuration it had
            return self._end(refresh, "Failed", problem)
        self._end(refresh, "Successful", "")

    def _batches(self, refresh: Refresh, ids: list[str], version: str, counted: bool) -> str | None:
        """Replace `ids` in batches from the group's current configuration (`version`), each batch
        booted and warmed up before the next; stop between batches when cancelled. What went
        wrong, or None."""
        with self.changes:
            desired = _group(refresh.group).desired_capacity or 0
        # at least MinHealthyPercentage of the desired capacity in service throughout (at least one at a time)
        batch = max(1, desired - math.ceil(desired * refresh.min_healthy / 100))
        while ids:
            if refresh.cancel.is_set():
                return None
            now, ids = ids[:batch], ids[batch:]
            with self.changes:
                group = _group(refresh.group)
                known = {s.instance.id for s in group.instance_states}
                for iid in now:
                    if iid in known:  # a scale-in may have taken it already
                        # detached without lowering the desired capacity: Auto Scaling launches its replacement
                        group.autoscaling_backend.terminate_instance(iid, should_decrement=False)
                fresh = [s.instance for s in group.instance_states if s.instance.id not in known]
                for instance in fresh:
                    instance.bakery_template_version = version
                refresh.made.extend(i.id for i in fresh)
                self.scaled()
            problem = self._boot(fresh, time.monotonic() + BOOT_DEADLINE)
            if problem:
                return problem
            refresh.cancel.wait(refresh.warmup)  # warming up; a cancel or roll-back need not wait for it
            if counted:
                refresh.updated += len(now)
        return None

    def _roll_back(self, refresh: Refresh, before: tuple, old_version: str, why: str | None) -> None:
        """Back to the configuration the group had: its launch template again, and every instance
        the refresh made replaced from it."""
        refresh.status, refresh.reason = "RollbackInProgress", why or "Rollback requested by the user."
        refresh.cancel.clear()
        self._restore(refresh, before)
        with self.changes:
            made = [s.instance.id for s in _group(refresh.group).instance_states if s.instance.id in refresh.made]
        problem = self._batches(refresh, made, old_version, counted=False)
        if problem:
            return self._end(refresh, "RollbackFailed", problem)
        self._end(refresh, "RollbackSuccessful", refresh.reason)

    def _restore(self, refresh: Refresh, before: tuple) -> None:
        with self.changes:
            group = _group(refresh.group)
            group.ec2_launch_template, group.launch_template_version, group.provided_launch_template_version = before

    def _boot(self, instances: list, deadline: float) -> str | None:
        """None once every instance's machine has booted; else why not."""
        while True:
            waiting = []
            for instance in instances:
                if M.state(instance) in ("shutting-down", "terminated"):
                    return f"instance {instance.id} failed to launch: {getattr(instance, '_reason', '') or 'ended'}"
                if self.machine_state(instance.id) != "running" or M.state(instance) != "running":
                    waiting.append(instance.id)
            if not waiting:
                return None
            if time.monotonic() > deadline:
                return f"instances {', '.join(waiting)} did not become healthy within {BOOT_DEADLINE:.0f} s"
            time.sleep(0.2)

    def _end(self, refresh: Refresh, status: str, reason: str) -> None:
        refresh.status, refresh.reason, refresh.ended = status, reason, datetime.now(timezone.utc)


def _group(name: str):
    """The group by name (the local cloud's accounts and regions hold one of each name)."""
    from moto.autoscaling.models import autoscaling_backends

    for account in autoscaling_backends.values():
        for backend in account.values():
            if name in backend.autoscaling_groups:
                return backend.autoscaling_groups[name]
    raise RefreshError("ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup {name} not found")


def _check_template(group, template: dict[str, str]) -> None:
    """Refuse a DesiredConfiguration whose launch template or version does not exist, as AWS does."""
    try:
        found = (group.ec2_backend.get_launch_template(template["LaunchTemplateId"]) if template.get("LaunchTemplateId")
                 else group.ec2_backend.get_launch_template_by_name(template["LaunchTemplateName"])
                 if template.get("LaunchTemplateName") else group.ec2_launch_template)
        found.get_version(template.get("Version") or "$Default")
    except Exception:  # noqa: BLE001 - moto's not-found errors, whichever it raises
        raise RefreshError("ValidationError", f"DesiredConfiguration: launch template {template} does not exist") \
            from None


def _configure(group, template: dict[str, str]) -> None:
    """Point the group at DesiredConfiguration's launch template (by id or name) and version."""
    if template.get("LaunchTemplateId"):
        group.ec2_launch_template = group.ec2_backend.get_launch_template(template["LaunchTemplateId"])
    elif template.get("LaunchTemplateName"):
        group.ec2_launch_template = group.ec2_backend.get_launch_template_by_name(template["LaunchTemplateName"])
    version = template.get("Version") or "$Default"
    group.ec2_launch_template.get_version(version)  # an unknown version is refused here
    group.launch_template_version = group.provided_launch_template_version = version


def _version(group) -> str:
    """The group's launch template version as a number ($Latest and $Default resolved)."""
    template, version = group.ec2_launch_template, group.launch_template_version
    if template is None:
        return ""
    return str(template.get_version(version).number)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
