"""wait_for's contract on a fake clock: cadence, lateness bound, deadline, scaled time."""

from __future__ import annotations

import pytest

from bakery import waits
from bakery.waits import Backoff, wait_for
from bakery.errors import WaitTimeout


class FakeTime:
    """A clock that only moves when something sleeps or a check takes time."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def poller(fake: FakeTime, ready_at: float, cost: float = 0.0):
    """A check that takes `cost` seconds and succeeds once the fake clock passes `ready_at`."""
    starts: list[float] = []

    def check():
        starts.append(fake.now)
        fake.now += cost
        return "ready" if fake.now >= ready_at else None
    return check, starts


def test_polls_are_paced_from_their_start_so_call_latency_does_not_stretch_the_cadence():
    fake = FakeTime()
    check, starts = poller(fake, ready_at=10.0, cost=0.3)
    wait_for(check, what="x", timeout=60, backoff=Backoff(initial=1.0, factor=1.0, max_interval=1.0),
             clock=fake.monotonic, sleep=fake.sleep)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps and all(g == pytest.approx(1.0) for g in gaps)
    assert fake.sleeps[0] == pytest.approx(0.7)


def test_a_check_slower_than_the_interval_is_retried_at_once():
    fake = FakeTime()
    check, starts = poller(fake, ready_at=7.0, cost=2.5)
    wait_for(check, what="x", timeout=60, backoff=Backoff(initial=1.0, factor=1.0, max_interval=1.0),
             clock=fake.monotonic, sleep=fake.sleep)
    assert fake.sleeps == []
    assert starts == [0.0, 2.5, 5.0]


@pytest.mark.parametrize("ready_at", [0.05, 3.3, 17.01, 42.5, 299.9])
def test_the_default_notices_a_ready_resource_within_its_cap(ready_at):
    fake = FakeTime()
    check, starts = poller(fake, ready_at=ready_at, cost=0.12)
    wait_for(check, what="x", timeout=600, clock=fake.monotonic, sleep=fake.sleep)
    noticed = starts[-1]
    assert 0 <= noticed - ready_at + 0.12 <= waits.DEFAULT.max_interval + 1e-9
    assert all(b - a <= waits.DEFAULT.max_interval + 1e-9 for a, b in zip(starts, starts[1:]))


def test_deadline_raises_with_the_hint_and_never_sleeps_past_it():
    fake = FakeTime()
    check, _ = poller(fake, ready_at=float("inf"), cost=0.01)
    with pytest.raises(WaitTimeout, match=r"timed out after 5s waiting for the thing: still pending"):
        wait_for(check, what="the thing", timeout=5, clock=fake.monotonic, sleep=fake.sleep,
                 hint=lambda: "still pending")
    assert fake.now == pytest.approx(5.01)


def test_time_scale_shrinks_intervals_and_deadline_in_real_time(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(waits, "time", fake)
    monkeypatch.setenv("BAKERY_TIME_SCALE", "0.1")
    with pytest.raises(WaitTimeout, match="timed out after 30s"):
        wait_for(lambda: None, what="x", timeout=30, backoff=Backoff(initial=2.0, factor=1.0, max_interval=2.0))
    assert fake.now == pytest.approx(3.0)
    assert set(round(s, 9) for s in fake.sleeps) == {0.2}


@pytest.mark.parametrize("raw", ["fast", "0", "-1", "inf", "nan"])
def test_a_bad_time_scale_warns_and_waits_in_real_time(monkeypatch, raw):
    fake = FakeTime()
    monkeypatch.setattr(waits, "time", fake)
    monkeypatch.setenv("BAKERY_TIME_SCALE", raw)
    with pytest.warns(RuntimeWarning, match="BAKERY_TIME_SCALE"), pytest.raises(WaitTimeout):
        wait_for(lambda: None, what="x", timeout=3, backoff=Backoff(initial=1.0, factor=1.0, max_interval=1.0))
    assert fake.now == pytest.approx(3.0)
