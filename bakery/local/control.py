"""The local cloud's control plane: EC2 requests from any client, with what EC2 would do to machines.

A WSGI layer in front of moto's app, in the endpoint's process. moto answers every request; after
a successful one that changes machines, this marks what real EC2 would show while it acts
(`pending` after RunInstances and StartInstances, `stopping`, `shutting-down`, an image `pending`
while its disk is captured) and hands the work to the reconciler (reconcile.py), which makes the
machines match and moves the state on. So the AWS CLI, boto3, Terraform and bakery all get the
same machines: nothing of this lives in a client any more.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import urllib.parse

from bakery.local import moto_extensions
from bakery.local import moto_state as M
from bakery.local.cloud import LocalCloud
from bakery.local.endpoint import HEALTH_PATH, STATUS_PATH, health_answer
from bakery.local.errors import LocalCloudError
from bakery.local.persist import Snapshots
from bakery.local.reconcile import Reconciler
from bakery.local.refresh import ACTIONS as REFRESH_ACTIONS
from bakery.local.refresh import Refreshes

log = logging.getLogger("bakery.local")

# Auto Scaling requests after which moto may have started or ended the group's instances.
_SCALING = ("CreateAutoScalingGroup", "UpdateAutoScalingGroup", "SetDesiredCapacity", "DeleteAutoScalingGroup",
            "TerminateInstanceInAutoScalingGroup", "ExecutePolicy", "AttachInstances", "DetachInstances")

# Requests that only read: everything else may change state and is saved before it is answered.
_READS = re.compile(r"(Describe|Get|List|Search|Lookup|Check)[A-Z]")


class OneRequestAtATime:
    """moto's app, answering one request at a time. moto keeps its backends in plain dicts and
    lists shared by every request thread and is not thread-safe (getmoto/moto#372): a request that
    iterates them while another changes them fails with an HTML 500 that no AWS client can parse
    (botocore: ResponseParserError), and a RunInstances that failed so had made its instance. Each
    request takes milliseconds in moto; the slow work around it (a machine's boot, an image's
    capture, reading a running machine's console) is done outside. `lock` is for anything else in
    the process that reads or changes moto's state (saving it, an instance refresh)."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:  # off the socket first: a slow client must not hold moto for the others
            environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(length))
        with self.lock:
            chunks = self.app(environ, start_response)
            try:
                return [b"".join(chunks)]
            finally:
                if hasattr(chunks, "close"):
                    chunks.close()


class Held:
    """Several locks taken as one, always in the order given (the control plane's: changes, then moto)."""

    def __init__(self, *locks) -> None:
        self.locks = locks

    def __enter__(self) -> None:
        for lock in self.locks:
            lock.acquire()

    def __exit__(self, *exc) -> None:
        for lock in reversed(self.locks):
            lock.release()


class ControlPlane:
    def __init__(self, app, machines: LocalCloud, reconciler: Reconciler, snapshots: Snapshots):
        """`app`: moto's app; it is served one request at a time (OneRequestAtATime)."""
        self.app = OneRequestAtATime(app)
        self.machines = machines
        self.reconciler = reconciler
        self.snapshots = snapshots
        # one change at a time, each saved before its answer leaves (reads run alongside)
        self._changes = threading.Lock()
        # a refresh changes moto from a thread of its own (it terminates, moto launches): both locks
        self.refreshes = Refreshes(Held(self._changes, self.app.lock), self.machines.machine_state,
                                   lambda: self._scaled({}, ""))
        self._after = {"RunInstances": self._ran, "StartInstances": self._started, "StopInstances": self._stopped,
                       "TerminateInstances": self._terminated, "RebootInstances": self._rebooted,
                       "CreateImage": self._image_created, "DeregisterImage": self._image_deregistered,
                       "CreateTags": self._tags_changed, "DeleteTags": self._tags_changed,
                       **{action: self._scaled for action in _SCALING}}

    def instances(self) -> list[dict]:
        """Each instance: its EC2 state and addresses, and its machine (namespace, init's host PID)."""
        out = []
        for instance in M.instances():
            machine = self.machines.machine_info(instance.id)
            out.append({"instance_id": instance.id, "state": M.state(instance), "image_id": instance.image_id,
                        "region": instance.region_name,
                        "private_ips": [ip for w in M.wirings(instance) for ip in w.ips], **machine})
        return out

    def save(self) -> None:
        """Save the endpoint's state now (after a change no request made: a machine came up)."""
        with self._changes:
            self._save()

    def _save(self) -> None:
        try:
            with self.app.lock:  # a whole, consistent state: no request half-way through it
                self.snapshots.save()
        except Exception:  # noqa: BLE001 - the change is made; the next save carries it
            log.exception("saving the endpoint state")

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [health_answer(self.machines.data_dir)]
        if environ.get("PATH_INFO") == STATUS_PATH:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"instances": self.instances()}).encode()]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        action, params = _ec2_request(environ, body)
        if action in REFRESH_ACTIONS:  # what moto lacks: Auto Scaling's instance refresh (refresh.py)
            status, answer = self.refreshes.answer(action, params)
            start_response(f"{status} {'OK' if status == 200 else 'Bad Request'}", [("Content-Type", "text/xml")])
            return [answer]
        if action == "GetConsoleOutput" and re.fullmatch(r"i-[0-9a-f]{8,17}", params.get("InstanceId", "")):
            read = moto_extensions.console_read.set((params["InstanceId"],
                                                     self.machines.console_output(params["InstanceId"])))
            try:
                return [self._serve(environ, start_response, action, params)]
            finally:
                moto_extensions.console_read.reset(read)
        if _reads_only(environ, action):
            return [self._serve(environ, start_response, action, params)]
        with self._changes:
            out = self._serve(environ, start_response, action, params)
            self._save()
        return [out]

    def _serve(self, environ, start_response, action, params) -> bytes:
        status: list[int] = []

        def record(line, headers, exc_info=None):
            status.append(int(line.split()[0]))
            return start_response(line, headers, exc_info)

        chunks = self.app(environ, record)
        try:
            out = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        if action and status and status[0] < 300:
            try:
                self._after.get(action, self._other)(params, out.decode(errors="replace"))
            except Exception:  # noqa: BLE001 - the answer stands; the reconciler catches up
                log.exception("after %s", action)
        return out

    # ---- instances ----------------------------------------------------------------------------

    def _mark(self, ids: list[str], shown: str, when: tuple[str, ...]) -> None:
        for iid in ids:
            instance = M.find_instance(iid)
            if instance is not None and M.state(instance) in when:
                M.set_state(instance, shown)
        self.reconciler.nudge()

    def _ran(self, params: dict, response: str) -> None:
        self._mark(re.findall(r"<instanceId>(i-[0-9a-f]+)</instanceId>", response), "pending", ("running",))

    def _started(self, params: dict, response: str) -> None:
        self._mark(_listed(params, "InstanceId"), "pending", ("running",))

    def _stopped(self, params: dict, response: str) -> None:
        self._mark(_listed(params, "InstanceId"), "stopping", ("stopped",))

    def _terminated(self, params: dict, response: str) -> None:
        self._mark(_listed(params, "InstanceId"), "shutting-down", ("terminated",))

    def _scaled(self, params: dict, response: str) -> None:
        """Auto Scaling started or ended instances inside moto (no EC2 request of their own):
        shown as EC2 shows them while the machines follow, `pending` until a new one has booted
        and `shutting-down` until an ended one's machine is gone."""
        for instance in M.instances():
            if not M.scaled(instance):
                continue
            have, shown = self.machines.machine_state(instance.id), M.state(instance)
            if shown == "running" and have == "none":
                M.set_state(instance, "pending")
            elif shown == "terminated" and have != "none":
                M.set_state(instance, "shutting-down")
        self.reconciler.nudge()

    def _rebooted(self, params: dict, response: str) -> None:
        self.reconciler.reboot(_listed(params, "InstanceId"))

    # ---- images ---------------------------------------------------------------------------------

    def _image_created(self, params: dict, response: str) -> None:
        """The image is `pending` while the instance's disk becomes its layer; EC2 reboots the
        instance for a consistent copy unless NoReboot, and so does this (stop, capture, start)."""
        found = re.search(r"<imageId>(ami-[0-9a-f]+)</imageId>", response)
        instance = M.find_instance(params.get("InstanceId", ""))
        image = M.find_image(found.group(1)) if found else None
        if instance is None or image is None:
            return
        image.state = "pending"
        no_reboot = params.get("NoReboot", "false").lower() == "true"

        def capture():
            try:
                running = self.machines.machine_state(instance.id) == "running"
                if running and not no_reboot:
                    self.machines.stop(instance.id)
                self.machines.capture_image(instance.id, image.id, instance.image_id, name=image.name or image.id,
                                            description=image.description or "", tags=M.image_tags(image))
                if running and not no_reboot and M.state(instance) in ("pending", "running"):
                    self.machines.start(instance.id)
                image.state = "available"
            except LocalCloudError as exc:
                log.error("image %s from %s: %s", image.id, instance.id, exc.message)
                image.state = "failed"
            self.save()
        self.reconciler.run_exclusively(instance.id, capture)

    def _image_deregistered(self, params: dict, response: str) -> None:
        self.machines.forget_image(params.get("ImageId", ""))

    def _tags_changed(self, params: dict, response: str) -> None:
        """The layer store keeps an image's tags, so they outlive the endpoint."""
        for rid in _listed(params, "ResourceId"):
            image = M.find_image(rid) if rid.startswith("ami-") else None
            if image is not None:
                self.machines.set_image_tags(rid, M.image_tags(image))

    def _other(self, params: dict, response: str) -> None:
        self.reconciler.nudge()  # ENI moves, secondary IPs, source/dest check: the fabric follows


