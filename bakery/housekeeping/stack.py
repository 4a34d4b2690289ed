"""One clean-up mechanism for every run that creates cloud resources (a bake, a launch).

Each resource is journalled in the run's ledger the moment its create call returns, and its undo
is registered on the run's `CleanupStack` at the same moment (Packer's step Cleanup, without the
step having to remember what it made). When the run ends:
  - well: what the run was for (its products: a finished image and what publishing it made, a
    launched fleet) is kept; its temporary helpers (builder, key pair, group) are undone;
  - badly, by an error or a signal: everything is undone, in reverse, shielded from a second
    Ctrl-C; then a sweep by the run's tag removes what the endpoint made but never answered for;
  - badly, with --keep-on-error: everything stays for inspection, marked kept in the ledger, and
    the run says how to find it.
A crash Python never sees (SIGKILL, a lost machine) leaves the ledger for `invoke janitor`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from bakery.errors import BakeryError
from bakery.housekeeping.ledger import Ledger
from bakery.progress import Reporter
from bakery.signals import shielded


class CleanupStack(contextlib.ExitStack):
    """ExitStack whose undo actions are shielded from signals and never mask the cause."""

    def __init__(self, report: Reporter | None = None, ledger: Ledger | None = None):  # pop_all() builds one bare
        super().__init__()
        self.report = report
        self.ledger = ledger
        self.failures: list[str] = []
        self._kept: set[tuple] = set()
        self._done: set[tuple] = set()       # undone early (undo_now): nothing left to undo
        self._undos: dict[tuple, Callable[[], bool]] = {}
        self._products: list[tuple] = []
        self._succeeded = False  # set by keep_products: the undos that only a failure needs are off

    def created(self, kind: str, rid: str, region: str | None, label: str, undo: Callable[[], None], *,
                product: bool = False, **extra) -> None:
        """Journal a new resource and register its undo. A `product` is kept when the run succeeds;
        anything else is undone when the run ends, however it ends."""
        key = (kind, rid, region)
        if product:
            self._products.append(key)
        if self.ledger is not None:
            self.ledger.created(kind, rid, region, **extra)

        def run_undo():
            undo()
            if self.ledger is not None:
                self.ledger.removed(kind, rid, region)
        self._undos[key] = self._register(label, run_undo, skip=lambda: key in self._kept or key in self._done)

    def undo_now(self, kind: str, rid: str, region: str | None) -> None:
        """Undo one resource before the run ends (a builder replaced mid-bake); the unwind then
        skips it. One that fails to go stays registered, for the unwind to try again."""
        key = (kind, rid, region)
        if self._undos[key]():
            self._done.add(key)

    def keep(self, kind: str, rid: str, region: str | None) -> None:
        """Never undo this one (a product, or an image kept for inspection)."""
        self._kept.add((kind, rid, region))
        if self.ledger is not None:
            self.ledger.kept(kind, rid, region)

    def is_kept(self, kind: str, rid: str, region: str | None) -> bool:
        return (kind, rid, region) in self._kept

    def keep_products(self) -> None:
        self._succeeded = True
        for key in self._products:
            self.keep(*key)

    def keep_all(self) -> None:
        """--keep-on-error: everything outstanding stays for inspection (its tags still expire)."""
        if self.ledger is not None:
            for e in self.ledger.outstanding():
                self.keep(e.kind, e.id, e.region)

    def undo(self, label: str, fn: Callable[[], None], *, only_on_failure: bool = False) -> None:
        """Run `fn` when the stack unwinds (not journalled: for what is not a cloud resource).
        `only_on_failure`: it belongs to taking the products back (releasing the Elastic IPs put on
        a fleet, waiting for its instances to go), so a successful run skips it."""
        self._register(label, fn, skip=lambda: only_on_failure and self._succeeded)

    def _register(self, label: str, fn: Callable[[], None], skip: Callable[[], bool]) -> Callable[[], bool]:
        """Register `fn` for the unwind; returns the wrapped undo (True: done or nothing to do)."""
        def run() -> bool:
            if skip():  # kept: nothing to undo, nothing to report
                return True
            with shielded():
                try:
                    with self.report.stage(f"clean up: {label}"):
                        fn()
                    return True
                except BakeryError as exc:
                    self.failures.append(f"{label}: {exc.message}")
                    self.report.warn(f"clean-up of {label} failed: {exc.message}")
                except Exception as exc:  # noqa: BLE001 - keep undoing the rest
                    self.failures.append(f"{label}: {exc}")
                    self.report.warn(f"clean-up of {label} failed: {type(exc).__name__}: {exc}")
            return False
        self.callback(run)
        return run


@contextlib.contextmanager
def tracked_run(state_dir: Path, run_id: str, what: str, report: Reporter, *, keep_on_error: bool,
                on_keep: Callable[[], None], sweep: Callable[[], list[str]]) -> Iterator[CleanupStack]:
    """The ledger and clean-up stack of one run (see the module docstring for how it ends).

    `on_keep()` tells the user what --keep-on-error kept; `sweep()` removes what carries the run's
    tag and returns what it found (the endpoint made it, and a signal cut off the answer)."""
    stack = None
    try:
        with Ledger(state_dir / "ledger", run_id, what) as ledger, CleanupStack(report, ledger) as stack:
            try:
                yield stack
            except BaseException:
                if keep_on_error:
                    stack.keep_all()
                    stack.pop_all()
                    on_keep()
                raise
            stack.keep_products()
    except BaseException:
        if not keep_on_error:
            _sweep(report, run_id, sweep)
        raise
    finally:
        if stack is not None and stack.failures:
            report.warn(f"{len(stack.failures)} clean-up step(s) of {run_id} failed; anything still left is in "
                        "its ledger: run invoke janitor once the cause is fixed")


def _sweep(report: Reporter, run_id: str, sweep: Callable[[], list[str]]) -> None:
    with shielded():
        try:
            found = sweep()
        except Exception as exc:  # noqa: BLE001 - never mask the failure on its way out
            report.warn(f"clean-up sweep of {run_id} failed: {getattr(exc, 'message', exc)}")
            return
    if found:
        report.warn(f"removed what the clean-up had missed (found by the run's tag): {', '.join(found)}")
