"""The fault matrix's harness: one bake under one fault, then its outcome and the endpoint's
full state, checked the same way in every case (tests/test_fault_matrix*.py).

Outcomes, as the matrix tables name them:
  Baked     the bake succeeds; the endpoint gains the finished image and its snapshots, nothing else
  Fails     the bake fails with one line (a BakeryError of the given class); the endpoint is as before
  Rejected  the smoke test fails: the image is kept, marked smoke=failed, with its snapshots; nothing else
"""

from __future__ import annotations

import io
import re
import subprocess
from dataclasses import dataclass

from bakery.errors import BakeryError, StepFailed
from tests.support import cloud_of, changes, endpoint_state, local_leftovers


@dataclass(frozen=True)
class Baked:
    warning: str | None = None  # a clean-up that failed is reported (what it left is tagged)...
    janitor: bool = False       # ...and the janitor removes it once the fault has passed

    def __str__(self) -> str:
        return "baked" + (", clean-up left to the janitor" if self.janitor else "")


@dataclass(frozen=True)
class Fails:
    error: type[BakeryError]
    message: str  # a regular expression the one-line message matches

    def __str__(self) -> str:
        return f"fails: {self.error.__name__}"


@dataclass(frozen=True)
class Rejected:
    message: str

    def __str__(self) -> str:
        return "smoke test rejects the image"


class Tap(io.StringIO):
    """A progress stream that can act: `when(text, action)` runs `action` once, in the writing
    (bake's) thread, as soon as a line containing `text` is written, so a fault lands exactly there."""

    def __init__(self):
        super().__init__()
        self._hooks: list[list] = []

    def when(self, text: str, action) -> None:
        self._hooks.append([text, action, False])

    def write(self, s: str) -> int:
        n = super().write(s)
        for hook in self._hooks:
            if not hook[2] and hook[0] in self.getvalue():
                hook[2] = True
                hook[1]()
        return n


def product(client, ami: str, marks: str) -> dict[str, dict[str, str]]:
    """What a bake may leave: its image (in state `marks`) and the image's snapshots."""
    image = client.describe_images(ImageIds=[ami])["Images"][0]
    snaps = [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
    return {"images": {ami: marks}, **({"snapshots": {s: "snapshot" for s in snaps}} if snaps else {})}


def run_bake(settings, ec2, tap: Tap, recipe: str = "web"):
    """(runner, manifest, error): a BakeryError is an outcome; anything else escapes the test."""
    from bakery.bake.inputs import Inputs
    from bakery.bake.run import Bake
    from bakery.config.recipe import load_recipe
    from bakery.progress import Reporter

    runner = Bake(settings, Inputs.of(load_recipe(settings.recipes, recipe)), {}, report=Reporter(stream=tap), cloud=cloud_of(ec2))
    try:
        return runner, runner.run(), None
    except BakeryError as exc:
        return runner, None, exc


def check_bake(outcome, *, moto, before, settings, runner, manifest, error, tap: Tap, smoke: bool) -> None:
    """The outcome is the expected one, and the endpoint holds exactly what that outcome allows."""
    log = tap.getvalue()
    assert "Traceback" not in log
    client = moto.client()
    if error is not None:
        assert "\n" not in error.message, error.message
    if isinstance(outcome, Fails):
        assert isinstance(error, outcome.error), f"expected {outcome.error.__name__}, got {error!r}\n{log}"
        assert re.search(outcome.message, error.message), error.message
        expected = {}
    elif isinstance(outcome, Rejected):
        assert isinstance(error, StepFailed), f"expected the smoke test to fail, got {error!r}\n{log}"
        assert re.search(outcome.message, error.message), error.message
        ami = re.search(r"smoke test of (ami-\w+) failed, not published", error.message).group(1)
        expected = product(client, ami, "available smoke=failed")
    else:
        assert error is None, f"{error.message}\n{log}"
        assert manifest.ami_id and not manifest.skipped
        if outcome.warning:
            assert re.search(outcome.warning, log), log
        if outcome.janitor:
            from bakery.housekeeping.cleanup import clean_build
            from bakery.cloud.ec2 import EC2

            clean_build(EC2(settings), runner.build_id)  # what the janitor does once the resources expire
        expected = product(client, manifest.ami_id, "available complete=true" + (" smoke=passed" if smoke else ""))
    assert changes(before, endpoint_state(client)) == expected
    assert local_leftovers(settings) == []


def cli_environment(endpoint: str, tmp_path, **extra: str) -> dict[str, str]:
    """The environment that points `invoke` at `endpoint` and this test's directories."""
    import os

    env = {**os.environ, "INVOKE_BAKERY_CLOUD": "aws", "INVOKE_BAKERY_ENDPOINT_URL": endpoint,
           "INVOKE_BAKERY_RECIPES_DIR": str(tmp_path / "recipes"), "INVOKE_BAKERY_ENVS_DIR": str(tmp_path / "envs"),
           "INVOKE_BAKERY_USERDATA_DIR": str(tmp_path / "userdata"),
           "INVOKE_BAKERY_STATE_DIR": str(tmp_path / "state"), **extra}
    env.pop("BAKERY_DEBUG", None)
    return env


class CliRun:
    """`invoke ARGS` as a subprocess, its progress (stderr) read line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]):
        import subprocess
        import sys
        import threading

        from tests.support import ROOT

        self.proc = subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def printed(self, text: str, timeout: float = 60) -> bool:
        """Wait until a progress line contains `text` (False if the process ended first)."""
        with self._changed:
            return self._changed.wait_for(lambda: any(text in line for line in self.lines)
                                          or not self._reader.is_alive(), timeout) \
                and any(text in line for line in self.lines)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once the process has ended; what it printed if it does not."""
        try:
            self.proc.wait(timeout)  # stdout is one line at most: it fits in the pipe
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(self.proc.args[-3:])} did not end within {timeout:g} s; it printed:\n"
                                 + "".join(self.lines)) from None
        out = self.proc.stdout.read()
        self._reader.join(timeout)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, out, "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if not self.proc.stdout.closed:
            self.finish()


def assert_one_line_error(err: str, starts: str) -> None:
    """The run ended with one line `error: ...` and no traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(starts), err
