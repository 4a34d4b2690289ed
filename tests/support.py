"""Real components shared by the tests and the benchmarks: a moto server on 127.0.0.1
and a real OpenSSH sshd that plays the builder.

moto's instances have no host, so `FakeBuilderHost` plays the part EC2 and cloud-init
play on AWS: when bakery's builder instance appears in moto, it reads the instance's
user data (the pinned host key) and key pair (the login key) and starts a real sshd
with them. That sshd runs in a private mount namespace where /root, /home, /etc/ssh,
/etc/machine-id, /etc/hostname, /etc/hosts, /tmp, /srv, /var/cache/apt and /var/lib/apt/lists
are scratch copies, with a hostname of its own (as cloud-init names a builder), so the bake's
steps and its hygiene (which deletes host keys and authorized_keys) never touch this machine;
/opt, /usr/local, the local cloud's image store and the tests' virtualenv are hidden, as a
fresh builder has none of them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class MotoServer:
    def __init__(self, api_answers: bool = False, slow_images: float | None = None) -> None:
        """`api_answers`: the local endpoint's answers where moto's differ from EC2's
        (bakery/local/moto_extensions.py install_api_answers: DeleteLaunchTemplateVersions, snapshot tags);
        `slow_images`: images pending for that many seconds, snapshots' progress moving (tests/slow_images.py)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "MOTO_PORT": str(self.port)}
        extra = (["--api-answers"] if api_answers else []) + (
            ["--slow-images", str(float(slow_images))] if slow_images is not None else [])
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.moto_serve", str(self.port), *extra], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.05)

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10)

    def client(self, service: str = "ec2", region: str = "us-east-1"):
        import boto3
        return boto3.client(service, endpoint_url=self.url, region_name=region)


SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile /root/.ssh/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxSessions 100
MaxStartups 100:30:200
Subsystem sftp internal-sftp
LogLevel ERROR
"""

# What cloud-init leaves on an EC2 builder (set_hostname, update_etc_hosts).
BUILDER_HOSTNAME = "ip-172-31-5-9"
BUILDER_HOSTS = ("# written by cloud-init\n127.0.0.1 localhost\n"
                 f"127.0.1.1 {BUILDER_HOSTNAME}.ec2.internal {BUILDER_HOSTNAME}\n::1 localhost ip6-localhost\n")

# Runs as the namespace's first process: bind the scratch tree over the paths a bake touches.
NAMESPACE_SCRIPT = """\
set -e
S="$1"
mount --bind "$S" /mnt
mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd
for d in root home etc/ssh srv var/tmp var/cache/apt var/lib/apt/lists; do mount --bind "/mnt/fs/$d" "/$d"; done
for f in machine-id hostname hosts; do mount --bind "/mnt/fs/etc/$f" "/etc/$f"; done
hostname "$(cat /etc/hostname)"  # its own UTS namespace: named as cloud-init names a builder
mount -t tmpfs tmpfs /tmp
shift  # then what no fresh builder has: hidden under empty directories
for d in "$@"; do if [ -d "$d" ]; then mount -t tmpfs -o mode=755 tmpfs "$d"; fi; done
mkdir -p /usr/local/sbin
if [ -d /mnt/sbin ]; then mount --bind /mnt/sbin /usr/local/sbin; fi  # stand-in tools, first on root's PATH
exec /usr/sbin/sshd -D -e -f /mnt/sshd_config
"""


def not_on_a_builder() -> list[str]:
    """This machine's trees a fresh builder would not have, which the bake's SBOM (a walk of the
    whole file system) would otherwise walk and list: /opt and /usr/local (empty on a Debian
    cloud image; a CI runner's tool caches), the local cloud's image store (full Debian root file
    systems), the virtualenv running the tests and trees outside a Debian system's own."""
    from bakery.config.settings import default_data_dir

    hidden = ["/opt", "/usr/local", str(default_data_dir())]
    # and every top-level tree a Debian system does not have (a checkout under /work, a mounted
    # share): this machine's, not an image's
    hidden += sorted(str(d) for d in Path("/").iterdir() if d.is_dir() and not d.is_symlink() and d.name not in DEBIAN_TOP)
    if sys.prefix != sys.base_prefix:
        hidden.append(sys.prefix)
    return hidden


DEBIAN_TOP = {"bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt", "proc",
              "root", "run", "sbin", "srv", "sys", "tmp", "usr", "var", "lost+found"}


# The stand-in for cloud-init on the fake builder: `status` and `clean` succeed, fail or hang
# as /srv/fake-cloud-init/<subcommand> says, and say so on stderr (which the bake shows).
FAKE_CLOUD_INIT = """\
#!/bin/sh
mode=$(cat "/srv/fake-cloud-init/$1" 2>/dev/null || echo ok)
echo "fake cloud-init $1: $mode" >&2
case "$mode" in
  fail) exit 1 ;;
  hang) exec sleep 300 ;;
esac
exit 0
"""


class SilentServer:
    """A TCP listener on 127.0.0.1:port that accepts connections and never sends a byte: an SSH
    server that never sends its banner. `accepted` is set once someone has connected."""

    def __init__(self, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _host_key_config(user_data: str) -> dict:
    """The cloud-config carrying ssh_keys, in plain or multipart user data (the smoke instance's)."""
    if not user_data.startswith("Content-Type: multipart"):
        return yaml.safe_load(user_data)
    import email
    for part in email.message_from_string(user_data).walk():
        if part.get_content_type() == "text/cloud-config":
            config = yaml.safe_load(part.get_payload())
            if isinstance(config, dict) and "ssh_keys" in config:
                return config
    raise AssertionError("no ssh_keys in the instance's user data")


class FakeBuilderHost:
    """A real sshd that becomes "the builder" once bakery launches one in moto."""

    def __init__(self, moto: MotoServer, scratch: Path, host_key_mode: str = "user-data", start: bool = True,
                 faults: dict[str, str] | None = None, fake_cloud_init: bool = False, recipe: str | None = None):
        """`faults` maps an instance role (builder, smoke) to what answers on its SSH port instead
        of a good sshd: "refused" (nothing), "silent" (a listener that never sends the SSH banner)
        or "other-host-key" (an sshd with another host key: a man in the middle).
        `fake_cloud_init` puts a stand-in cloud-init first on root's PATH inside the namespace; its
        subcommands (status, clean) do what `set_cloud_init` says: ok, fail or hang.
        `recipe`: serve only that recipe's instances (several hosts, several bakes at once)."""
        self.moto = moto
        self.recipe = recipe
        self.faults = dict(faults or {})
        self.silent: SilentServer | None = None
        self.scratch = scratch
        self.port = free_port()
        self.host_key_mode = host_key_mode
        self.start_sshd = start
        self.proc: subprocess.Popen | None = None
        self.instance_id: str | None = None
        self.served: list[str] = []
        self.user_data: str | None = None
        self._stop = threading.Event()
        self._reboot_when_gone = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.fs = scratch / "fs"
        # a private apt cache and lists too: hygiene's `apt-get clean` must neither empty the host's
        # cache nor contend for its locks (archives/lock, lists/lock) with another bake running at once
        for d in ("root/.ssh", "home", "etc/ssh", "srv", "var/tmp", "var/cache/apt/archives/partial",
                  "var/lib/apt/lists/partial"):
            (self.fs / d).mkdir(parents=True, exist_ok=True)
        (self.fs / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        (self.fs / "etc/hostname").write_text(f"{BUILDER_HOSTNAME}\n")
        (self.fs / "etc/hosts").write_text(BUILDER_HOSTS)
        (scratch / "sshd_config").write_text(SSHD_CONFIG.format(port=self.port))
        if fake_cloud_init:
            (scratch / "sbin").mkdir(exist_ok=True)
            tool = scratch / "sbin/cloud-init"
            tool.write_text(FAKE_CLOUD_INIT)
            tool.chmod(0o755)
        self._thread.start()

    def _watch(self) -> None:
        ec2 = self.moto.client()
        while not self._stop.is_set():
            try:
                mine = [{"Name": "tag:bakery:recipe", "Values": [self.recipe]}] if self.recipe else []
                resp = ec2.describe_instances(Filters=[{"Name": "tag:bakery:role", "Values": ["builder", "smoke"]},
                                                       {"Name": "instance-state-name", "Values": ["pending", "running"]},
                                                       *mine])
                found = [i for r in resp["Reservations"] for i in r["Instances"]]
            except Exception:  # noqa: BLE001 - the server may be resetting between tests
                time.sleep(0.02)
                continue
            fresh = [i for i in found if i["InstanceId"] not in self.served]
            if fresh:
                self._become(ec2, fresh[0])
            elif (self.instance_id not in {i["InstanceId"] for i in found} and self.proc is not None
                  and self.proc.poll() is None):
                # the builder it was is stopped or gone: so is its sshd, as on EC2 (a next bake's
                # builder must not meet the last one's host key while this waits to become it)
                self._stop_sshd()
            elif self._reboot_when_gone and self.proc is not None and self.proc.poll() is not None:
                self._start_sshd()  # its sshd ended from inside: the builder "booted" again
            time.sleep(0.02)

    def _become(self, ec2, instance: dict) -> None:
        if self.proc is not None:  # a new build: the previous builder's sshd goes away
            self._stop_sshd()
        role = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}.get("bakery:role")
        fault = self.faults.get(role)
        self.instance_id = instance["InstanceId"]
        self.served.append(self.instance_id)
        raw = ec2.describe_instance_attribute(InstanceId=self.instance_id, Attribute="userData")
        self.user_data = base64.b64decode(raw["UserData"]["Value"]).decode()
        config = _host_key_config(self.user_data)
        key = ec2.describe_key_pairs(KeyNames=[instance["KeyName"]], IncludePublicKey=True)["KeyPairs"][0]
        (self.fs / "root/.ssh/authorized_keys").write_text(key["PublicKey"].strip() + "\n")
        host_key = self.fs / "etc/ssh/ssh_host_ed25519_key"
        if self.host_key_mode == "user-data" and fault != "other-host-key":
            host_key.write_text(config["ssh_keys"]["ed25519_private"])
        else:  # a man in the middle: some other ed25519 key
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        host_key.chmod(0o600)
        if fault == "silent":
            self.silent = SilentServer(self.port)
        if not self.start_sshd or fault in ("refused", "silent"):
            self.proc = subprocess.Popen(["true"])
            return
        self._start_sshd()

    def _start_sshd(self) -> None:
        self.proc = subprocess.Popen(
            # A private pid namespace too: stopping sshd (its PID 1) ends every session and step it ran.
            ["unshare", "-m", "-p", "-u", "--fork", "--kill-child", "--propagation", "private",
             "sh", "-c", NAMESPACE_SCRIPT, "sh", str(self.scratch), *not_on_a_builder()],
            stdout=subprocess.DEVNULL, stderr=open(self.scratch / "sshd.log", "ab"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._stop_sshd()

    def set_cloud_init(self, subcommand: str, mode: str) -> None:
        """What the stand-in cloud-init does for `subcommand` from now on: ok, fail or hang."""
        (self.fs / "srv/fake-cloud-init").mkdir(exist_ok=True)
        (self.fs / "srv/fake-cloud-init" / subcommand).write_text(mode + "\n")

    def stuck_uploads(self, on_write) -> "SlowDisk":
        """Uploads to the builder block part way, as on a hung disk: a stand-in `tar` sends the
        stream to a SlowDisk, which is returned. Call it before the builder starts (the stand-ins
        are mounted with its sshd)."""
        (self.scratch / "sbin").mkdir(exist_ok=True)
        tool = self.scratch / "sbin/tar"
        tool.write_text("#!/bin/sh\nexec cat > /srv/slow-disk\n")
        tool.chmod(0o755)
        return SlowDisk(self.fs / "srv/slow-disk", on_write)

    def reboot(self, come_back: bool = True) -> None:
        """Stands in for the builder's reboot (the host itself never reboots): its sshd goes, and
        every session with it; unless it never comes back, a new one starts in a fresh namespace,
        with a new /run as a new boot has, and the same host key."""
        self._stop_sshd()
        if come_back:
            self._start_sshd()

    def reboots_from_inside(self) -> None:
        """`systemctl reboot` on the builder (a stand-in first on root's PATH) ends its sshd and
        every session, and the host starts a new one, as after a reboot. Call it before the
        builder starts (the stand-ins are mounted with its sshd)."""
        (self.scratch / "sbin").mkdir(exist_ok=True)
        tool = self.scratch / "sbin/systemctl"
        tool.write_text('#!/bin/sh\n[ "$1" = reboot ] || exit 1\nkill -TERM 1\n')  # 1: this namespace's sshd
        tool.chmod(0o755)
        self._reboot_when_gone = True

    def kill_server(self) -> None:
        """The builder's sshd dies, and every session and command it ran with it."""
        self._stop_sshd()

    def kill_sessions(self) -> list[int]:
        """SIGKILL the per-connection sshd processes (the listener stays): connections drop."""
        listener = [p for p in _children(self.proc.pid) if _comm(p) == "sshd"] if self.proc else []
        sessions = [c for p in listener for c in _children(p)]
        for pid in sessions:
            os.kill(pid, signal.SIGKILL)
        return sessions

    def _stop_sshd(self) -> None:
        if self.silent is not None:
            self.silent.close()
            self.silent = None
        # unshare --fork ignores SIGTERM while it waits; SIGKILL it and --kill-child ends sshd's
        # pid namespace with it.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
            # --kill-child signals sshd as unshare dies, and does not wait: the listener may outlive
            # unshare by a moment, and the next sshd (or silent server) on this port must not meet it
            deadline = time.monotonic() + 10
            while not _port_free(self.port) and time.monotonic() < deadline:
                time.sleep(0.01)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def moto_in_process(tmp_path: Path, monkeypatch, region: str = "us-east-1"):
    """Settings for moto in this process (no default images: loading them is slow), with the
    project, recipes and state under tmp_path."""
    from moto import mock_aws

    from bakery.config.settings import Settings

    from bakery.local.moto_extensions import install_snapshot_tags

    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        undo = install_snapshot_tags()  # moto here plays AWS, which tags snapshots at CreateImage
        try:
            yield Settings(cloud="aws", region=region, project_dir=tmp_path, recipes_dir=tmp_path / "recipes",
                           state_dir=tmp_path / "state")
        finally:
            undo()


def write_recipe(recipes: Path, name: str, body: str) -> Path:
    recipes.mkdir(parents=True, exist_ok=True)
    path = recipes / f"{name}.yaml"
    path.write_text(body)
    return path


def recipe_text(port: int, steps: str, extra: str = "") -> str:
    """A recipe aimed at the fake builder host on 127.0.0.1:port. The fake builder is this machine,
    whose apt sources are the real Debian archive: rebake's freshness must not ask it (tests touch
    127.0.0.0/8 only), so updates are not checked unless `extra` says otherwise (said last: no
    line number of the rest moves)."""
    freshness = "" if "freshness:" in extra else "freshness: {updates: none}\n"
    return f"""\
description: test recipe
source:
  filter: {{name: "test-debian-12-amd64-*", owners: [self]}}
builder:
  instance_types: [t3.micro, t3.small]
  ssh: {{user: root, interface: host, host: 127.0.0.1, port: {port}, timeout: 20}}
{extra}steps:
{steps}
{freshness}"""


def layer_recipe_text(port: int, steps: str, parent: str) -> str:
    """recipe_text's recipe as a layer on `parent` (`source: {recipe: parent}`)."""
    text = recipe_text(port, steps)
    line = next(line for line in text.splitlines(keepends=True) if line.startswith("  filter:"))
    return text.replace("source:\n" + line, f"source: {{recipe: {parent}}}\n")


def leftovers(ec2) -> dict[str, list[str]]:
    """Everything bakery might leak, as the endpoint sees it (completed images excluded)."""
    instances = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
                 if i["State"]["Name"] != "terminated"]
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"]
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
    images = [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]
              if any(t["Key"] == "bakery:build-id" for t in i.get("Tags", []))
              and not any(t["Key"] == "bakery:complete" for t in i.get("Tags", []))
              and {"Key": "bakery:smoke", "Value": "failed"} not in i.get("Tags", [])  # kept, marked, on purpose
              and not any(t["Key"] == "bakery:checkpoint" for t in i.get("Tags", []))]  # a finished checkpoint too
    return {k: v for k, v in {"instances": instances, "security_groups": groups, "key_pairs": keys,
                              "unfinished_images": images}.items() if v}


def every_page(client, operation: str, key: str, **kwargs) -> list[dict]:
    """`key`'s items from every page of `operation` (moto pages DescribeInstances at 100 too)."""
    if not client.can_paginate(operation):
        return getattr(client, operation)(**kwargs)[key]
    return [item for page in client.get_paginator(operation).paginate(**kwargs) for item in page[key]]


def endpoint_state(ec2, ssm=None) -> dict[str, dict[str, str]]:
    """Everything on the endpoint that a bake or a launch can create or change: for each kind,
    id -> what it is. Shown as AWS would show it: moto may keep a terminated instance's network
    interfaces and volumes attached, where AWS deletes them (DeleteOnTermination) or detaches them."""
    def tags(item, key="Tags"):
        return {t["Key"]: t["Value"] for t in item.get(key) or []}

    def every(operation: str, key: str, **kwargs) -> list[dict]:
        return every_page(ec2, operation, key, **kwargs)

    state: dict[str, dict[str, str]] = {}
    instances = [i for r in every("describe_instances", "Reservations") for i in r["Instances"]]
    gone = {i["InstanceId"] for i in instances if i["State"]["Name"] == "terminated"}
    state["instances"] = {i["InstanceId"]: f"{i['State']['Name']} {tags(i).get('bakery:role', '')}".strip()
                          for i in instances if i["InstanceId"] not in gone}
    state["security_groups"] = {g["GroupId"]: g["GroupName"] for g in every("describe_security_groups", "SecurityGroups")
                                if g["GroupName"] != "default"}
    state["key_pairs"] = {k["KeyName"]: "key pair" for k in every("describe_key_pairs", "KeyPairs")}
    state["images"] = {}
    for image in every("describe_images", "Images", Owners=["self"]):
        t = tags(image)
        marks = [m for m in ("complete", "smoke") if f"bakery:{m}" in t]
        state["images"][image["ImageId"]] = " ".join([image["State"]] + [f"{m}={t[f'bakery:{m}']}" for m in marks])
    state["snapshots"] = {s["SnapshotId"]: "snapshot" for s in every("describe_snapshots", "Snapshots", OwnerIds=["self"])}
    state["volumes"] = {v["VolumeId"]: v["State"] for v in every("describe_volumes", "Volumes")
                        if not any(a.get("InstanceId") in gone and a.get("DeleteOnTermination")
                                   for a in v.get("Attachments", []))}
    state["network_interfaces"] = {}
    for eni in every("describe_network_interfaces", "NetworkInterfaces"):
        att = eni.get("Attachment") or {}
        holder = att.get("InstanceId")
        if holder in gone:
            if att.get("DeleteOnTermination"):
                continue
            holder = None
        state["network_interfaces"][eni["NetworkInterfaceId"]] = f"attached to {holder}" if holder else "available"
    state["elastic_ips"] = {a["AllocationId"]: f"on {a['NetworkInterfaceId']}" if a.get("NetworkInterfaceId") else "free"
                            for a in every("describe_addresses", "Addresses")}
    state["vpcs"] = {v["VpcId"]: v["CidrBlock"] for v in every("describe_vpcs", "Vpcs") if not v.get("IsDefault")}
    state["subnets"] = {s["SubnetId"]: s["CidrBlock"] for s in every("describe_subnets", "Subnets")
                        if not s.get("DefaultForAz")}
    state["launch_templates"] = {t["LaunchTemplateName"]: f"version {t['LatestVersionNumber']}"
                                 for t in every("describe_launch_templates", "LaunchTemplates")}
    if ssm is not None:
        state["ssm_parameters"] = {p["Name"]: f"version {p.get('Version')}"
                                   for p in ssm.describe_parameters()["Parameters"]}
    return state


def changes(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """What differs, by kind: id -> its state now ("gone" for what went away)."""
    out = {}
    for kind in after:
        was, now = before.get(kind, {}), after[kind]
        diff = {rid: desc for rid, desc in now.items() if was.get(rid) != desc}
        diff.update({rid: "gone" for rid in was if rid not in now})
        if diff:
            out[kind] = diff
    return out


def local_leftovers(settings) -> list[str]:
    """What a run left on this machine: private key files of builds."""
    keys = settings.state / "keys"
    return sorted(str(p.relative_to(settings.state)) for p in keys.iterdir()) if keys.is_dir() else []


class SlowDisk:
    """A file on the builder that takes the first bytes written to it and then no more (a FIFO
    that nobody drains): whatever writes it blocks part way. `on_write` runs (in a thread of its
    own) once the first bytes have arrived."""

    def __init__(self, path: Path, on_write):
        import select

        os.mkfifo(path)
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._stop = threading.Event()
        self.written = threading.Event()

        def watch():
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            while not self._stop.is_set():
                if any(ev & select.POLLIN for _, ev in poller.poll(50)):
                    os.read(self._fd, 1)
                    self.written.set()
                    on_write()
                    return
        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self._fd)


def cloud_of(ec2):
    """The cloud a test's own EC2 facade (with faults, short waits) stands for: TCP to addresses."""
    from bakery.cloud.connect import Cloud
    from bakery.remote.dial import TcpDial

    return Cloud(ec2, TcpDial(ec2.settings.ssh_host, ec2.settings.ssh_port))


# A private sshd on 127.0.0.1 (its own mount and PID namespaces, so its /run/sshd is its own and
# stopping it ends every session): the benches' SSH server and the tests' SSH hop. `dir` holds
# host_key and authorized_keys.
PRIVATE_SSHD = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {dir}/host_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxSessions 1000
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def start_private_sshd(work: Path) -> tuple[subprocess.Popen, int]:
    """(the process, its port); root logs in with the keys in work/authorized_keys. Stop it with
    kill(): unshare passes on no SIGTERM, and its --kill-child takes sshd with it."""
    port = free_port()
    (work / "sshd_config").write_text(PRIVATE_SSHD.format(port=port, dir=work))
    bashrc = Path.home() / ".bashrc"  # root's own, masked: a login's output is only what it ran
    mask = f'mount --bind /dev/null {bashrc} && ' if bashrc.exists() else ""
    proc = subprocess.Popen(["unshare", "-m", "-p", "--fork", "--kill-child", "--propagation", "private", "sh", "-c",
                             f"mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && {mask}"
                             f"exec /usr/sbin/sshd -D -e -f {work}/sshd_config"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30  # listening, so a caller's first attempt meets sshd and not a closed port
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the private sshd on port {port} did not start")
        time.sleep(0.05)


def signing_key_pair(where: Path) -> tuple[Path, Path]:
    """A fresh Ed25519 release key: (private PEM, public PEM) files in `where`, for signing_key and
    verify_key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private, public = where / "release.pem", where / "release.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


#: an HTTP client in a namespace, probing ip:port/health every 10 ms until killed: one line per
#: probe, "MONOTONIC 1|0" (the clock is the machine's, the same in every namespace). A probe gives
#: up after 0.1 s (a VPC's round trip here is well under a millisecond), so an outage is measured
#: to about a tenth of a second.
HEALTH_PROBE = ("import socket, sys, time\n"
                "ip, port = sys.argv[1], int(sys.argv[2])\n"
                "while True:\n"
                "    t = time.monotonic(); ok = 0\n"
                "    try:\n"
                "        s = socket.create_connection((ip, port), timeout=0.1); s.settimeout(0.1)\n"
                "        s.sendall(b'GET /health HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'); ok = int(b' 200 ' in s.recv(64))\n"
                "        s.close()\n"
                "    except OSError:\n"
                "        pass\n"
                "    print(f'{t:.3f} {ok}', flush=True); time.sleep(0.01)\n")


def longest_outage(lines: list[str]) -> tuple[float, int]:
    """The longest span from a failed probe's start to the next good probe's start (HEALTH_PROBE's
    lines), and how many probes there were."""
    probes = [(float(t), ok == "1") for t, ok in (line.split() for line in lines if line.strip())]
    longest, down_since = 0.0, None
    for t, ok in probes:
        if not ok and down_since is None:
            down_since = t
        elif ok and down_since is not None:
            longest, down_since = max(longest, t - down_since), None
    if down_since is not None:
        raise AssertionError("the address was still not answering when the probe stopped")
    return longest, len(probes)