def _ec2_request(environ, body: bytes) -> tuple[str | None, dict[str, str]]:
    """The EC2 (query protocol) action and its parameters; (None, {}) for other services."""
    query = environ.get("QUERY_STRING", "")
    form = body.decode(errors="replace") if environ.get("CONTENT_TYPE", "").startswith(
        "application/x-www-form-urlencoded") else ""
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(f"{query}&{form}", keep_blank_values=True).items()}
    action = params.get("Action")
    return (action, params) if action and "Version" in params else (None, {})


def _reads_only(environ, action: str | None) -> bool:
    """EC2's Describe*/Get*, a JSON service's target (AmazonSSM.GetParameter), moto's own API, a GET."""
    if environ.get("PATH_INFO", "").startswith("/moto-api/"):
        return environ.get("REQUEST_METHOD") == "GET"
    name = action or environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
    if name:
        return bool(_READS.match(name))
    return environ.get("REQUEST_METHOD") in ("GET", "HEAD")


def _listed(params: dict[str, str], name: str) -> list[str]:
    """A query-protocol list (InstanceId.1, InstanceId.2, ...) in order."""
    keys = sorted((k for k in params if re.fullmatch(rf"{name}\.\d+", k)), key=lambda k: int(k.rpartition(".")[2]))
    return [params[k] for k in keys]
