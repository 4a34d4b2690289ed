"""The local cloud's reconciler: the machines follow moto's view of every instance, whoever asked.

EC2's state machine is moto's; this makes the host match it. An instance moto calls `pending` gets
a machine booted from its image (then `running`); `stopping` is stopped (then `stopped`);
`pending` again after a stop starts the same machine (its disk kept); `shutting-down` is destroyed
(then `terminated`); a reboot restarts it. A machine that fails to boot makes its instance
`terminated` with the reason, as EC2 does. Because the reconciler reads moto's state rather than
reacting to requests, instances that come from any client or any path (the AWS CLI, an Auto
Scaling group) get machines too; the control plane (control.py) only marks what a request changed
and nudges it.

Each instance's work runs on one worker at a time (a boot does not block another instance's stop),
and the VPC fabric is brought in line with the ENIs attached to live machines after every pass and
before each machine boots (its ENIs, its firewall, its way out and the metadata service are there
before its init runs, as on EC2).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from bakery.local import firewall, gateways
from bakery.local import moto_network as N
from bakery.local import moto_state as M
from bakery.local.cloud import LocalCloud
from bakery.local.errors import LocalCloudError
from bakery.local.imds import MetadataService
from bakery.local.linklocal import PerVpc
from bakery.local.resolver import VpcResolver

log = logging.getLogger("bakery.local")

# moto state -> what the machine must be, and the state the instance moves to once it is
_TARGET = {"pending": ("running", "running"), "running": ("running", None),
           "stopping": ("stopped", "stopped"), "stopped": ("stopped", None),
           "shutting-down": ("none", "terminated"), "terminated": ("none", None)}


class Reconciler:
    def __init__(self, machines: LocalCloud, workers: int = 4, period: float = 1.0,
                 link_local: Sequence[PerVpc] | None = None):
        self.machines = machines
        self.period = period
        self.changed = lambda: None  # called after the reconciler moved an instance's state (to save it)
        #: the services every VPC's namespace answers at link-local addresses (linklocal.py)
        self.link_local = list(link_local) if link_local is not None else [MetadataService(), VpcResolver()]
        machines.before_boot = lambda netns: self._wire()
        self._wire_lock = threading.Lock()  # one pass over the fabric at a time (the loop, booting workers)
        self._wake = threading.Event()
        self._busy: set[str] = set()
        self._reboots: set[str] = set()
        self._jobs: dict[str, list] = {}  # instance -> work queued for its worker (an image capture)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="machine")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def adopt(self) -> None:
        """After the endpoint (re)starts with its saved state: instances whose machines still run are
        running; those whose machines stopped with the host or with `local.down` are stopped; those
        whose machines are gone are terminated; machines no instance claims are removed."""
        known = set()
        for instance in M.instances():
            known.add(instance.id)
            have, state = self.machines.machine_state(instance.id), M.state(instance)
            if state in ("pending", "running", "stopping"):
                if have == "running" and state == "pending":
                    M.set_state(instance, "running")
                elif have == "stopped":
                    M.set_state(instance, "stopped", ("Client.UserInitiatedShutdown",
                                                      "Client.UserInitiatedShutdown: the local cloud was stopped"))
                elif have == "none":
                    M.set_state(instance, "terminated", ("Server.InternalError",
                                                         "Server.InternalError: the instance's machine was lost"))
            elif state == "stopped" and have == "running":
                self.machines.stop(instance.id)
        for iid in self.machines.machine_ids():
            if iid not in known:
                log.warning("removing machine %s: no instance of this endpoint claims it", iid)
                self.machines.destroy(iid)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self._pool.shutdown(wait=True)
        for service in self.link_local:
            service.close_all()

    def nudge(self) -> None:
        """Something changed: reconcile now rather than at the next tick."""
        self._wake.set()

    def reboot(self, instance_ids: list[str]) -> None:
        with self._lock:
            self._reboots.update(instance_ids)
        self.nudge()

    def run_exclusively(self, instance_id: str, job) -> None:
        """Queue `job` for the instance's worker (after whatever it is doing), e.g. capturing an image.
        Returns at once: the caller may hold the endpoint's change lock, which the worker may need."""
        with self._lock:
            self._jobs.setdefault(instance_id, []).append(job)
        self.nudge()

    # ---- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.period)
            self._wake.clear()
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad pass; the next retries
                log.exception("reconcile pass failed")

    def reconcile(self) -> None:
        with self._lock:
            queued = [iid for iid, jobs in self._jobs.items() if jobs]
        for iid in queued:
            if self._claim(iid):
                self._pool.submit(self._run_jobs, iid)
        for instance in M.instances():
            iid = instance.id
            want, then = _TARGET.get(M.state(instance), ("running", None))
            have = self.machines.machine_state(iid)
            with self._lock:
                reboot = iid in self._reboots and want == "running" and have == "running"
            if (want == have and then is None and not reboot) or not self._claim(iid):
                continue
            self._pool.submit(self._converge, instance, want, then, reboot)
        self._wire()

    def _claim(self, iid: str) -> bool:
        with self._lock:
            if iid in self._busy:
                return False
            self._busy.add(iid)
            return True

    def _run_jobs(self, iid: str) -> None:
        try:
            while True:
                with self._lock:
                    jobs = self._jobs.get(iid)
                    if not jobs:
                        self._jobs.pop(iid, None)
                        return
                    job = jobs.pop(0)
                try:
                    job()
                except Exception:  # noqa: BLE001 - a job reports its own failure; the worker goes on
                    log.exception("instance %s: queued work failed", iid)
        finally:
            self._release(iid)

    def _release(self, iid: str) -> None:
        with self._lock:
            self._busy.discard(iid)
        self.nudge()

    def _converge(self, instance, want: str, then: str | None, reboot: bool) -> None:
        iid = instance.id
        try:
            have = self.machines.machine_state(iid)
            if reboot:
                with self._lock:
                    self._reboots.discard(iid)
                self.machines.reboot(iid)
            elif want == "running" and have == "none":
                self.machines.boot(iid, instance.image_id, private_ip=instance.private_ip)
            elif want == "running" and have == "stopped":
                self.machines.start(iid)
            elif want == "stopped" and have == "running":
                self.machines.stop(iid)
            elif want == "none" and have != "none":
                self.machines.destroy(iid)
            if then is not None and M.state(instance) in ("pending", "stopping", "shutting-down"):
                M.set_state(instance, then)
                self.changed()
        except LocalCloudError as exc:
            log.error("instance %s: %s", iid, exc.message)
            if want == "running":  # EC2: an instance that cannot start ends terminated, with the reason
                self._fail(instance, exc.message)
        except Exception:  # noqa: BLE001 - one instance's failure must not stop the others'
            log.exception("instance %s: converging to %s failed", iid, want)
        finally:
            self._release(iid)

    def _fail(self, instance, why: str) -> None:
        try:
            self.machines.destroy(instance.id, why=f"the instance did not boot: {why}")
        except LocalCloudError as exc:
            log.error("instance %s: cleaning up after a failed boot: %s", instance.id, exc.message)
        M.set_state(instance, "terminated", ("Server.InternalError", f"Server.InternalError: {why}"[:255]))
        self.changed()

    def _wire(self) -> None:
        """The VPC fabric holds exactly the ENIs attached to live machines (running, or booting: their
        namespace exists) as moto has them, enforces the VPCs' network policy (firewall.py), reaches
        the internet as their gateways and route tables say (gateways.py), and the link-local
        services (metadata, DNS, the AWS APIs) answer in every VPC's namespace."""
        with self._wire_lock:
            desired = {}
            for instance in M.instances():
                if M.state(instance) in ("pending", "running") and self.machines.has_netns(instance.id):
                    for wiring in M.wirings(instance):
                        desired[wiring.eni_id] = wiring
            try:
                self.machines.wire_all(desired)
            except LocalCloudError as exc:
                log.error("wiring the VPC fabric: %s", exc.message)
            try:  # then every VPC's security groups, ACLs and source/dest checks, loaded only when changed
                firewall.apply(self.machines.fabric, N.policies())
            except LocalCloudError as exc:
                log.error("the VPC firewall: %s", exc.message)
            try:  # and the way out: internet gateways, route tables, NAT gateways, public addresses
                gateways.apply(self.machines.fabric, self.machines.internet, N.egress(), M.public_addresses())
            except LocalCloudError as exc:
                log.error("the VPC gateways: %s", exc.message)
            vpcs = {vpc_id: rec["netns"] for vpc_id, rec in self.machines.fabric.layout()["vpcs"].items()}
            for service in self.link_local:
                service.sync(vpcs)
