"""Local cloud end to end, with the real thing: mmdebstrap base, overlayfs, namespaces,
systemd-nspawn booting the image's systemd, cloud-init, sshd and paramiko. Needs root; the base
image build (~30 s) happens once."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import time
from pathlib import Path

import pytest

from bakery.config.settings import default_data_dir
from bakery.local.base import ensure_base_image, load_base_metadata
from bakery.local.errors import LocalCloudError
from bakery.local.layers import LayerStore
from bakery.local.prereqs import check_prerequisites, require
from bakery.local.sandbox import Sandbox
from tests.local.conftest import public_key

pytestmark = pytest.mark.local

REPO = Path(__file__).resolve().parents[2]


def cloud_config(doc: dict[str, object]) -> bytes:
    return ("#cloud-config\n" + json.dumps(doc)).encode()  # JSON is valid YAML


def sandbox_mounts(path: Path) -> list[str]:
    """Mount entries mentioning ``path`` in ANY live mount namespace on the host."""
    hits = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                text = (proc / "mountinfo").read_text()
            except OSError:
                continue
            hits += [f"{proc.name}: {line}" for line in text.splitlines() if str(path) in line]
    return hits


def test_prerequisites_are_met_and_base_is_cached(local_base: Path) -> None:
    assert check_prerequisites() == []
    said: list[str] = []
    assert ensure_base_image(default_data_dir(), log=said.append) == local_base
    assert said == []  # found, not built again (how fast the cached path is belongs in bench/)
    meta = load_base_metadata(local_base)
    assert str(meta["id"]).startswith("ami-") and str(meta["digest"]).startswith("sha256:")
    assert {"openssh-server", "cloud-init", "curl", "systemd-sysv", "dbus"} <= set(meta["packages"])  # type: ignore[arg-type]
    assert list(local_base.glob("etc/ssh/ssh_host_*")) == []
    assert (local_base / "etc/cloud/cloud.cfg.d/99-lsbx.cfg").is_file()
    assert any((local_base / "var/lib/apt/lists").glob("*_Packages"))


def test_missing_prerequisites_name_local_install_and_the_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    problems = check_prerequisites()
    assert "missing command `ip`: `bakery local.install` installs it (apt-get install -y iproute2)" in problems
    assert ("missing command `unshare`, `nsenter`: `bakery local.install` installs it (apt-get install -y "
            "util-linux)") in problems
    assert any("apt-get install -y slirp4netns" in p for p in problems)
    with pytest.raises(LocalCloudError, match="apt-get install -y mmdebstrap"):
        require()


def test_boot_runs_cloud_init_and_ssh_uses_pinned_host_key(
    local_base: Path, local_sandboxes, local_keys, local_ssh, local_boot_wait
) -> None:
    user, host = local_keys
    user_data = cloud_config({
        "write_files": [{"path": "/etc/myapp/hello.txt", "content": "hello from cloud-init\n"}],
        "ssh_keys": {"ed25519_private": host.private_openssh, "ed25519_public": host.public_openssh},
    })  # fmt: skip
    box = local_sandboxes([local_base], user_data=user_data, meta_data={"public-keys": [user.public_openssh]})
    assert box.is_running() and os.getsid(box.pid) != os.getsid(0)  # detached from our session

    client = local_ssh(box, user, host)
    assert client.get_transport().get_remote_server_key() == public_key(host)

    def run(cmd: str) -> str:
        _, out, err = client.exec_command(cmd)
        status = out.channel.recv_exit_status()
        assert status == 0, err.read().decode()
        return out.read().decode()

    assert run("cat /etc/myapp/hello.txt") == "hello from cloud-init\n"
    assert user.public_openssh in run("cat /root/.ssh/authorized_keys")
    assert run("hostname").strip() == box.name
    assert run("cat /etc/ssh/ssh_host_ed25519_key.pub").split()[:2] == host.public_openssh.split()[:2]
    assert run("cat /proc/1/comm") == "systemd\n"  # the image's own init
    assert int(run("ps -e --no-headers | wc -l")) < 30  # its own pid namespace

    probes = ["/etc/bakery-probe", "/root/bakery-probe", "/usr/local/bin/bakery-probe", "/tmp/bakery-probe"]
    run("for p in " + " ".join(probes) + "; do echo x > $p; done; useradd probeuser")
    for probe in probes:
        assert not Path(probe).exists()
    assert "probeuser" not in Path("/etc/passwd").read_text()
    assert (box.dir / "upper/etc/bakery-probe").is_file()  # it went to the sandbox's upper dir

    status = local_boot_wait(box)
    expected = {"setup": 0, "init-local": 0, "init": 0, "sshd": 0, "config": 0, "final": 0, "system": 0, "done": 0}
    assert status == expected, f"failed units: {box.failed_units()}\n{box.boot_log()}"
    output = (box.upper / "var/log/cloud-init-output.log").read_text()
    assert "Cloud-init v." in output and "WARNING" not in output and "Traceback" not in output
    assert "status: done" in box.exec(["cloud-init", "status"], timeout=30).stdout
    # the console shows systemd's boot and cloud-init's host key fingerprints, as EC2's console output does
    console = box.console_output()
    assert "Reached target multi-user.target" in console or "Multi-User System" in console
    assert "BEGIN SSH HOST KEY FINGERPRINTS" in console and "\x1b[" not in console


def test_stop_leaves_no_process_mount_cgroup_or_netns(local_base: Path, local_sandboxes) -> None:
    host_run_systemd = sorted(p.name for p in Path("/run/systemd").iterdir()) if Path("/run/systemd").is_dir() else None
    box = local_sandboxes([local_base], egress=True)
    pids = [int((box.dir / "pids" / f"{role}.pid").read_text().split()[0]) for role in ("init", "launcher", "slirp")]
    cgroups = (box.dir / "pids" / "cgroups").read_text().split()
    assert cgroups and all(Path(c).is_dir() and Path(c).name == f"bakery-{box.name}" for c in cgroups)
    assert f"/bakery-{box.name}/" in Path(f"/proc/{pids[0]}/cgroup").read_text()  # not the caller's cgroup
    inside = box.exec(["sh", "-c", "ip -4 -o addr show tap0; cat /etc/resolv.conf"], timeout=10).stdout
    assert "10.0.2.100/24" in inside and "nameserver 10.0.2.3" in inside
    # slirp's gateway must not reach the host's loopback (where sshd-like host services live)
    probe = box.exec(["curl", "-sS", "-m", "3", "http://10.0.2.2:22/"], timeout=10)
    assert probe.returncode != 0 and "Couldn't connect" in probe.stderr
    assert sandbox_mounts(box.dir)  # the overlay is mounted, in the sandbox's namespace

    box.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} survived stop()"
    assert not box.netns_path.exists()
    assert sandbox_mounts(box.dir) == []
    assert not any(Path(c).exists() for c in cgroups)
    # nspawn's lock and propagation dirs lived on a private tmpfs: the host's /run is as it was
    assert (sorted(p.name for p in Path("/run/systemd").iterdir()) if Path("/run/systemd").is_dir() else None
            ) == host_run_systemd
    assert not box.is_running()
    box.stop()  # idempotent
    assert (box.dir / "upper/var/lib/cloud/seed/nocloud/meta-data").is_file()  # kept for capture
    with pytest.raises(LocalCloudError, match="not running"):
        box.exec(["true"], timeout=5)
    with pytest.raises(LocalCloudError, match="not running"):
        box.connect(22)


def test_capture_layer_round_trip_keeps_whiteouts_and_opaque_dirs(
    tmp_path: Path, local_base: Path, local_base_id: str, local_store: LayerStore, local_sandboxes, local_boot_wait
) -> None:
    assert (local_base / "etc/issue.net").is_file() and (local_base / "etc/cloud/templates").is_dir()
    builder = local_sandboxes([local_base])
    changes = (
        "rm /etc/issue.net && echo baked > /etc/bakery-layer.txt && "
        "rm -rf /etc/cloud/templates && mkdir /etc/cloud/templates && echo new > /etc/cloud/templates/only.txt"
    )
    result = builder.exec(["sh", "-c", changes], timeout=30)
    assert result.returncode == 0, result.stderr
    with pytest.raises(LocalCloudError, match="still running"):
        builder.capture_layer(tmp_path / "early.tar.zst")
    local_boot_wait(builder)  # systemd has written the machine's id and flushed its journal to /var/log
    builder.stop()
    builder_id = (builder.upper / "etc/machine-id").read_text().strip()
    assert builder_id and list((builder.upper / "var/log/journal").glob("*/*.journal"))  # systemd wrote them
    layer = builder.capture_layer(tmp_path / "out" / "layer.tar.zst")
    assert layer.is_file() and not list(layer.parent.glob(".*tmp*"))
    names = subprocess.run(["tar", "--zstd", "-tf", str(layer)], capture_output=True, text=True, check=True).stdout
    assert "./etc/bakery-layer.txt" in names.splitlines()
    assert "./var/lib/cloud/seed/nocloud/user-data" not in names  # launcher seed is not image content
    # the machine's identity and its journal are the instance's, not the image's
    assert "./etc/machine-id" not in names.splitlines() and ".journal" not in names

    local_store.add("ami-0123456789abcdef0", layer, local_base_id, {"recipe": "test"})
    local_store.verify("ami-0123456789abcdef0")
    lowers = local_store.lowers("ami-0123456789abcdef0")
    assert lowers == [local_store.root / "ami-0123456789abcdef0" / "fs", local_base.resolve()]
    whiteout = os.lstat(lowers[0] / "etc/issue.net")
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert os.getxattr(lowers[0] / "etc/cloud/templates", "trusted.overlay.opaque") == b"y"

    instance = local_sandboxes(lowers)
    seen = instance.exec(
        ["sh", "-c", "test ! -e /etc/issue.net && cat /etc/bakery-layer.txt && ls /etc/cloud/templates"], timeout=30
    )
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == ["baked", "only.txt"]
    assert instance.exec(["cat", "/etc/machine-id"], timeout=10).stdout.strip() not in ("", builder_id)
    assert (local_base / "etc/issue.net").is_file()  # the base itself is untouched

    assert sorted(r["id"] for r in local_store.list()) == sorted([local_base_id, "ami-0123456789abcdef0"])
    with pytest.raises(LocalCloudError, match="ami-0123456789abcdef0"):
        local_store.remove(local_base_id)
    instance.stop()
    local_store.remove("ami-0123456789abcdef0")
    assert [r["id"] for r in local_store.list()] == [local_base_id]


def test_corrupt_or_missing_layer_gives_clear_error(
    tmp_path: Path, local_base: Path, local_base_id: str, local_store: LayerStore
) -> None:
    content = tmp_path / "content"
    (content / "etc").mkdir(parents=True)
    (content / "etc/layer.txt").write_text("x" * 100_000)
    good = tmp_path / "good.tar.zst"
    subprocess.run(f"tar -C {content} -cf - . | zstd -q -o {good}", shell=True, check=True)
    local_store.add("ami-00000000000000001", good, local_base_id, {})
    stored = local_store.layer_file("ami-00000000000000001")
    with open(stored, "r+b") as fh:  # flip bytes in the middle of the compressed stream
        fh.seek(stored.stat().st_size // 2)
        fh.write(b"\xff\x00\xff\x00")
    expected = f"layer for ami-00000000000000001 is missing or corrupt: {stored}"
    with pytest.raises(LocalCloudError, match="missing or corrupt") as err:
        local_store.verify("ami-00000000000000001")
    assert str(err.value).startswith(expected)
    with pytest.raises(LocalCloudError) as err:
        local_store.lowers("ami-00000000000000001")
    assert str(err.value).startswith(expected)
    assert not (stored.parent / "fs").exists()

    local_store.add("ami-00000000000000002", good, local_base_id, {})
    local_store.layer_file("ami-00000000000000002").unlink()
    with pytest.raises(LocalCloudError) as err:
        local_store.verify("ami-00000000000000002")
    assert str(err.value).startswith("layer for ami-00000000000000002 is missing or corrupt: ")
    with pytest.raises(LocalCloudError, match="not registered"):
        local_store.lowers("ami-nope")
    with pytest.raises(LocalCloudError, match="image layer directory missing"):
        Sandbox.start("t-missing", [tmp_path / "nope"], tmp_path, user_data=None, meta_data={})


def test_sandbox_outlives_its_starter_and_can_be_attached(
    tmp_path: Path, local_base: Path, local_state_dir: Path
) -> None:
    """`bakery launch` starts an instance and exits; a later process attaches, uses, stops it."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    # become the subreaper so the starter's orphans are ours to reap (this host's init is not one)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    name = f"t-att-{os.getpid()}"
    script = (
        "import sys; from pathlib import Path; from bakery.local.sandbox import Sandbox; "
        f"Sandbox.start({name!r}, [Path({str(local_base)!r})], Path({str(local_state_dir)!r}), "
        "user_data=None, meta_data={}, egress=True)"
    )
    try:
        starter = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30
        )
        assert starter.returncode == 0
        box = Sandbox.attach(name, local_state_dir)
        try:
            assert box.is_running()
            orphans = [int((box.dir / "pids" / f"{r}.pid").read_text().split()[0]) for r in ("launcher", "slirp")]
            deadline = time.monotonic() + 30
            while True:
                try:
                    box.connect(22, timeout=2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, box.boot_log()
                    time.sleep(0.02)
            assert box.exec(["hostname"], timeout=10).stdout.strip() == name
        finally:
            box.destroy()
        for pid in orphans:
            os.waitpid(pid, 0)  # they were reparented to us; reaped here, so nothing is left
            assert not Path(f"/proc/{pid}").exists()
        assert not box.dir.exists()
        with pytest.raises(LocalCloudError, match="no sandbox"):
            Sandbox.attach(name, local_state_dir)
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        if (local_state_dir / name).exists():  # the test failed before destroy()
            Sandbox.attach(name, local_state_dir).destroy()
