"""Progress: what a run is doing while it does it, and afterwards where its time went.

A Reporter turns a run's stages (a recipe's steps among them), step output, warnings and what the
cloud last said into events, and hands them to the one Sink of the command:

    PlainSink  the lines bakery has always printed (each stage's closing line, step output under
               its name), and a heartbeat: whenever a stage has printed nothing for `heartbeat`
               seconds, one line naming it, what the cloud last said and how long it has run.
               For CI logs, pipes and `--json`, where nothing can be redrawn.
    LiveSink   a terminal: the same closing lines, and beneath them a live display (rich) of every
               running stage, one line per recipe of a parallel rebake, with its elapsed time, what
               the cloud last said and the tail of its output.
    JsonSink   `--log-format json`: one JSON object per event, for log pipelines.

What the cloud last said reaches the running stage through `say()`, and time spent waiting on it
through `waiting()`: bakery/waits.py and the cloud layer's checks call them without knowing who
listens (a context variable holds the stage of the running thread). Each finished stage is kept
(start, duration, time waited) for the manifest's timeline, which `invoke report` draws.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
import threading
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TextIO

#: seconds of silence after which a running stage says it is still running (the `heartbeat` setting)
HEARTBEAT = 30.0


@dataclass(eq=False)
class Stage:
    """A running stage: what the display and the heartbeat show of it; `detail` ends its line."""

    reporter: "Reporter"
    name: str
    kind: str  # "stage", or "step": one of the recipe's steps
    started: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)
    detail: str = ""
    status: str = ""         # what the cloud last said, e.g. "ami-0abc in us-east-1: pending, snapshot 45%"
    said: dict = field(default_factory=dict)  # by subject, when several waits run at once (region copies)
    waited: float = 0.0      # seconds while any wait ran (bakery/waits.py): the cloud's time, not bakery's
    error: str = ""          # why it failed, when it did
    _waiters: int = 0        # waits running now, in this thread or others (region copies): counted once
    _wait_since: float = 0.0
    quiet_since: float = 0.0  # when it last printed a line (or a heartbeat)
    tail: deque = field(default_factory=lambda: deque(maxlen=3))

    def __post_init__(self) -> None:
        self.quiet_since = self.started

    def elapsed(self) -> float:
        return time.monotonic() - self.started


_running: ContextVar[Stage | None] = ContextVar("bakery_running_stage", default=None)
_WAITS = threading.Lock()  # every stage's waiter count: waits end in several threads at once


def submit_in_stage(pool, fn, *args):
    """`pool.submit(fn, *args)` in a copy of this thread's context: what `fn` says and waits for
    counts for the stage running here (a pool's threads start with an empty context)."""
    return pool.submit(contextvars.copy_context().run, fn, *args)


def say(text: str, subject: str | None = None) -> None:
    """What the cloud last said, for the stage running in this thread (nothing when none is). With
    `subject` (an image id), what is said of each subject stays side by side: copies in several
    regions waited for at once."""
    stage = _running.get()
    if stage is None:
        return
    if subject is not None:
        stage.said[subject] = text
        text = "; ".join(stage.said.values())
    if text != stage.status:
        stage.status = text
        stage.reporter.sink.status(stage)


@contextlib.contextmanager
def waiting(what: str):
    """Time spent waiting for `what`, counted as the cloud's in the running stage's record: once,
    however many waits overlap (nested, or side by side in threads)."""
    stage = _running.get()
    if stage is None:
        yield
        return
    say(f"waiting for {what}")
    with _WAITS:
        if stage._waiters == 0:
            stage._wait_since = time.monotonic()
        stage._waiters += 1
    try:
        yield
    finally:
        with _WAITS:
            stage._waiters -= 1
            if stage._waiters == 0:
                stage.waited += time.monotonic() - stage._wait_since


def clock(seconds: float) -> str:
    """45s, 4m00s, 1h02m03s."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Sink:
    """Where a command's progress goes. One per command, shared by its reporters (one per recipe
    of a parallel rebake); every method may be called from several threads. With `heartbeat`, a
    thread calls `beat` for each stage that has printed nothing for that many seconds."""

    def __init__(self, heartbeat: float | None = None) -> None:
        self.lock = threading.RLock()
        self.running: list[Stage] = []  # every running stage, oldest first
        self.heartbeat = heartbeat
        self._beating: threading.Thread | None = None
        self._stop = threading.Event()

    def started(self, stage: Stage) -> None:
        with self.lock:
            self.running.append(stage)
            if self.heartbeat and self._beating is None:
                self._beating = threading.Thread(target=self._beat, name="bakery-heartbeat", daemon=True)
                self._beating.start()

    def ended(self, stage: Stage, ok: bool, seconds: float, line: str) -> None:
        with self.lock:
            if stage in self.running:
                self.running.remove(stage)

    def line(self, reporter: "Reporter", kind: str, text: str, line: str) -> None:
        """A line of output ("output"), a "warning" or an "info"; `line` is it as printed."""
        with self.lock:
            for stage in self.running:
                if stage.reporter is reporter:
                    stage.quiet_since = time.monotonic()
                    stage.tail.append(text)

    def status(self, stage: Stage) -> None:
        """What the cloud last said changed."""

    def beat(self, stage: Stage) -> None:
        """`stage` has been silent for `heartbeat` seconds."""

    def error(self, message: str) -> None:
        """The command failed with `message` (printed by the command itself, except as JSON)."""

    def close(self) -> None:
        """The command is over: no heartbeat after this."""
        self._stop.set()
        beating = self._beating
        if beating is not None and beating is not threading.current_thread():
            beating.join(timeout=5)

    def innermost(self) -> list[Stage]:
        """The deepest running stage of each reporter: what it is doing now."""
        with self.lock:
            latest: dict[int, Stage] = {}
            for stage in self.running:
                latest[id(stage.reporter)] = stage
            return list(latest.values())

    def beat_due(self, now: float) -> int:
        """One pass of the heartbeat at `now` (monotonic): `beat` for every innermost stage silent
        for `heartbeat` seconds; how many. Under the lock, so no beat follows its stage's closing line."""
        assert self.heartbeat
        beats = 0
        with self.lock:
            for stage in self.innermost():
                if now - stage.quiet_since >= self.heartbeat and not self._stop.is_set():
                    stage.quiet_since = now
                    self.beat(stage)
                    beats += 1
        return beats

    def _beat(self) -> None:
        assert self.heartbeat
        while not self._stop.wait(min(1.0, self.heartbeat / 4)):
            with self.lock:
                if not self.running:  # between commands' stages (or after the last): the next start beats again
                    self._beating = None
                    return
            self.beat_due(time.monotonic())


