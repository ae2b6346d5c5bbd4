"""One run of one part (a job, or one of its shards): the phases, in order.

A run first finishes what the last one left (rows sent without an answer, rows
Personyze rejected), then counts the deletes it would make and stops before sending
anything if they are more than ``max_deletes_per_run`` allows, then re-reads the
lookback window behind the checkpoint, then reads every row after the checkpoint up
to the largest cursor value seen at the start (in ``detect: diff`` mode: every row,
in key order), and last, with ``sync: mirror``, deletes the users of rows that
vanished from the source. Rows go through an ordered window (:mod:`sync.run.window`)
while their requests finish in any order; :mod:`sync.run.commit` keeps the checkpoint
behind every row not yet done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sync.config.jobs import JobSettings
from sync.errors import ConfigError, Stopped, SyncError
from sync.extract.query import DELETED
from sync.extract.reader import Row, SourceReader
from sync.load.reconcile import reconcile
from sync.load.targets import target_for
from sync.load.writer import Writer
from sync.mapping import Mapper, Record
from sync.model import Position, Progress, RunObserver, RunOptions, RunStats
from sync.run.commit import Commits
from sync.run.deletes import KEY_PAGE, Deletes
from sync.run.feed import Feed
from sync.run.window import Window
from sync.state.part import PartState
from sync.state.schema import key_text

log = logging.getLogger(__name__)

AUTO_RETRIES = 3  # an unchanged rejected row is retried on this many runs, then on demand
TAKEOVER_RENEWALS = 2.0  # seconds: the previous holder notices its lost lease within them


class JobRun:
    """The parts one run of one part needs, wired together.

    ``writer`` None: a dry run, nothing is sent. ``stop`` set: finish the batch in
    flight, then stop. ``settle_s``: the longest a request of another process may be in
    flight (a lease taken over waits that long before reading back what it did).
    """

    def __init__(
        self,
        job: JobSettings,
        *,
        reader: SourceReader,
        mapper: Mapper,
        part: PartState,
        writer: Writer | None,
        stop: threading.Event | None = None,
        observer: RunObserver | None = None,
        adopt: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        settle_s: float = 30.0,
    ) -> None:
        self.job = job
        self.reader = reader
        self.mapper = mapper
        self.part = part
        self.writer = writer
        self.stop = stop or threading.Event()
        self._settle_s = settle_s
        self.stats = RunStats()
        # users or products: what a row sends, how a delete names its record, and whether
        # a lost answer needs reading back (a product POST is idempotent: it never does)
        self.target = target_for(job.object)
        abort = writer.abort if writer is not None else (lambda: None)
        self.commits = Commits(
            part,
            Window(),
            self.stats,
            batch_size=job.source.batch_size,
            abort=abort,
            observer=observer,
            clock=clock,
        )
        self.deletes = Deletes(
            job,
            reader=reader,
            part=part,
            writer=writer,
            commits=self.commits,
            stats=self.stats,
            observer=observer,
            target=self.target,
        )
        self.feed = Feed(
            job,
            mapper=mapper,
            part=part,
            writer=writer,
            commits=self.commits,
            deletes=self.deletes,
            stats=self.stats,
            position=reader.position,
            stopping=self.stop.is_set,
            adopt=None if self.target.idempotent else adopt,  # nothing to adopt: no duplicate
            clock=clock,
            target=self.target,
        )

    def run(self, options: RunOptions, progress: Progress | None = None) -> RunStats:
        """Run once; the run history records the outcome whatever happens.

        ``progress`` is told the rows after the start that are done (acknowledged,
        rejected, unchanged, deleted: in a dry run, looked at), as they are.
        """
        self.commits.progress = progress
        if options.dry_run:
            self._sync(options)
            return self.stats
        with self._recorded(options.kind, lambda: self.stats.read):
            self._sync(options)
        return self.stats

    def resend(self, rows: list[Row], *, forget: Sequence[str] = ()) -> RunStats:
        """Send these rows whatever their fingerprints say (``verify --repair``).

        ``forget``: keys whose users are gone from Personyze: their rows are sent as new.
        """
        with self._recorded("repair", lambda: len(rows)):
            self.part.forget(forget)
            if rows:
                self.feed(rows, advance=False, retrying=True)
            self.feed.finish()
        return self.stats

    def pending_total(self, options: RunOptions) -> int:
        """The rows this run will read after its start (for a progress bar)."""
        start = None if options.full else options.start or self.part.checkpoint()
        return self.reader.count(start, self.reader.max_cursor())

    @contextmanager
    def _recorded(self, kind: str, read: Callable[[], int]) -> Iterator[None]:
        """A run in the run history: started here, its outcome recorded whatever happens."""
        run_id = self.part.start_run(kind)
        outcome, error = "failed", None
        try:
            yield
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
            self.part.finish_run(
                run_id, outcome, read=read(), sent=s.sent, unchanged=s.unchanged,
                rejected=s.rejected, error=error,
            )  # fmt: skip

    # -- the phases ------------------------------------------------------------

    def _sync(self, options: RunOptions) -> None:
        feed = self.feed
        if self.writer is not None and not self.target.idempotent:  # products: resent as is
            self._reconcile_pending()
        checkpoint = self.part.checkpoint()
        start = None if options.full else options.start or checkpoint
        log.info(
            "run started",
            extra={
                "job": self.part.name, "kind": options.kind, "dry_run": options.dry_run,
                "checkpoint": _shown(checkpoint), "reads_from": _shown(start),
            },
        )  # fmt: skip
        self.commits.floor = checkpoint if start is checkpoint else None
        if not options.only_rejected:
            self.deletes.plan(start)  # before anything is sent
        self._retry_rejected(force=options.only_rejected)
        self._send_again()
        if options.only_rejected:
            feed.finish()
            return
        if self.job.sync == "mirror" and self.writer is not None:
            self._returned()
        if start is not None and start is checkpoint:
            if self.job.source.lookback:
                lower = _minus(checkpoint.cursor, self.job.source.lookback)
                for batch in self.reader.batches_in_window(lower, checkpoint):
                    feed(batch, advance=False)
                    self._log_read(len(batch), "lookback")
            # Rows can still reach the checkpoint's own cursor value with a smaller key (a
            # timestamp of second or day precision): read that value again, all of it.
            start = Position(checkpoint.cursor, None)
        committed = checkpoint
        for batch in self.reader.batches_after(start):
            feed(batch, advance=True)
            self._log_read(len(batch), "after the checkpoint")
            committed = self._log_committed(committed)
        feed.finish()
        self._log_committed(committed)
        self._log_moved(checkpoint)
        self._send_again()
        if self.job.sync == "mirror" or self.job.source.detect == "diff":
            self.deletes.vanished(delete=self.job.sync == "mirror")
        if self.job.source.detect == "diff" and self.writer is not None and not self.commits.held:
            self.part.set_checkpoint(None)  # a pass is done: start over

    def _reconcile_pending(self) -> None:
        """Rows sent without a certain answer: adopt what Personyze made of them, and
        send again (later in this run) those it never received."""
        assert self.writer is not None
        marks = self.part.pending()
        if not marks:
            return
        self._wait_for_takeover()
        found = reconcile(self.writer.client, self.part.name, marks, self.part.holders_anywhere)
        self.part.adopt(found.adopted, found.duplicates)
        self.part.clear_pending(found.lost)
        self.commits.again += found.lost

    def _wait_for_takeover(self) -> None:
        """A lease taken over from a holder that never released it: wait out the requests
        it may still have in flight before reading back what they did."""
        lease = self.part.fence
        if lease is None or lease.takeover_of is None:
            return
        settle = lease.takeover_of + TAKEOVER_RENEWALS + self._settle_s
        while (left := settle - lease.store_now()) > 0:
            if self.stop.wait(min(left, 1.0)):
                raise Stopped("stopped while waiting out the previous holder's requests")

    def _send_again(self) -> None:
        """Rows to send as new: marks nobody answered for, users deleted in Personyze."""
        keys, self.commits.again = list(dict.fromkeys(self.commits.again)), []
        if not keys or self.writer is None:
            return
        rows = self._rows_of(keys)
        if rows:
            self.feed(rows, advance=False, retrying=True)
            self.feed.finish()

    def _returned(self) -> None:
        """Rows a mirror run deleted as vanished that are back in the source: send them."""
        after: str | None = None
        while page := self.part.vanished_keys(after, KEY_PAGE):
            after = page[-1][0]
            back = self._rows_of([k for k, _ in page])
            if back:
                self.feed(back, advance=False, retrying=True)

    def _retry_rejected(self, *, force: bool = False) -> None:
        """Re-read rejected rows from the source and send those worth another try.

        A row is worth it when its data changed, or for its first few attempts; ``force``
        retries every one of them (``rejected retry``).
        """
        stored = {r.key: r for r in self.part.rejections()}
        if not stored:
            return
        rows = self.reader.rows_by_key([self.reader.typed_key(k) for k in stored])
        rows = [r for r in rows if r.pop(DELETED, 0) != 1]  # deleted at the source: no retry
        found = {key_text(r[self.job.source.key]) for r in rows}
        if self.writer is not None:  # rows gone from the source need no retry
            self.part.drop_rejections([k for k in stored if k not in found])
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
            self.feed(due, advance=False, retrying=True)

    def _log_read(self, rows: int, phase: str) -> None:
        log.debug("batch read", extra={"job": self.part.name, "phase": phase, "rows": rows})

    def _log_committed(self, committed: Position | None) -> Position | None:
        """At -vv: the checkpoint, when a commit has moved it past ``committed``.
        Returns the checkpoint as committed now."""
        if self.writer is None or not log.isEnabledFor(logging.DEBUG):
            return committed
        now = self.part.checkpoint()
        if now != committed:
            log.debug("checkpoint committed", extra={"job": self.part.name, "to": _shown(now)})
        return now

    def _log_moved(self, before: Position | None) -> None:
        """At -v: where the run moved the checkpoint, from ``before``."""
        if self.writer is None or not log.isEnabledFor(logging.INFO):
            return
        now = self.part.checkpoint()
        if now != before:
            extra = {"job": self.part.name, "from": _shown(before), "to": _shown(now)}
            log.info("checkpoint moved", extra=extra)

    def _rows_of(self, keys: Sequence[str]) -> list[Row]:
        """The source's rows of these keys (only those whose key text is one of them)."""
        wanted = set(keys)
        rows = self.reader.rows_by_key([self.reader.typed_key(k) for k in keys])
        return [r for r in rows if key_text(r[self.job.source.key]) in wanted]


def _shown(position: Position | None) -> dict[str, Any] | None:
    """A position in a log line: its cursor and key, as ``status --json`` shows them."""
    if position is None:
        return None
    cursor, key = position.cursor, position.key
    return {
        "cursor": cursor if isinstance(cursor, int | float) else str(cursor),
        "key": key if key is None or isinstance(key, int | float) else str(key),
    }


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
