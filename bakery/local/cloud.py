"""The local cloud: a moto endpoint, and real machines (sandboxes) behind its instances.

This module owns the machines and the durable image store: it boots, stops and destroys
sandboxes, wires ENIs into the VPC fabric, captures and forgets image layers, and opens a
socket to an instance's port inside its network namespace (sandboxes have no routed address).
It makes no API calls: the endpoint process (server.py) owns moto's state, and its control
plane and reconciler (control.py, reconcile.py) drive these machines from it, whichever client
asked. Other processes (bakery's client) only start and stop the endpoint, read status, and
open a socket to an instance's port.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from bakery.local.base import ensure_base_image, load_base_metadata
from bakery.local.endpoint import Endpoint
from bakery.local.errors import LocalCloudError
from bakery.local.internet import Internet
from bakery.local.layers import LayerStore
from bakery.local.linklocal import RESOLVER_IP
from bakery.local.netns import tcp_connect
from bakery.local.sandbox import NETNS_DIR, Sandbox
from bakery.local.vpcnet import VpcFabric

log = logging.getLogger("bakery.local")

DEBIAN_OWNER = "136693071363"  # Debian's AWS account: recipes filter on it, here as on AWS
LOCAL_ACCOUNT = "123456789012"  # moto's account: images we bake are owned by "self"


class LocalCloud:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.layers = LayerStore(data_dir / "images")
        self.instances_dir = data_dir / "instances"
        self.consoles_dir = data_dir / "consoles"  # the last console of each instance whose machine is gone
        self.endpoint = Endpoint(data_dir)
        self.fabric = VpcFabric(data_dir)
        #: the local cloud's internet: its only way out of this machine (internet.py)
        self.internet = Internet(data_dir)
        #: called with a machine's network namespace before it boots (the endpoint's reconciler
        #: wires the instance's ENIs there, so its cloud-init reaches the metadata service)
        self.before_boot: Callable[[str], None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def ensure_base(self, log: Callable[[str], None] = print) -> str:
        """Build (once) and register the Debian base image; returns its AMI id."""
        rootfs = ensure_base_image(self.data_dir, log=log)
        meta = load_base_metadata(rootfs)
        image_id = str(meta["id"])
        try:
            self.layers.meta(image_id)
        except LocalCloudError:
            created = str(meta["created"])
            # Debian's naming (debian-12-amd64-YYYYMMDD-NNNN) so the official source filter matches.
            name = f"debian-12-amd64-{created[:10].replace('-', '')}-{created[11:16].replace(':', '')}"
            self.layers.add_base(image_id, rootfs, {"ec2": {
                "name": name, "description": "Debian 12 (bookworm) local base: cloud-init, openssh-server",
                "owner_id": DEBIAN_OWNER, "creation_date": created, "tags": {}}})
        return image_id

    def up(self, log: Callable[[str], None] = print) -> str:
        """Start the endpoint if needed (building the base image the first time); returns its URL."""
        url = self.endpoint.running_url()
        if url:
            return url
        from bakery.local.prereqs import require

        require()
        self.ensure_base(log)
        return self.endpoint.up(self.registered_images())

    def down(self, *, purge: bool = False) -> dict[str, int]:
        """Stop the endpoint (which saves its state), then every machine: instances come back
        stopped at the next `up`, with their disks. `purge` destroys them instead and forgets the
        endpoint's state (key pairs, networks, parameters: a fresh cloud); images always stay."""
        stopped = self.endpoint.down()  # first: its reconciler must not restart what goes next
        done, failures = 0, []
        for box in self.sandboxes():
            try:
                if purge:
                    box.destroy()
                    done += 1
                elif box.is_running():
                    box.stop()
                    done += 1
            except LocalCloudError as exc:  # keep going: one stuck sandbox must not strand the rest
                failures.append(exc.message)
        try:
            self.fabric.teardown()
        finally:  # the internet namespace and its slirp go even when a VPC namespace would not
            self.internet.teardown()
        if purge:
            self.endpoint.forget_state()
            shutil.rmtree(self.consoles_dir, ignore_errors=True)  # their instances are forgotten too
        if failures:
            raise LocalCloudError(f"local.down: {len(failures)} instance(s) could not be "
                                  f"{'removed' if purge else 'stopped'}: {failures[0]}")
        return {"instances_destroyed" if purge else "instances_stopped": done, "endpoint_stopped": int(stopped)}

    def sandboxes(self) -> list[Sandbox]:
        if not self.instances_dir.is_dir():
            return []
        return [Sandbox.attach(d.name, self.instances_dir) for d in sorted(self.instances_dir.iterdir())
                if (d / "sandbox.json").is_file()]

    def registered_images(self) -> list[dict]:
        """The layer store's images in MOTO_AMIS_PATH form (moto's Ami constructor arguments)."""
        out = []
        for record in self.layers.list():
            ec2 = (record.get("meta") or {}).get("ec2")
            if not ec2 or ec2.get("deregistered"):
                continue
            out.append({"ami_id": record["id"], "name": ec2["name"], "description": ec2.get("description", ""),
                        "owner_id": ec2.get("owner_id", LOCAL_ACCOUNT), "architecture": "x86_64",
                        "virtualization_type": "hvm", "root_device_type": "ebs", "root_device_name": "/dev/xvda",
                        "creation_date": ec2.get("creation_date"), "state": "available", "public": False,
                        "tags": ec2.get("tags", {})})
        return out

    # ---- machines ---------------------------------------------------------------------

    def connect(self, instance_id: str, port: int, timeout: float):
        """A TCP socket to the instance's port, opened inside its network namespace. A machine that
        is not there (yet, or any more) refuses, as a booting or stopped instance does."""
        try:
            return Sandbox.attach(instance_id, self.instances_dir).connect(port, timeout)
        except LocalCloudError as exc:
            raise ConnectionRefusedError(f"{instance_id}: {exc.message}") from None

    def connect_from(self, start: Callable[[], str], address: str, port: int, timeout: float):
        """A TCP socket to address:port opened in the network namespace `start()` names (another
        instance's, the internet's, a subnet's probe host): it crosses the VPC's gateways and
        firewall as that position's traffic does. One that is not there (yet) refuses."""
        try:
            return tcp_connect(start(), address, port, timeout)
        except LocalCloudError as exc:
            raise ConnectionRefusedError(exc.message) from None

    def internet_netns(self) -> str:
        if not self.internet.exists():
            raise LocalCloudError("the local cloud's internet namespace is not up")
        return self.internet.netns

    def netns(self, instance_id: str) -> str:
        return Sandbox.attach(instance_id, self.instances_dir).netns

    def has_netns(self, instance_id: str) -> bool:
        """Whether the instance's machine has its network namespace: it runs, or is booting."""
        return (NETNS_DIR / f"bakery-{instance_id}").exists()

    def has_machine(self, instance_id: str) -> bool:
        return (self.instances_dir / instance_id / "sandbox.json").is_file()

    def boot(self, instance_id: str, image_id: str, *, private_ip: str | None) -> Sandbox:
        """Start the instance's machine from the image's layers. It has no seed: its cloud-init
        finds its user data and keys at the metadata service, as on EC2. It has no way out of its
        own either: it reaches beyond its VPC as the VPC's gateways allow (gateways.py)."""
        try:
            lowers = self.layers.lowers(image_id)
        except LocalCloudError as exc:
            raise LocalCloudError(f"cannot boot {instance_id}: {exc.message}") from None
        hostname = "ip-" + (private_ip or "10.0.0.1").replace(".", "-")
        return Sandbox.start(instance_id, lowers, self.instances_dir, user_data=None, meta_data=None,
                             egress=False, hostname=hostname, before_boot=self.before_boot,
                             nameserver=RESOLVER_IP)

    def machine_ids(self) -> list[str]:
        return [box.name for box in self.sandboxes()]

    def console_output(self, instance_id: str) -> str:
        """What the machine printed while it booted; once it is gone, what it printed last and why it
        ended, as EC2 still shows a terminated instance's console ('' when it never had one)."""
        if self.has_machine(instance_id):
            return Sandbox.attach(instance_id, self.instances_dir).boot_log()
        kept = self.consoles_dir / f"{instance_id}.log"
        return kept.read_text(errors="replace") if kept.is_file() else ""

    def machine_info(self, instance_id: str) -> dict:
        """Where the instance's machine lives on this host: its state, network namespace, init's PID."""
        if not self.has_machine(instance_id):
            return {"machine": "none", "netns": None, "init_pid": None}
        box = Sandbox.attach(instance_id, self.instances_dir)
        running = box.is_running()
        return {"machine": "running" if running else "stopped", "netns": box.netns if running else None,
                "init_pid": box.pid if running else None}

    def machine_state(self, instance_id: str) -> str:
        """'none' (no machine), 'running' or 'stopped'."""
        if not self.has_machine(instance_id):
            return "none"
        return "running" if Sandbox.attach(instance_id, self.instances_dir).is_running() else "stopped"

    def start(self, instance_id: str) -> None:
        """Start a stopped machine again: same disk, same instance data (StartInstances)."""
        Sandbox.resume(instance_id, self.instances_dir, before_boot=self.before_boot, egress=False)

    def stop(self, instance_id: str) -> None:
        if self.has_machine(instance_id):
            self._unwire(instance_id)
            Sandbox.attach(instance_id, self.instances_dir).stop()

    def reboot(self, instance_id: str) -> None:
        self.stop(instance_id)
        self.start(instance_id)

    def destroy(self, instance_id: str, why: str = "") -> None:
        """The machine and its interfaces go; its console stays readable (with ``why`` it ended)."""
        if not self.has_machine(instance_id) and not why:
            return
        text = self.console_output(instance_id) + (f"\n[local cloud] {why}\n" if why else "")
        try:
            self.consoles_dir.mkdir(parents=True, exist_ok=True)
            (self.consoles_dir / f"{instance_id}.log").write_text(text)
        except OSError as exc:  # a console is worth a warning, not a machine left behind
            log.warning("keeping the console of %s: %s", instance_id, exc)
        if self.has_machine(instance_id):
            self._unwire(instance_id)
            Sandbox.attach(instance_id, self.instances_dir).destroy()

    def _unwire(self, instance_id: str) -> None:
        netns = f"bakery-{instance_id}"
        for eni, att in self.fabric.status()["attachments"].items():
            if att["netns"] == netns:
                self.fabric.detach(eni)

    def wire_all(self, desired: dict) -> None:
        """Make the VPC fabric hold exactly these ENIs (eni id -> moto_state.Wiring) on their machines."""
        attached = self.fabric.status()["attachments"]
        for eni_id, att in attached.items():
            w = desired.get(eni_id)
            if w is None or not att["live"] or (att["netns"], att["device_index"], att["subnet"]) != (
                    f"bakery-{w.instance_id}", w.device_index, w.subnet_id):
                self.fabric.detach(eni_id)
        attached = self.fabric.status()["attachments"]
        for eni_id, w in desired.items():
            att = attached.get(eni_id)
            if att is None:
                self.wire(eni_id, w.instance_id, w.device_index, vpc_id=w.vpc_id, subnet_id=w.subnet_id,
                          cidr=w.cidr, mac=w.mac, ips=list(w.ips), source_dest_check=w.source_dest_check)
                continue
            if set(w.ips) - set(att["ips"]):
                self.fabric.add_ips(eni_id, list(w.ips))
            if att["source_dest_check"] != w.source_dest_check:
                self.fabric.set_source_dest_check(eni_id, w.source_dest_check)

    def wire(self, eni_id: str, instance_id: str, device_index: int, *, vpc_id: str, subnet_id: str, cidr: str,
             mac: str, ips: list[str], source_dest_check: bool) -> None:
        """Give the instance's machine a veth for this ENI: its MAC, its IPs, on its subnet's bridge."""
        if not self.has_machine(instance_id):
            return
        net = ipaddress.IPv4Network(cidr)
        if not ips or any(ipaddress.IPv4Address(ip) not in net for ip in ips):
            return  # moto's default VPC hands out addresses outside the subnet: nothing real to wire
        self.fabric.ensure_subnet(vpc_id, subnet_id, cidr)
        box = Sandbox.attach(instance_id, self.instances_dir)
        self.fabric.attach(eni_id, subnet_id, box.netns, device_index, mac, ips, source_dest_check)

    # ---- images -------------------------------------------------------------------------

    def capture_image(self, instance_id: str, image_id: str, parent: str, *, name: str, description: str,
                      tags: dict[str, str]) -> None:
        """The machine's changes become the image's layer (a running machine's as they are: the
        caller stops it first for a consistent copy, as EC2 reboots unless NoReboot)."""
        box = Sandbox.attach(instance_id, self.instances_dir)
        tmp = Path(tempfile.mkdtemp(prefix=".capture-", dir=self.data_dir))
        try:
            layer = box.capture_layer(tmp / "layer.tar.zst", running_ok=True)
            self.layers.add(image_id, layer, parent, {"ec2": {
                "name": name, "description": description, "owner_id": LOCAL_ACCOUNT, "tags": tags,
                "creation_date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")}})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def set_image_tags(self, image_id: str, tags: dict[str, str]) -> None:
        """The image's tags as EC2 now has them, kept with its layer."""
        if (self.layers.root / image_id / "meta.json").is_file():
            ec2 = dict(self.layers.meta(image_id).get("meta", {}).get("ec2", {}))
            self.layers.update_meta(image_id, {"ec2": {**ec2, "tags": dict(tags)}})

    def forget_image(self, image_id: str) -> None:
        """A deregistered image's layer goes, unless images built on it still need its files."""
        if not (self.layers.root / image_id / "meta.json").is_file():
            return
        if self.layers.children(image_id):
            ec2 = dict(self.layers.meta(image_id).get("meta", {}).get("ec2", {}))
            self.layers.update_meta(image_id, {"ec2": {**ec2, "deregistered": True}})
        else:
            self.layers.remove(image_id)