class NullSink(Sink):
    pass


class PlainSink(Sink):
    def __init__(self, stream: TextIO | None = None, heartbeat: float | None = HEARTBEAT) -> None:
        super().__init__(heartbeat)
        self.stream = stream

    def _print(self, text: str) -> None:
        with self.lock:
            print(text, file=self.stream or sys.stderr, flush=True)

    def ended(self, stage: Stage, ok: bool, seconds: float, line: str) -> None:
        super().ended(stage, ok, seconds, line)
        self._print(line)

    def line(self, reporter: "Reporter", kind: str, text: str, line: str) -> None:
        super().line(reporter, kind, text, line)
        self._print(line)

    def beat(self, stage: Stage) -> None:
        said = f": {stage.status}" if stage.status else ""
        self._print(f"{stage.reporter.prefix}… still {stage.name}{said}, {clock(stage.elapsed())}")


class JsonSink(Sink):
    """One JSON object per line: {"time", "event", "recipe" | "environment", ...}. Events:
    stage-start, stage-end, step-start, step-end (a recipe's steps), output, warning, info, status
    (what the cloud last said changed) and heartbeat."""

    def __init__(self, stream: TextIO | None = None, heartbeat: float | None = HEARTBEAT) -> None:
        super().__init__(heartbeat)
        self.stream = stream

    def emit(self, event: str, reporter: "Reporter | None", **data) -> None:
        record: dict = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event}
        if reporter is not None and reporter.label:
            record[reporter.kind] = reporter.label
        record.update({k: v for k, v in data.items() if v is not None and v != ""})
        with self.lock:
            print(json.dumps(record, ensure_ascii=False), file=self.stream or sys.stderr, flush=True)

    def started(self, stage: Stage) -> None:
        super().started(stage)
        self.emit(f"{stage.kind}-start", stage.reporter, name=stage.name)

    def ended(self, stage: Stage, ok: bool, seconds: float, line: str) -> None:
        super().ended(stage, ok, seconds, line)
        self.emit(f"{stage.kind}-end", stage.reporter, name=stage.name, ok=ok, seconds=round(seconds, 3),
                  waited=round(stage.waited, 3), detail=stage.detail, error=stage.error)

    def line(self, reporter: "Reporter", kind: str, text: str, line: str) -> None:
        super().line(reporter, kind, text, line)
        current = next((s for s in self.innermost() if s.reporter is reporter), None)
        self.emit(kind, reporter, stage=current.name if current else None, text=text)

    def status(self, stage: Stage) -> None:
        self.emit("status", stage.reporter, stage=stage.name, text=stage.status, seconds=round(stage.elapsed(), 3))

    def beat(self, stage: Stage) -> None:
        self.emit("heartbeat", stage.reporter, stage=stage.name, text=stage.status, seconds=round(stage.elapsed(), 3))

    def error(self, message: str) -> None:
        self.emit("error", None, text=message)  # the command's: no one recipe's


