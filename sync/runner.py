"""One run of one job: checkpoint -> extract -> map -> load -> commit.

A run first finishes what the last one left (rows sent without an answer, rows
Personyze rejected), then counts the deletes it would make and stops before sending
anything if they are more than ``max_deletes_per_run`` allows, then re-reads the
lookback window behind the checkpoint, then reads every row after the checkpoint up
to the largest cursor value seen at the start (in ``detect: diff`` mode: every row,
in key order), and last, with ``sync: mirror``, deletes the users of rows that
vanished from the source. Rows go through an ordered window (:mod:`sync.load.window`) while their
requests finish in any order; outcomes are committed a few times a second, and the
checkpoint only ever moves to the end of the longest prefix of rows that were
acknowledged, skipped as unchanged, or durably recorded as rejected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Protocol

from sync.config.jobs import JobSettings
from sync.errors import ConfigError, FatalError, LeaseLost, Stopped, SyncError, TooManyDeletes
from sync.extract.query import DELETED, Position
from sync.extract.reader import Row, SourceReader
from sync.load.reconcile import reconcile
from sync.load.window import Slot, Window
from sync.load.writer import (
    Delivered,
    Failed,
    Gone,
    Missing,
    Outgoing,
    Refused,
    Unresolved,
    Writer,
    merges,
)
from sync.mapping import Mapper, Record, Rejection
from sync.state.records import Ack, BatchOutcome, Collision, KnownRow, Mark, RejectedRow
from sync.state.schema import key_text
from sync.state.store import Fence, StateStore

AUTO_RETRIES = 3  # an unchanged rejected row is retried on this many runs, then on demand
WINDOW_BATCHES = 4  # rows being sent at once, in batches: room for slow rows to retry
HELD_BATCHES = 16  # rows read but not yet behind the checkpoint, in batches (memory)
KEY_PAGE = 1000  # identity-map keys checked against the source per query (vanished rows)
WATERMARK_AGE_S = 60.0  # how long a watermark read from Personyze serves new marks


@dataclass
class RunStats:
    read: int = 0
    sent: int = 0
    skipped: int = 0
    rejected: int = 0
    collisions: int = 0
    deleted: int = 0  # users deleted (delete_when, or vanished rows with sync: mirror)
    missing: int = 0  # sync: update found no such user: counted, never created
    vanished: int = 0  # synced rows no longer in the source (deleted only with mirror)
    unresolved: int = 0  # sent without a certain answer: the next run reconciles them
    would_send: list[dict[str, Any]] = field(default_factory=list)
    would_delete: list[dict[str, Any]] = field(default_factory=list)
    too_many_deletes: str | None = None  # a dry run says why the real run would stop
    held_elsewhere: list[str] = field(default_factory=list)  # parts another process ran

    def add(self, other: RunStats) -> None:
        """Fold in the figures of another part (shard) of the same run."""
        self.read += other.read
        self.sent += other.sent
        self.skipped += other.skipped
        self.rejected += other.rejected
        self.collisions += other.collisions
        self.deleted += other.deleted
        self.missing += other.missing
        self.vanished += other.vanished
        self.unresolved += other.unresolved
        self.would_send += other.would_send
        self.would_delete += other.would_delete
        self.held_elsewhere += other.held_elsewhere
        self.too_many_deletes = self.too_many_deletes or other.too_many_deletes


@dataclass(frozen=True)
class RunOptions:
    kind: str = "once"  # once | backfill
    dry_run: bool = False
    start: Position | None = None  # overrides the checkpoint (backfill --since / --full)
    full: bool = False
    only_rejected: bool = False  # ``rejected retry``: retry every rejected row now, nothing else


Progress = Callable[[int], None]


class RunObserver(Protocol):
    """Told of a run's progress as it happens (the daemon's metrics)."""

    def rows_done(self, job: str, outcome: str, count: int) -> None: ...

    def checkpoint(self, job: str, position: Position) -> None: ...


class JobRun:
    """The parts one run of one job needs, wired together."""

    def __init__(
        self,
        job: JobSettings,
        *,
        reader: SourceReader,
        mapper: Mapper,
        store: StateStore,
        writer: Writer | None,
        stop: threading.Event | None = None,
        observer: RunObserver | None = None,
        name: str | None = None,
        parts: Sequence[str] = (),
        fence: Fence | None = None,
        clock: Callable[[], float] = time.monotonic,
        settle_s: float = 30.0,
    ) -> None:
        self.job = job
        self.name = name or job.name  # what the state store knows it by: the job, or a shard
        self.parts = list(parts) or [self.name]  # every part of the job (collisions span them)
        self.fence = fence  # the run's lease: every write checks it
        self._clock = clock
        self._settle_s = settle_s  # the longest a request of another process may be in flight
        self.reader = reader
        self.mapper = mapper
        self.store = store
        self.writer = writer  # None: dry run, nothing is sent
        self.stop = stop or threading.Event()  # set: finish the batch in flight, then stop
        self.observer = observer
        self.stats = RunStats()
        self._handled: dict[str, str] = {}  # rows sent earlier this run -> fingerprint
        self._superseded: set[tuple[str, str]] = set()  # (key, fingerprint) read again since
        self._again: list[str] = []  # keys to read and send as new before the run ends
        self._held = False  # a row is not done for certain: the checkpoint stays before it
        self._floor: Position | None = None  # the checkpoint the run started from
        self._watermark: tuple[float, int] | None = None  # (read at, Personyze's newest change)
        # Called once, before the first row that cannot merge is sent: a state store that
        # never synced the job adopts the users Personyze already holds (sync.adopt).
        self.adopt: Callable[[], None] | None = None
        self._window = Window()  # rows read, in order, some still being sent
        self._finished: list[Slot] = []  # the window's finished prefix, not yet committed
        self._ahead: list[Slot] = []  # finished beyond that prefix, not yet committed
        self._committed_at = time.monotonic()
        self._skipped = 0  # unchanged rows since the last commit
        self._deleted = 0  # users deleted since the last commit
        self._deletes_left = 0  # deletes this run may still make (max_deletes_per_run)
        self._failure: SyncError | None = None  # the first row that could not be delivered

    def run(self, options: RunOptions, progress: Progress | None = None) -> RunStats:
        """Run once; the run history records the outcome whatever happens."""
        if options.dry_run:
            self._sync(options, progress)
            return self.stats
        run_id = self.store.start_run(self.name, options.kind)
        outcome, error = "failed", None
        try:
            self._sync(options, progress)
            outcome = "success"
        except Stopped as exc:
            outcome, error = "stopped", str(exc)
            raise
        except SyncError as exc:
            error = str(exc)
            raise
        except BaseException as exc:
            outcome, error = "interrupted", type(exc).__name__
            raise
        finally:
            s = self.stats
            self.store.finish_run(
                run_id,
                outcome,
                read=s.read,
                sent=s.sent,
                skipped=s.skipped,
                rejected_count=s.rejected,
                error=error,
            )
        return self.stats

    def resend(self, rows: list[Row], *, forget: Sequence[str] = ()) -> RunStats:
        """Send these rows whatever their fingerprints say (``verify --repair``).

        ``forget``: keys whose users are gone from Personyze: their rows are sent as new.
        """
        run_id = self.store.start_run(self.name, "repair")
        outcome, error = "failed", None
        try:
            self.store.forget_rows(self.name, forget, self.fence)
            if rows:
                self._feed(rows, advance=False, retrying=True)
            self._finish()
            outcome = "success"
        except SyncError as exc:
            error = str(exc)
            raise
        finally:
            s = self.stats
            self.store.finish_run(
                run_id,
                outcome,
                read=len(rows),
                sent=s.sent,
                skipped=s.skipped,
                rejected_count=s.rejected,
                error=error,
            )
        return self.stats

    def pending_total(self, options: RunOptions) -> int:
        start = None if options.full else options.start or self.store.checkpoint(self.name)
        return self.reader.count(start, self.reader.max_cursor())

    # -- the phases ------------------------------------------------------------

    def _sync(self, options: RunOptions, progress: Progress | None) -> None:
        name = self.name
        if self.writer is not None:
            self._reconcile_pending()
        checkpoint = self.store.checkpoint(name)
        start = None if options.full else options.start or checkpoint
        self._floor = checkpoint if start is checkpoint else None
        if not options.only_rejected:
            self._plan_deletes(start)  # before anything is sent
        self._retry_rejected(force=options.only_rejected)
        self._send_again()
        if options.only_rejected:
            self._finish()
            return
        if self.job.sync == "mirror" and self.writer is not None:
            self._returned()
        if start is not None and start is checkpoint:
            if self.job.source.lookback:
                lower = _minus(checkpoint.cursor, self.job.source.lookback)
                for batch in self.reader.batches_in_window(lower, checkpoint):
                    self._feed(batch, advance=False)
            # Rows can still reach the checkpoint's own cursor value with a smaller key (a
            # timestamp of second or day precision): read that value again, all of it.
            start = Position(checkpoint.cursor, None)
        for batch in self.reader.batches_after(start):
            self._feed(batch, advance=True)
            if progress is not None:
                progress(len(batch))
        self._finish()
        self._send_again()
        if self.job.sync == "mirror" or self.job.source.detect == "diff":
            self._vanished(delete=self.job.sync == "mirror")
        if self.job.source.detect == "diff" and self.writer is not None and not self._held:
            self.store.set_checkpoint(name, None, self.fence)  # a pass is done: start over

    # -- deletes ---------------------------------------------------------------

    def _plan_deletes(self, start: Position | None) -> None:
        """Count the deletes this run would make; stop now, deleting nothing, if too many.

        A dry run lists them instead.
        """
        job = self.job
        if self.reader.shape.deleted is None and job.sync != "mirror":
            return
        known = self.store.row_count(self.name)
        allowed = job.max_deletes_per_run.allowed(known)
        planned = 0
        listing = self.writer is None
        for key, user_id in self._soft_deletes(start):
            planned += 1
            if listing:
                entry = {"key": key, "user_id": user_id, "why": "delete_when"}
                self.stats.would_delete.append(entry)
            elif planned > allowed:
                break
        if job.sync == "mirror" and (listing or planned <= allowed):
            for gone in self._vanished_pages():
                planned += len(gone)
                if listing:
                    self.stats.would_delete += [
                        {"key": k, "user_id": u, "why": "vanished from the source"} for k, u in gone
                    ]
                elif planned > allowed:
                    break
        self._deletes_left = allowed
        if planned > allowed:
            reason = (
                f"job {self.name!r} would delete {'at least ' if not listing else ''}{planned} "
                f"Personyze users, more than max_deletes_per_run allows ({allowed}: "
                f"{job.max_deletes_per_run} of the {known} users this job has synced); "
                "nothing was deleted and nothing sent. Check the source (run with --dry-run "
                "to list them), then raise max_deletes_per_run if the deletes are meant"
            )
            if listing:
                self.stats.too_many_deletes = reason
            else:
                raise TooManyDeletes(reason)

    def _soft_deletes(self, start: Position | None) -> Iterator[tuple[str, int]]:
        """Synced rows that ``delete_when`` now marks, from ``start`` on."""
        if self.reader.shape.deleted is None:
            return
        key = self.job.source.key
        for batch in self.reader.deleted_after(start, None):
            keys = [key_text(r[key]) for r in batch]
            known = self.store.known_rows(self.name, keys)
            yield from ((k, known[k].user_id) for k in keys if k in known)

    def _vanished_pages(self) -> Iterator[list[tuple[str, int]]]:
        """Synced rows whose keys the source no longer holds, a page at a time."""
        after: str | None = None
        while page := self.store.known_keys(self.name, after, KEY_PAGE):
            after = page[-1][0]
            typed = [self.reader.typed_key(k) for k, _ in page]
            present = {key_text(k) for k in self.reader.present_keys(typed)}
            gone = [(k, u) for k, u in page if k not in present]
            if gone:
                yield gone

    def _vanished(self, *, delete: bool) -> None:
        """Count synced rows that vanished; with ``delete``, delete their users.

        Every vanished row is counted before any is deleted (a source briefly empty at
        the end of a run stops it here, deleting nothing), and each page is checked
        against the source again right before its deletes. A deleted row is kept as
        vanished, so it is sent again if it comes back with an old cursor value.
        """
        gone = sum(len(page) for page in self._vanished_pages())
        self.stats.vanished += gone
        if not delete or self.writer is None or not gone:
            return
        if gone > self._deletes_left:
            raise TooManyDeletes(
                f"job {self.name!r}: {gone} rows vanished from the source while the run "
                f"went on, more than max_deletes_per_run still allows "
                f"({max(0, self._deletes_left)}); nothing was deleted. Check the source"
            )
        for page in self._vanished_pages():
            present = {key_text(k) for k in self.reader.present_keys(
                [self.reader.typed_key(k) for k, _ in page])}  # fmt: skip
            items = [Outgoing(k, {"user_id": u}, "delete") for k, u in page if k not in present]
            self._deletes_left -= len(items)
            results = self.writer.send(items)
            outcome = BatchOutcome()
            for item, result in zip(items, results, strict=True):
                if isinstance(result, Failed):
                    self._failure = self._failure or result.error
                elif isinstance(result, Delivered):
                    outcome.vanished.append((item.key, int(item.payload["user_id"])))
            self.store.commit_batch(self.name, outcome, self.fence)
            self.stats.deleted += len(outcome.vanished)
            if self.observer is not None and outcome.vanished:
                self.observer.rows_done(self.name, "deleted", len(outcome.vanished))
            if self._failure is not None:
                self._finish()

    def _returned(self) -> None:
        """Rows a mirror run deleted as vanished that are back in the source: send them."""
        after: str | None = None
        while page := self.store.vanished_keys(self.name, after, KEY_PAGE):
            after = page[-1][0]
            keys = {k for k, _ in page}
            back = self.reader.rows_by_key([self.reader.typed_key(k) for k in keys])
            back = [r for r in back if key_text(r[self.job.source.key]) in keys]
            if back:
                self._feed(back, advance=False, retrying=True)

    def _reconcile_pending(self) -> None:
        """Rows sent without a certain answer: adopt what Personyze made of them, and
        send again (later in this run) those it never received."""
        assert self.writer is not None
        marks = self.store.pending(self.name)
        if not marks:
            return
        self._wait_for_takeover()
        found = reconcile(self.writer.client, self.name, marks, self.store.holders_anywhere)
        self.store.adopt(self.name, found.adopted, found.duplicates, self.fence)
        self.store.clear_pending(self.name, found.lost, self.fence)
        self._again += found.lost

    def _wait_for_takeover(self) -> None:
        """A lease taken over from a holder that never released it: wait out the requests
        it may still have in flight before reading back what they did."""
        lease = self.fence
        if lease is None or lease.takeover_of is None:
            return
        settle = lease.takeover_of + TAKEOVER_RENEWALS + self._settle_s
        while (left := settle - lease.store_now()) > 0:
            if self.stop.wait(min(left, 1.0)):
                raise Stopped("stopped while waiting out the previous holder's requests")

    def _send_again(self) -> None:
        """Rows to send as new: marks nobody answered for, users deleted in Personyze."""
        keys, self._again = list(dict.fromkeys(self._again)), []
        if not keys or self.writer is None:
            return
        rows = self.reader.rows_by_key([self.reader.typed_key(k) for k in keys])
        wanted = set(keys)
        rows = [r for r in rows if key_text(r[self.job.source.key]) in wanted]
        if rows:
            self._feed(rows, advance=False, retrying=True)
            self._finish()

    def _retry_rejected(self, *, force: bool = False) -> None:
        """Re-read rejected rows from the source and send those worth another try.

        A row is worth it when its data changed, or for its first few attempts; ``force``
        retries every one of them (``rejected retry``).
        """
        stored = {r.key: r for r in self.store.rejections(self.name)}
        if not stored:
            return
        rows = self.reader.rows_by_key([self.reader.typed_key(k) for k in stored])
        rows = [r for r in rows if r.pop(DELETED, 0) != 1]  # deleted at the source: no retry
        found = {key_text(r[self.job.source.key]) for r in rows}
        if self.writer is not None:  # rows gone from the source need no retry
            self.store.drop_rejections(self.name, [k for k in stored if k not in found], self.fence)
        due = []
        for row in rows:
            mapped = self.mapper.map(row)
            previous = stored.get(key_text(mapped.key))
            if previous is None:  # a key that equals a stored one only by its collation
                continue
            sendable = isinstance(mapped, Record)
            if (
                force
                or mapped.fingerprint != previous.fingerprint
                or (sendable and previous.attempts < AUTO_RETRIES)
            ):
                due.append(row)
        if due:
            self._feed(due, advance=False, retrying=True)

    # -- rows through the window -------------------------------------------------

    def _feed(self, batch: list[Row], *, advance: bool, retrying: bool = False) -> None:
        """Map a batch, skip what is unchanged or was just handled, start sending the rest.

        Slots go into the window in source order; ``advance``: these rows move the
        checkpoint once they and every row before them are done.
        """
        if self.fence is not None and self.fence.lost.is_set():
            raise LeaseLost(
                f"job {self.name}: this run lost its lease on the state store (its connection "
                "dropped, or another process took it over); it stopped and writes nothing more"
            )
        if self.stop.is_set():
            self._finish()
            raise Stopped("stopped between batches; the checkpoint is saved")
        name = self.name
        if not retrying:
            self.stats.read += len(batch)
        flagged = [row.pop(DELETED, 0) == 1 for row in batch]
        mapped = [self.mapper.map(row) for row in batch]
        if self.adopt is not None and self.writer is not None and any(map(_unmergeable, mapped)):
            adopt, self.adopt = self.adopt, None
            adopt()  # before this batch's identities are read: it may fill them
        keys = [key_text(m.key) for m in mapped]
        known = self.store.known_rows(name, keys)
        refused = {} if retrying else self.store.rejected_fingerprints(name, keys)
        slots: list[Slot] = []
        for row, m, key, deleted in zip(batch, mapped, keys, flagged, strict=True):
            slot = Slot(key, self.reader.position(row) if advance else None, m.fingerprint)
            previous = known.get(key)
            unchanged = previous is not None and previous.fingerprint == m.fingerprint
            if self._handled.get(key, m.fingerprint) != m.fingerprint:  # read again, changed:
                self._superseded.add((key, self._handled[key]))  # the earlier outcome yields
            if deleted:  # delete_when marks it: delete its user, if it has one
                if previous is None:
                    self._skipped += 1  # never synced: nothing to delete
                elif self.writer is not None:
                    slot.payload, slot.action = {"user_id": previous.user_id}, "delete"
                    self._deletes_left -= 1
                    if self._deletes_left < 0:
                        self._finish()  # what was read before this batch is saved
                        raise TooManyDeletes(
                            f"job {name!r}: more rows were marked deleted while the run went "
                            "on than max_deletes_per_run allows; the rest were not deleted"
                        )
            elif not retrying and (
                unchanged
                or self._handled.get(key) == m.fingerprint
                or refused.get(key) == m.fingerprint
            ):
                self._skipped += 1
            elif isinstance(m, Rejection):
                slot.payload, slot.reason = m.payload, m.reason
            else:
                slot.payload = _payload(m, previous)
                slot.known = previous is not None and "user_id" not in m.payload
                if self.job.sync == "update":
                    slot.action = "update"
            if retrying or advance is False:
                self._handled[key] = m.fingerprint
            slots.append(slot)
        if self.job.sync == "update" and self.writer is not None:
            self._find_users(slots)
        if self.writer is None:  # a dry run: say what would be sent, send nothing
            self.stats.skipped += self._skipped
            self._skipped = 0
            self.stats.rejected += sum(1 for s in slots if s.reason is not None)
            self.stats.would_send += [s.payload for s in slots if _to_send(s)]
            return
        self.store.add_pending(name, self._marks(slots), self.fence)  # durably, before sending
        for slot in slots:
            slot.sent = _to_send(slot)
            self._window.add(slot)
            if slot.sent:
                outgoing = Outgoing(slot.key, slot.payload, slot.action, slot.known)
                self.writer.start(outgoing, partial(self._window.complete, slot))
            self._make_room()
        self._collect()

    def _marks(self, slots: list[Slot]) -> list[Mark]:
        """A mark for each first send (no user_id yet); a payload that cannot merge also
        carries Personyze's newest change, where a later read-back begins."""
        first = [
            s for s in slots if _to_send(s) and s.action == "upsert" and "user_id" not in s.payload
        ]
        marks = []
        for slot in first:
            watermark = None if merges(slot.payload) else self._newest_change()
            marks.append(Mark(slot.key, dict(slot.payload), slot.fingerprint, watermark))
        return marks

    def _newest_change(self) -> int:
        """Personyze's newest data_last_modified, read again once a minute of sending."""
        assert self.writer is not None
        now = self._clock()
        if self._watermark is None or now - self._watermark[0] > WATERMARK_AGE_S:
            self._watermark = (now, self.writer.client.newest_change() or 0)
        return self._watermark[1]

    def _find_users(self, slots: list[Slot]) -> None:
        """``sync: update``: find by email the users of rows never synced; skip the rest.

        Such a row is never sent as an insert: a user Personyze does not have is counted
        as missing and left alone.
        """
        assert self.writer is not None
        unknown = [s for s in slots if s.action == "update" and "user_id" not in s.payload]
        emails = [str(s.payload["email"]) for s in unknown if s.payload.get("email")]
        found = self.writer.find_by_email(emails) if emails else {}
        for slot in unknown:
            user_id = found.get(str(slot.payload.get("email", "")).lower())
            if user_id is None:
                slot.payload = {}
                self.stats.missing += 1
            else:
                slot.payload["user_id"] = user_id

    def _make_room(self) -> None:
        """Wait while too many rows are being sent, or too many are held behind one."""
        batch = self.job.source.batch_size
        quarter = max(1, batch // 4)
        while len(self._window) >= HELD_BATCHES * batch:  # behind a row waiting out retries
            self._collect(wait_for=quarter)
        if self._window.pending >= WINDOW_BATCHES * batch:
            self._window.wait_for_room(WINDOW_BATCHES * batch - quarter)
            self._collect()

    def _collect(self, *, wait_for: int = 0) -> None:
        """Take what finished (waiting for the oldest ``wait_for`` rows first); commit
        every quarter batch or half second."""
        self._finished += self._window.finished(wait_for=wait_for)
        self._ahead += self._window.done_ahead()
        waiting = len(self._finished) + len(self._ahead)
        if waiting >= max(1, self.job.source.batch_size // 4) or (
            waiting and time.monotonic() - self._committed_at > 0.5
        ):
            self._commit()
        if self._failure is not None:
            self._finish()

    def _finish(self) -> None:
        """Wait for every row in flight, commit, and raise what stopped the run, if anything."""
        if self.writer is None:
            return
        if self._failure is not None:
            self.writer.abort()
        self._finished += self._window.drain()
        self._commit()
        failure = self._failure
        if failure is None:
            return
        if isinstance(failure, FatalError):
            raise failure
        if isinstance(failure, Stopped):
            raise Stopped("stopped; the checkpoint stays before the rows not yet delivered")
        raise type(failure)(
            f"a row could not be delivered ({failure}); the checkpoint stays before it"
        ) from failure

    def _commit(self) -> None:
        """Record finished slots in one transaction.

        The checkpoint moves to the end of the finished prefix, and never again once a
        row could not be delivered; outcomes of rows finished beyond the prefix are
        recorded too, so that a crash does not send them again.
        """
        outcome = BatchOutcome()
        for slot in self._finished:  # in order: a failure stops the checkpoint right there
            if not slot.recorded:
                self._record(slot, outcome)
            if (
                self._failure is None
                and not self._held
                and slot.position is not None
                and _beyond(slot.position, self._floor)
            ):
                outcome.checkpoint = slot.position
        for slot in self._ahead:
            if not slot.recorded:
                self._record(slot, outcome)
        self._finished, self._ahead = [], []
        self._committed_at = time.monotonic()
        outcome.collisions = self._collisions(outcome.acks)
        if (
            outcome.acks
            or outcome.rejected
            or outcome.deleted
            or outcome.unsent
            or outcome.checkpoint is not None
        ):
            self.store.commit_batch(self.name, outcome, self.fence)
        stats = self.stats
        stats.sent += len(outcome.acks)
        stats.rejected += len(outcome.rejected)
        stats.collisions += len(outcome.collisions)
        stats.skipped += self._skipped
        stats.deleted += self._deleted
        self._observe(outcome, skipped=self._skipped, deleted=self._deleted)
        self._skipped = self._deleted = 0

    def _record(self, slot: Slot, outcome: BatchOutcome) -> None:
        """Add one finished slot's outcome; the first failure ends the run's progress."""
        slot.recorded = True
        result = slot.result()
        if slot.position is None and (slot.key, slot.fingerprint) in self._superseded:
            return  # a later version of the row was read this run: its outcome stands
        if slot.reason is not None:
            outcome.rejected.append(
                RejectedRow(slot.key, slot.payload, slot.reason, None, slot.fingerprint)
            )
        elif isinstance(result, Delivered) and slot.action == "delete":
            outcome.deleted.append(slot.key)
            self._deleted += 1
        elif isinstance(result, Delivered):
            outcome.acks.append(Ack(slot.key, result.user_id, slot.fingerprint))
        elif isinstance(result, Missing):
            outcome.deleted.append(slot.key)  # its user is gone: forget the user_id
            self.stats.missing += 1
        elif isinstance(result, Gone):  # Personyze deleted its user: send the row as new
            outcome.deleted.append(slot.key)
            self._again.append(slot.key)
            self._held = True
        elif isinstance(result, Unresolved):  # its mark stays: the next run reconciles it
            self.stats.unresolved += 1
            self._held = True
        elif isinstance(result, Refused):
            outcome.rejected.append(
                RejectedRow(slot.key, slot.payload, result.reason, result.status, slot.fingerprint)
            )
        elif isinstance(result, Failed) and not result.sent:
            outcome.unsent.append(slot.key)  # no request went out: its mark can go
            if self._failure is None:
                self._failure = result.error
                assert self.writer is not None
                self.writer.abort()
        elif isinstance(result, Failed) and self._failure is None:
            self._failure = result.error
            assert self.writer is not None
            self.writer.abort()  # start nothing more: the run ends here

    def _observe(self, outcome: BatchOutcome, *, skipped: int, deleted: int) -> None:
        if self.observer is None:
            return
        name = self.name
        for kind, count in (
            ("sent", len(outcome.acks)),
            ("rejected", len(outcome.rejected)),
            ("skipped", skipped),
            ("deleted", deleted),
        ):
            if count:
                self.observer.rows_done(name, kind, count)
        if outcome.checkpoint is not None:
            self.observer.checkpoint(name, outcome.checkpoint)

    def _collisions(self, acks: list[Ack]) -> list[Collision]:
        """Acks whose user_id another row already holds: two rows, one Personyze user."""
        holders = self.store.holders(self.parts, (a.user_id for a in acks))
        seen: dict[int, str] = {}
        found = []
        for ack in acks:
            others = [k for k in holders.get(ack.user_id, []) if k != ack.key]
            other = others[0] if others else seen.get(ack.user_id)
            if other is not None and other != ack.key:
                found.append(Collision(ack.key, ack.user_id, other))
            seen.setdefault(ack.user_id, ack.key)
        return found


TAKEOVER_RENEWALS = 2.0  # seconds: the previous holder notices its lost lease within them


def _beyond(position: Position, floor: Position | None) -> bool:
    """Whether a position is past the checkpoint the run started from (rows at the
    checkpoint's own cursor value are read again: they must not move it back)."""
    if floor is None or floor.key is None:
        return True
    try:
        return bool((position.cursor, position.key) > (floor.cursor, floor.key))
    except TypeError:
        return True


def _unmergeable(mapped: Record | Rejection) -> bool:
    """A sendable row Personyze could not merge on a resend (no email, no user_id)."""
    return isinstance(mapped, Record) and not merges(mapped.payload)


def _to_send(slot: Slot) -> bool:
    return slot.reason is None and bool(slot.payload)


def _payload(record: Record, previous: KnownRow | None) -> dict[str, Any]:
    """The record's payload, carrying the user_id Personyze gave this row before."""
    payload: dict[str, Any] = dict(record.payload)
    if previous is not None and "user_id" not in payload:
        payload["user_id"] = previous.user_id
    return payload


def _minus(cursor: Any, lookback: timedelta | int | float) -> Any:
    if isinstance(cursor, datetime | date) and isinstance(lookback, timedelta):
        return cursor - lookback
    if isinstance(cursor, Decimal) and isinstance(lookback, int | float):
        return cursor - Decimal(str(lookback))
    if isinstance(cursor, int | float) and isinstance(lookback, int | float):
        return cursor - lookback
    raise ConfigError(
        f"lookback {lookback!r} does not fit a cursor of type {type(cursor).__name__}: "
        "use a duration (5m) for time cursors and a number for numeric ones"
    )
