"""The checkpoint rule: finished rows become one outcome, committed in one transaction.

The checkpoint moves to the end of the longest prefix of rows (in source order) that
were acknowledged, unchanged, or recorded as rejected, and never again in a
run once a row could not be delivered. Rows that finished beyond that prefix have
their outcomes recorded too, so a crash does not send them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from sync.errors import FatalError, Stopped, SyncError
from sync.load.writer import Delivered, Failed, Gone, Missing, Refused, Unresolved
from sync.model import Position, Progress, RunObserver, RunStats
from sync.run.deliveries import delivery
from sync.run.window import Slot, Window
from sync.state.records import Ack, BatchOutcome, RejectedRow, RunCounts

COMMIT_AFTER_S = 0.5  # a slow run still saves its progress this often


class Committing(Protocol):
    """What the rule needs of the state store: the part's name, and its commit."""

    name: str

    def commit(self, outcome: BatchOutcome) -> None: ...


class Commits:
    """Takes finished slots from the window, records their outcomes, moves the checkpoint.

    ``floor``: the checkpoint the run started from (rows at its own cursor value are read
    again and must not move it back); ``abort``: start no more requests (the writer's).
    """

    def __init__(
        self,
        part: Committing,
        window: Window,
        stats: RunStats,
        *,
        batch_size: int,
        abort: Callable[[], None] = lambda: None,
        observer: RunObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.part = part
        self.window = window
        self.stats = stats
        self._batch_size = batch_size
        self._abort = abort
        self._observer = observer
        self._clock = clock
        self.floor: Position | None = None
        self.progress: Progress | None = None  # told the rows after the start done, as they are
        self.failure: SyncError | None = None  # the first row that could not be delivered
        self.held = False  # a row is not done for certain: the checkpoint stays before it
        self.superseded: set[tuple[str, str]] = set()  # (key, fingerprint) read again since
        self.again: list[str] = []  # keys to read and send as new before the run ends
        self.unchanged = 0  # unchanged rows since the last commit
        self.deleted = 0  # users deleted since the last commit
        self._finished: list[Slot] = []  # the window's finished prefix, not yet committed
        self._ahead: list[Slot] = []  # finished beyond that prefix, not yet committed
        self._committed_at = clock()

    def fail(self, error: SyncError) -> None:
        """The first row that could not be delivered ends the run's progress."""
        if self.failure is None:
            self.failure = error
            self._abort()

    def collect(self, *, wait_for: int = 0) -> None:
        """Take what finished (waiting for the oldest ``wait_for`` rows first); commit
        once a batch of rows waits, or every half second."""
        self._finished += self.window.finished(wait_for=wait_for)
        self._ahead += self.window.done_ahead()
        waiting = len(self._finished) + len(self._ahead)
        if waiting >= self._batch_size or (
            waiting and self._clock() - self._committed_at > COMMIT_AFTER_S
        ):
            self.commit()
        if self.failure is not None:
            self.finish()

    def finish(self) -> None:
        """Wait for every row in flight, commit, and raise what stopped the run, if anything."""
        if self.failure is not None:
            self._abort()
        chunk = max(1, self._batch_size // 10)  # the last rows in flight (up to 16 batches)
        while len(self.window) > chunk:  # are still committed, and shown done, as they are
            self._finished += self.window.finished(wait_for=chunk)
            self._ahead += self.window.done_ahead()
            if self._clock() - self._committed_at > COMMIT_AFTER_S:
                self.commit()
        self._finished += self.window.drain()
        self.commit()
        failure = self.failure
        if failure is None:
            return
        if isinstance(failure, FatalError):
            raise failure
        if isinstance(failure, Stopped):
            raise Stopped("stopped; the checkpoint stays before the rows not yet delivered")
        raise type(failure)(
            f"a row could not be delivered ({failure}); the checkpoint stays before it"
        ) from failure

    def commit(self) -> None:
        """Record the finished slots (and unchanged rows counted) in one transaction."""
        outcome = BatchOutcome()
        done = 0  # rows after the run's start newly done (for the progress bar)
        for slot in self._finished:  # in order: a failure stops the checkpoint right there
            if not slot.recorded:
                self._record(slot, outcome)
                done += slot.position is not None
            if (
                self.failure is None
                and not self.held
                and slot.position is not None
                and beyond(slot.position, self.floor)
            ):
                outcome.checkpoint = slot.position
        for slot in self._ahead:
            if not slot.recorded:
                self._record(slot, outcome)
                done += slot.position is not None
        self._finished, self._ahead = [], []
        self._committed_at = self._clock()
        stats = self.stats  # the run's rows so far, with this batch's: for ``status``
        outcome.counts = RunCounts(
            stats.read,
            stats.sent + len(outcome.acks),
            stats.unchanged + self.unchanged,
            stats.rejected + len(outcome.rejected),
        )
        if (
            outcome.acks
            or outcome.rejected
            or outcome.deleted
            or outcome.unsent
            or outcome.deliveries
            or outcome.checkpoint is not None
        ):
            self.part.commit(outcome)
        stats.sent += len(outcome.acks)
        stats.rejected += len(outcome.rejected)
        stats.rejected_rows += [{"key": r.key, "reason": r.reason} for r in outcome.rejected]
        stats.collisions += len(outcome.collisions)
        stats.unchanged += self.unchanged
        stats.deleted += self.deleted
        self._observe(outcome)
        self.unchanged = self.deleted = 0
        if done and self.progress is not None:
            self.progress(done)

    def _record(self, slot: Slot, outcome: BatchOutcome) -> None:
        """Add one finished slot's outcome."""
        slot.recorded = True
        result = slot.result()
        found = delivery(slot.key, slot.action, slot.payload, slot.fingerprint, result, slot.reason)
        if found is not None:  # the history keeps every request, superseded ones too
            outcome.deliveries.append(found)
        if slot.position is None and (slot.key, slot.fingerprint) in self.superseded:
            return  # a later version of the row was read this run: its outcome stands
        if slot.reason is not None:
            outcome.rejected.append(
                RejectedRow(slot.key, slot.payload, slot.reason, None, slot.fingerprint)
            )
        elif isinstance(result, Delivered) and slot.action == "delete":
            outcome.deleted.append(slot.key)
            self.deleted += 1
        elif isinstance(result, Delivered):
            outcome.acks.append(Ack(slot.key, result.user_id, slot.fingerprint))
        elif isinstance(result, Missing):
            outcome.deleted.append(slot.key)  # its user is gone: forget the user_id
            self.stats.missing += 1
        elif isinstance(result, Gone):  # Personyze deleted its user: send the row as new
            outcome.deleted.append(slot.key)
            self.again.append(slot.key)
            self.held = True
        elif isinstance(result, Unresolved):  # its mark stays: the next run reconciles it
            self.stats.unresolved += 1
            self.held = True
        elif isinstance(result, Refused):
            outcome.rejected.append(
                RejectedRow(slot.key, slot.payload, result.reason, result.status, slot.fingerprint)
            )
        elif isinstance(result, Failed):
            if not result.sent:
                outcome.unsent.append(slot.key)  # no request went out: its mark can go
            self.fail(result.error)  # start nothing more: the run ends here

    def _observe(self, outcome: BatchOutcome) -> None:
        if self._observer is None:
            return
        name = self.part.name
        for kind, count in (
            ("sent", len(outcome.acks)),
            ("rejected", len(outcome.rejected)),
            ("unchanged", self.unchanged),
            ("deleted", self.deleted),
        ):
            if count:
                self._observer.rows_done(name, kind, count)
        if outcome.checkpoint is not None:
            self._observer.checkpoint(name, outcome.checkpoint)


def beyond(position: Position, floor: Position | None) -> bool:
    """Whether a position is past the checkpoint the run started from (rows at the
    checkpoint's own cursor value are read again: they must not move it back)."""
    if floor is None or floor.key is None:
        return True
    try:
        return bool((position.cursor, position.key) > (floor.cursor, floor.key))
    except TypeError:
        return True