class LiveSink(Sink):
    """A live display on a terminal (rich): every line of the plain output scrolls above it as it
    comes (a failed step's output is its reason); the display shows each running stage with its
    clock, what the cloud last said and the tail of its output."""

    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__(heartbeat=None)  # the display's clocks run: nothing to say of silence
        stream = stream or sys.stderr
        self.console = Console(file=stream, highlight=False, markup=False, emoji=False, soft_wrap=True)
        # a warning or a log record written to sys.stderr meanwhile goes above the display, not into it
        self.live = Live(console=self.console, get_renderable=self._render, refresh_per_second=4,
                         transient=True, redirect_stdout=False, redirect_stderr=stream is sys.stderr)
        self.live.start()

    def ended(self, stage: Stage, ok: bool, seconds: float, line: str) -> None:
        super().ended(stage, ok, seconds, line)
        self.console.print(line)

    def line(self, reporter: "Reporter", kind: str, text: str, line: str) -> None:
        super().line(reporter, kind, text, line)
        self.console.print(line)

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        lines = []
        with self.lock:  # worker threads add output and stages while the display's thread draws
            for stage in self.innermost():
                said = f"  {stage.status}" if stage.status else ""
                lines.append(Text(f"{stage.reporter.prefix}⋯ {stage.name}  {clock(stage.elapsed())}{said}"))
                lines.extend(Text(f"{stage.reporter.prefix}    {out}", style="dim") for out in list(stage.tail))
        return Group(*lines)

    def close(self) -> None:
        super().close()
        self.live.stop()


class Reporter:
    """One run's progress (one recipe's bake, one environment's launch), written to `sink`."""

    def __init__(self, prefix: str = "", stream: TextIO | None = None, quiet: bool = False,
                 sink: Sink | None = None, kind: str = "recipe"):
        """`prefix` begins each line ("[web] "); `kind` names what it reports on in JSON events
        ("recipe", "environment")."""
        self.prefix = prefix
        self.label = prefix.strip().strip("[]")
        self.kind = kind
        self.quiet = quiet
        self.sink = NullSink() if quiet else sink or PlainSink(stream)
        self._timings: dict[str, float] = {}
        self._timeline: list[dict] = []

    def prefixed(self, prefix: str) -> "Reporter":
        """A reporter of its own (its own stage timings) writing where this one does, each line
        prefixed with `prefix` instead of this one's: one recipe's bake among several."""
        return Reporter(prefix=prefix, quiet=self.quiet, sink=self.sink, kind=self.kind)

    @contextlib.contextmanager
    def stage(self, name: str, kind: str = "stage"):
        stage = Stage(self, name, kind)
        token = _running.set(stage)
        self.sink.started(stage)
        ok = False
        try:
            yield stage
            ok = True
        except BaseException as exc:
            stage.error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise
        finally:
            _running.reset(token)
            seconds = time.monotonic() - stage.started
            self._timings[name] = round(seconds, 3)
            self._timeline.append({"name": name, "kind": kind, "start": round(stage.wall, 3),
                                   "seconds": round(seconds, 3), "waited": round(stage.waited, 3), "ok": ok})
            if ok:
                detail = f": {stage.detail}" if stage.detail else ""
                line = f"{self.prefix}✓ {name}{detail} ({seconds:.2f}s)"
            else:
                line = f"{self.prefix}✗ {name} ({seconds:.2f}s)"
            self.sink.ended(stage, ok, seconds, line)

    def output(self, source: str, line: str) -> None:
        self.sink.line(self, "output", line, f"{self.prefix}  {source} | {line}")

    def warn(self, text: str) -> None:
        self.sink.line(self, "warning", text, f"{self.prefix}! {text}")

    def info(self, text: str) -> None:
        self.sink.line(self, "info", text, f"{self.prefix}{text}")

    def timings(self) -> dict[str, float]:
        return dict(self._timings)

    def timeline(self) -> list[dict]:
        """Every finished stage: name, kind (stage | step), start (epoch seconds), seconds, waited, ok."""
        return [dict(entry) for entry in self._timeline]


def sink_for(log_format: str, heartbeat: float | None, stream: TextIO | None = None, live: bool = True) -> Sink:
    """The sink a command writes its progress to: JSON lines, a live display on a terminal (unless
    `live` is False: a command whose stdout is for a machine), or plain lines with heartbeats."""
    stream = stream or sys.stderr
    if log_format == "json":
        return JsonSink(stream, heartbeat)
    if live and stream.isatty() and _live_possible():
        return LiveSink(stream)
    return PlainSink(stream, heartbeat)


def _live_possible() -> bool:
    import os

    return os.environ.get("TERM", "dumb") != "dumb" and "CI" not in os.environ
