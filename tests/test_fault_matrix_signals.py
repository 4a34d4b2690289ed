"""The fault matrix, signals: SIGINT and SIGTERM delivered to `invoke bake` (the real command line,
a subprocess) while the bake is inside each of its stages, and SIGKILL followed by `invoke janitor`.

The test knows the bake is inside a stage without guessing at timing: EC2 stages are held on the
endpoint (tests/faults.py Gate, an HTTP proxy in front of moto that holds one call), SSH stages are
held by the builder (a step that sleeps, a stand-in cloud-init that hangs, a disk that stops taking
an upload, an SSH port that never sends its banner). The signal arrives while the stage waits.
(Stages with nothing to wait on are left out: hashing the inputs, and the leftover check, a few
milliseconds of grep on the builder.)

A signal: exit 130, the last line `error: interrupted by SIG...`, no traceback, and nothing of the
build left on the endpoint or on this machine. SIGKILL: nothing of ours runs; `invoke janitor
--run-id` then leaves the endpoint as it was before the bake.
"""

from __future__ import annotations

import signal
import types
from dataclasses import dataclass, field

import pytest

from tests.faults import Gate
from tests.matrix import CliRun, assert_one_line_error, cli_environment
from tests.support import changes, endpoint_state, local_leftovers, recipe_text, write_recipe

pytestmark = pytest.mark.e2e

OK = "  - {name: ok, shell: 'echo fine'}\n"
LONG = "  - {name: long, shell: 'echo started; sleep 30'}\n"
UPLOAD = "  - name: payload\n    upload: {source: files/payload.bin, dest: /srv/payload.bin}\n"
CHECKS = "checks:\n  timeout: 20\n  commands:\n    - {name: hello, shell: 'echo started; sleep 30'}\n"
by_instance_id = lambda p: "InstanceId.1" in p  # noqa: E731 - the waits describe one instance or image by id
by_image_id = lambda p: "ImageId.1" in p  # noqa: E731


@dataclass(frozen=True)
class Stage:
    name: str
    held: dict | None = None        # an EC2 call held on the endpoint: Gate(operation, nth, match)
    printed: str | None = None      # a progress line the bake prints once inside the stage
    upload_stuck: bool = False      # the builder's disk takes the upload's first byte, then no more
    no_banner: str | None = None    # this role's SSH port (builder, smoke) accepts, never sends a banner
    steps: str = OK
    extra: str = ""
    cloud_init: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name.replace(" ", "-")


STAGES = [
    Stage("resolve source image", held=dict(operation="DescribeImages")),
    Stage("create temporary key pair", held=dict(operation="ImportKeyPair")),
    Stage("create temporary security group", held=dict(operation="CreateSecurityGroup")),
    Stage("launch builder", held=dict(operation="RunInstances")),
    Stage("wait for builder to run", held=dict(operation="DescribeInstances", match=by_instance_id)),
    Stage("wait for SSH", no_banner="builder"),
    Stage("wait for cloud-init", printed="fake cloud-init status: hang", cloud_init={"status": "hang"}),
    Stage("step (shell)", printed="long | started", steps=LONG),
    Stage("step (upload)", upload_stuck=True, steps=UPLOAD),
    Stage("clean image (hygiene)", printed="fake cloud-init clean: hang", cloud_init={"clean": "hang"}),
    Stage("stop builder", held=dict(operation="StopInstances")),
    Stage("create image", held=dict(operation="CreateImage")),
    Stage("wait for image", held=dict(operation="DescribeImages", match=by_image_id)),
    Stage("smoke test: launch", held=dict(operation="RunInstances", nth=2), extra=CHECKS),
    Stage("smoke test: SSH", no_banner="smoke", extra=CHECKS),
    Stage("smoke check", printed="check hello | started", extra=CHECKS),
]
SIGNALS = [signal.SIGINT, signal.SIGTERM]


class Bench:
    """One bake of `recipe` through the command line, with the stage's hold in place: its own
    builder host, endpoint proxy and state directory, so two benches can run at once."""

    def __init__(self, moto, tmp_path, make_builder_host, stage: Stage, gate: dict | None = None,
                 recipe: str = "web", **env: str):
        self.host = make_builder_host(faults={stage.no_banner: "silent"} if stage.no_banner else {},
                                      fake_cloud_init=True, recipe=recipe)
        for subcommand, mode in stage.cloud_init.items():
            self.host.set_cloud_init(subcommand, mode)
        recipes = tmp_path / "recipes"
        (recipes / "files").mkdir(parents=True, exist_ok=True)
        (recipes / "files/payload.bin").write_bytes(b"\0" * (1 << 20))
        write_recipe(recipes, recipe, recipe_text(self.host.port, stage.steps, stage.extra))
        self.stage, self.moto, self.tmp_path = stage, moto, tmp_path
        self.state = tmp_path / f"state-{recipe}"
        self.gate = Gate(moto.url, **(gate or stage.held or dict(operation="-")))
        self.disk = self.host.stuck_uploads(lambda: None) if stage.upload_stuck else None
        self.run = CliRun(["bake", "--recipe", recipe],
                          cli_environment(self.gate.url, tmp_path, INVOKE_BAKERY_STATE_DIR=str(self.state), **env))

    def inside(self, timeout: float = 60) -> bool:
        """Wait until the bake is inside its stage, and held there."""
        s = self.stage
        if s.held or self.gate.mode == "after":
            return self.gate.held.wait(timeout)
        if s.printed:
            return self.run.printed(s.printed, timeout)
        if s.upload_stuck:
            return self.disk.written.wait(timeout)
        return self.run.printed("✓ wait for builder to run", timeout) and _waits_for(
            lambda: self.host.silent is not None and self.host.silent.accepted.is_set(), timeout)

    def key_files_left(self) -> list[str]:
        return local_leftovers(types.SimpleNamespace(state=self.state))

    def close(self) -> None:
        self.run.kill()
        self.gate.close()
        if self.disk:
            self.disk.close()


