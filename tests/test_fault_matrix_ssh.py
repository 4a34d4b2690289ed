"""The fault matrix, SSH side: every stage of the bake that talks to the builder (or to the smoke
test's instance), under every SSH fault that applies to it.

The builder is a real OpenSSH sshd (tests/support.py FakeBuilderHost) with a stand-in cloud-init
whose `status` and `clean` succeed, fail or hang on demand. Faults:
  refused            nothing listens on the SSH port
  banner-timeout     a listener accepts and never sends the SSH banner
  host-key-mismatch  an sshd with another host key (a man in the middle)
  non-zero           the stage's command exits non-zero
  hang               the command runs past its timeout (only where the recipe sets one: steps,
                     smoke checks, the smoke test's cloud-init wait; the builder's cloud-init and
                     hygiene have fixed deadlines of 15 and 5 minutes, too long for a test)
  drop               the sshd dies while the command runs (SIGKILL, with everything it started)
  drop-session       only the connection's own sshd process is killed (SIGKILL, by PID)
Connection faults apply where a connection is opened (wait for SSH, smoke test: SSH); command
faults where a command runs. Every case ends with one line (a BakeryError) and nothing of the
build left; a smoke test failure keeps the image, marked smoke=failed (tests/matrix.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bakery.errors import RemoteError, StepFailed, WaitTimeout
from bakery.remote.ssh import ConnectionLost, HostKeyMismatch
from tests.faults import short_waits
from tests.matrix import Fails, Rejected, Tap, check_bake, run_bake
from tests.support import endpoint_state, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

OK = "  - {name: ok, shell: 'echo fine'}\n"
UPLOAD = "  - name: payload\n    upload: {source: files/payload.bin, dest: /srv/payload.bin}\n"
LOST = r"SSH connection lost"
# paramiko either reports the banner wait or, when its own 10 s handshake timeout wins the race,
# that the session never came up
NO_BANNER = r"waiting for SSH on {} i-\w+ .*(Error reading SSH protocol banner|No existing session)"


def checks(shell: str = "true", timeout: float = 20, within: float = 20) -> str:
    """A smoke test whose instance must answer SSH and finish cloud-init `within` seconds: short
    only where the row waits for that to run out, so a loaded machine never fails the others there."""
    return (f"checks:\n  timeout: {within:g}\n  commands:\n"
            f"    - {{name: hello, shell: '{shell}', timeout: {timeout:g}}}\n")


@dataclass(frozen=True)
class Row:
    stage: str
    fault: str
    outcome: object
    steps: str = OK
    extra: str = ""                                   # recipe: checks
    serve: dict = field(default_factory=dict)         # role -> what answers on its SSH port
    cloud_init: dict = field(default_factory=dict)    # subcommand -> ok | fail | hang
    when: tuple[str, str] | None = None               # (progress text, kill_server | kill_sessions)
    slow_upload: str | None = None                    # the upload's stream takes 1 byte, then: kill_...
    ssh_timeout: int = 20

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.fault}".replace(" ", "-")


MATRIX = [
    Row("wait for SSH", "refused", Fails(WaitTimeout, r"waiting for SSH on builder i-\w+ \(127.0.0.1:\d+\): .*[Rr]efused"),
        serve={"builder": "refused"}, ssh_timeout=2),
    Row("wait for SSH", "banner-timeout", Fails(WaitTimeout, NO_BANNER.format("builder")),
        serve={"builder": "silent"}, ssh_timeout=2),
    Row("wait for SSH", "host-key-mismatch", Fails(HostKeyMismatch, r"host key mismatch: expected SHA256:\S+, "
        r"server presented SHA256:\S+; refusing to connect"), serve={"builder": "other-host-key"}),
    Row("wait for cloud-init", "non-zero", Fails(RemoteError, r"cloud-init did not finish cleanly \(exit 1\)"),
        cloud_init={"status": "fail"}),
    Row("wait for cloud-init", "drop", Fails(ConnectionLost, LOST), cloud_init={"status": "hang"},
        when=("fake cloud-init status: hang", "kill_server")),
    Row("step (shell)", "non-zero", Fails(StepFailed, r"step 1/1: breaks exited with status 3"),
        steps="  - {name: breaks, shell: 'echo about to fail; exit 3'}\n"),
    Row("step (shell)", "hang", Fails(StepFailed, r"step 1/1: hangs timed out after 1s"),
        steps="  - {name: hangs, shell: 'sleep 60', timeout: 1}\n"),
    Row("step (shell)", "drop", Fails(ConnectionLost, LOST), steps="  - {name: long, shell: 'echo started; sleep 30'}\n",
        when=("long | started", "kill_server")),
    Row("step (shell)", "drop-session", Fails(ConnectionLost, LOST),
        steps="  - {name: long, shell: 'echo started; sleep 30'}\n", when=("long | started", "kill_sessions")),
    Row("step (upload)", "non-zero", Fails(StepFailed, r"step 1/1: payload exited with status 1"),
        steps=UPLOAD.replace("/srv/payload.bin", "/dev/null/payload.bin")),
    Row("step (upload)", "drop", Fails(ConnectionLost, LOST), steps=UPLOAD, slow_upload="kill_server"),
    Row("step (upload)", "drop-session", Fails(ConnectionLost, LOST), steps=UPLOAD, slow_upload="kill_sessions"),
    Row("clean image (hygiene)", "non-zero", Fails(RemoteError, r"hygiene before the snapshot failed \(exit 1\)"),
        cloud_init={"clean": "fail"}),
    Row("clean image (hygiene)", "drop", Fails(ConnectionLost, LOST), cloud_init={"clean": "hang"},
        when=("fake cloud-init clean: hang", "kill_server")),
    Row("check image for leftovers", "finding", Fails(StepFailed, r"refusing to snapshot: the image would carry "
        r"/root/.aws/credentials"), steps="  - {name: creds, shell: 'mkdir -p /root/.aws && printf \"aws_secret_access_key"
        " = abc\\n\" > /root/.aws/credentials'}\n"),
    Row("check image for leftovers", "drop", Fails(ConnectionLost, LOST),
        when=("✓ clean image (hygiene)", "kill_server")),
    Row("smoke test: SSH", "refused", Rejected(r"waiting for SSH on smoke instance i-\w+ .*[Rr]efused"),
        extra=checks(within=3), serve={"smoke": "refused"}),
    Row("smoke test: SSH", "banner-timeout", Rejected(NO_BANNER.format("smoke instance")),
        extra=checks(within=3), serve={"smoke": "silent"}),
    Row("smoke test: SSH", "host-key-mismatch", Rejected(r"host key mismatch"),
        extra=checks(), serve={"smoke": "other-host-key"}),
    Row("smoke test: cloud-init", "non-zero", Rejected(r"smoke instance i-\w+ .*: cloud-init did not finish cleanly \(exit 1\)"),
        extra=checks(), steps="  - {name: breaks-next-boot, shell: 'mkdir -p /srv/fake-cloud-init && "
                              "echo fail > /srv/fake-cloud-init/status'}\n"),
    Row("smoke test: cloud-init", "hang", Rejected(r"smoke instance i-\w+ .*: cloud-init did not finish cleanly"),
        extra=checks(within=3), steps="  - {name: hangs-next-boot, shell: 'mkdir -p /srv/fake-cloud-init && "
                              "echo hang > /srv/fake-cloud-init/status'}\n"),
    Row("smoke check", "non-zero", Rejected(r"check 'hello' exited with status 1"), extra=checks("false")),
    Row("smoke check", "hang", Rejected(r"check 'hello' timed out"), extra=checks("sleep 60", timeout=1)),
    Row("smoke check", "drop", Rejected(LOST), extra=checks("echo started; sleep 30"),
        when=("check hello | started", "kill_server")),
]


@pytest.mark.parametrize("row", MATRIX, ids=lambda row: row.id)
def test_bake_under_an_ssh_fault(moto, tmp_path, make_builder_host, settings_for, row):
    host = make_builder_host(faults=row.serve, fake_cloud_init=True)
    for subcommand, mode in row.cloud_init.items():
        host.set_cloud_init(subcommand, mode)
    recipes = tmp_path / "recipes"
    (recipes / "files").mkdir(parents=True)
    (recipes / "files/payload.bin").write_bytes(b"\0" * (1 << 20))
    text = recipe_text(host.port, row.steps, row.extra).replace("timeout: 20}", f"timeout: {row.ssh_timeout}}}")
    write_recipe(recipes, "web", text)
    settings = settings_for(recipes)
    tap = Tap()
    if row.when:
        tap.when(row.when[0], getattr(host, row.when[1]))
    disk = host.stuck_uploads(getattr(host, row.slow_upload)) if row.slow_upload else None
    before = endpoint_state(moto.client())
    try:
        runner, manifest, error = run_bake(settings, short_waits(settings), tap)
    finally:
        if disk:
            disk.close()
    if row.when or disk:
        assert row.when is None or row.when[0] in tap.getvalue(), "the fault never landed"
        assert disk is None or disk.written.is_set(), "the upload never started"
    check_bake(row.outcome, moto=moto, before=before, settings=settings, runner=runner, manifest=manifest,
               error=error, tap=tap, smoke=bool(row.extra))