def _waits_for(condition, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def bench(moto, tmp_path, make_builder_host):
    benches = []

    def make(stage: Stage, **kw) -> Bench:
        benches.append(Bench(moto, tmp_path, make_builder_host, stage, **kw))
        return benches[-1]
    yield make
    for b in benches:
        b.close()


@pytest.fixture
def endpoint(moto):
    """What the endpoint holds before the case; `.left()`: what the case added or changed."""
    before = endpoint_state(moto.client())
    return types.SimpleNamespace(left=lambda: changes(before, endpoint_state(moto.client())))


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.id)
def test_sigint_and_sigterm_inside_a_stage_stop_the_bake_and_leave_nothing(bench, endpoint, stage):
    """Two bakes at once, one for each signal (different recipes, builders and state)."""
    runs = {sig: bench(stage, recipe=f"web-{sig.name.lower()}") for sig in SIGNALS}
    for sig, b in runs.items():
        assert b.inside(), f"the bake never reached {stage.name}:\n{''.join(b.run.lines)}"
        b.run.proc.send_signal(sig)
    for sig, b in runs.items():
        code, _, err = b.run.finish()
        assert code == 130, err
        assert_one_line_error(err, f"error: interrupted by {sig.name}; cleaned up what this run created")
        assert b.key_files_left() == []
    assert endpoint.left() == {}


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_during_clean_up_is_noted_and_clean_up_finishes(bench, endpoint, sig):
    b = bench(Stage("clean up", steps="  - {name: breaks, shell: 'exit 3'}\n"),
              gate=dict(operation="TerminateInstances"))
    assert b.gate.held.wait(60), "".join(b.run.lines)
    b.run.proc.send_signal(sig)
    assert b.run.printed(f"{sig.name} received; finishing clean-up first"), "".join(b.run.lines)
    b.gate.release()
    code, _, err = b.run.finish()
    assert code == 1, err  # the bake's own failure, not the signal, is what the run reports
    assert_one_line_error(err, "error: ")
    assert "step 1/1: breaks exited with status 3" in err.strip().splitlines()[-1]
    assert endpoint.left() == {} and b.key_files_left() == []


CREATED_IN_FLIGHT = [
    Stage("create temporary key pair", held=dict(operation="ImportKeyPair", mode="after")),
    Stage("create temporary security group", held=dict(operation="CreateSecurityGroup", mode="after")),
    Stage("launch builder", held=dict(operation="RunInstances", mode="after")),
    Stage("create image", held=dict(operation="CreateImage", mode="after")),
]


@pytest.mark.parametrize("stage", CREATED_IN_FLIGHT, ids=lambda s: s.id)
def test_sigint_while_a_create_call_is_in_flight_leaves_nothing(bench, endpoint, stage):
    """The endpoint has created the resource; the answer (its id) never reaches the bake."""
    b = bench(stage)
    assert b.inside(), "".join(b.run.lines)
    b.run.proc.send_signal(signal.SIGINT)
    code, _, err = b.run.finish()
    assert code == 130, err
    assert_one_line_error(err, "error: interrupted by SIGINT")
    assert endpoint.left() == {}


KILLED_AT = [
    Stage("launch builder", held=dict(operation="RunInstances", mode="after")),
    Stage("step (shell)", printed="long | started", steps=LONG),
    Stage("wait for image", held=dict(operation="DescribeImages", match=by_image_id)),
]


@pytest.mark.parametrize("stage", KILLED_AT, ids=lambda s: s.id)
def test_sigkill_inside_a_stage_then_the_janitor_leaves_nothing(bench, endpoint, tmp_path, stage):
    b = bench(stage, BAKERY_RUN_ID="run-77")
    assert b.inside(), "".join(b.run.lines)
    b.run.proc.send_signal(signal.SIGKILL)
    code, _, _ = b.run.finish()
    assert code == -signal.SIGKILL
    assert endpoint.left() != {}  # no clean-up code ran: the build is still there
    b.gate.close()
    swept = CliRun(["janitor", "--run-id", "run-77"],
                   cli_environment(b.moto.url, tmp_path, INVOKE_BAKERY_STATE_DIR=str(b.state)))
    code, out, err = swept.finish()
    assert code == 0, out + err
    assert "Traceback" not in err and "1 dead" in out, out
    assert endpoint.left() == {}
