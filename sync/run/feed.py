"""One batch of source rows into the window: map each, decide what it needs (skip it as
unchanged, send it, delete its user, record its rejection), mark first sends, start
the sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from sync.config.jobs import JobSettings
from sync.errors import LeaseLost, Stopped
from sync.extract.query import DELETED
from sync.extract.reader import Row
from sync.load.targets import USERS, Target
from sync.load.writer import Outgoing, Writer, merges
from sync.mapping import Mapper, Record, Rejection
from sync.model import RunStats
from sync.run.commit import Commits
from sync.run.deletes import Deletes
from sync.run.window import Slot
from sync.state.part import PartState
from sync.state.records import Mark
from sync.state.schema import key_text

WINDOW_BATCHES = 4  # rows being sent at once, in batches: room for slow rows to retry
HELD_BATCHES = 16  # rows read but not yet behind the checkpoint, in batches (memory)
WATERMARK_AGE_S = 60.0  # how long a watermark read from Personyze serves new marks


class Feed:
    """Feeds batches of one run into its window (``writer`` None: a dry run, which only
    counts and lists).

    ``adopt``: called once, before the first row that cannot merge is sent: a state
    store that never synced the job adopts the users Personyze already holds.
    """

    def __init__(
        self,
        job: JobSettings,
        *,
        mapper: Mapper,
        part: PartState,
        writer: Writer | None,
        commits: Commits,
        deletes: Deletes,
        stats: RunStats,
        position: Callable[[Row], Any],
        stopping: Callable[[], bool],
        adopt: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        target: Target = USERS,
    ) -> None:
        self.job = job
        self.target = target  # what a row sends, and how a delete names its record
        self.mapper = mapper
        self.part = part
        self.writer = writer
        self.commits = commits
        self.deletes = deletes
        self.stats = stats
        self._position = position
        self._stopping = stopping
        self.adopt = adopt
        self._clock = clock
        self.handled: dict[str, str] = {}  # rows sent earlier this run -> fingerprint
        self._watermark: tuple[float, int] | None = None  # (read at, Personyze's newest)

    def __call__(self, batch: list[Row], *, advance: bool, retrying: bool = False) -> None:
        """Map a batch, skip what is unchanged or was just handled, start sending the rest.

        Slots go into the window in source order; ``advance``: these rows move the
        checkpoint once they and every row before them are done; ``retrying``: these
        rows are sent whatever their fingerprints say.
        """
        part = self.part
        if part.fence is not None and part.fence.lost.is_set():
            raise LeaseLost(
                f"job {part.name}: this run lost its lease on the state store (its connection "
                "dropped, or another process took it over); it stopped and writes nothing more"
            )
        if self._stopping():
            self.finish()
            raise Stopped("stopped between batches; the checkpoint is saved")
        self.stats.read += len(batch)
        flagged = [row.pop(DELETED, 0) == 1 for row in batch]
        mapped = [self.mapper.map(row) for row in batch]
        if self.adopt is not None and self.writer is not None and any(map(_unmergeable, mapped)):
            adopt, self.adopt = self.adopt, None
            adopt()  # before this batch's identities are read: it may fill them
        keys = [key_text(m.key) for m in mapped]
        lookup = part.lookup(keys, refused=not retrying)
        known, refused = lookup.known, lookup.refused
        commits = self.commits
        slots: list[Slot] = []
        for row, m, key, deleted in zip(batch, mapped, keys, flagged, strict=True):
            slot = Slot(key, self._position(row) if advance else None, m.fingerprint)
            previous = known.get(key)
            unchanged = previous is not None and previous.fingerprint == m.fingerprint
            if self.handled.get(key, m.fingerprint) != m.fingerprint:  # read again, changed:
                commits.superseded.add((key, self.handled[key]))  # the earlier outcome yields
            if deleted:  # delete_when marks it: delete its user, if it has one
                if previous is None:
                    self.stats.deleted_before_sync += 1  # never synced: nothing to delete
                elif self.writer is not None:
                    slot.payload = self.target.deletion(key, previous.user_id)
                    slot.action = "delete"
                    self.deletes.spend()
            elif not retrying and (
                unchanged
                or self.handled.get(key) == m.fingerprint
                or refused.get(key) == m.fingerprint
            ):
                commits.unchanged += 1
            elif isinstance(m, Rejection):
                slot.payload, slot.reason = m.payload, m.reason
            else:
                known_id = None if previous is None else previous.user_id
                slot.payload = self.target.payload(m.payload, known_id)
                slot.known = "user_id" in slot.payload and "user_id" not in m.payload
                if self.job.sync == "update":
                    slot.action = "update"
            if retrying or advance is False:
                self.handled[key] = m.fingerprint
            slots.append(slot)
        if self.writer is None:  # a dry run: say what would be sent, send nothing
            self.stats.unchanged += commits.unchanged
            commits.unchanged = 0
            by_mapper = [s for s in slots if s.reason is not None]
            self.stats.rejected += len(by_mapper)
            self.stats.rejected_rows += [{"key": s.key, "reason": s.reason} for s in by_mapper]
            self.stats.would_send += [s.payload for s in slots if _to_send(s)]
            if advance and commits.progress is not None:
                commits.progress(len(slots))
            return
        if self.job.sync == "update":
            self._find_users(slots)
        part.mark(self._marks(slots))  # durably, before sending
        for slot in slots:
            slot.sent = _to_send(slot)
            commits.window.add(slot)
            if slot.sent:
                outgoing = Outgoing(slot.key, slot.payload, slot.action, slot.known)
                self.writer.start(outgoing, partial(commits.window.complete, slot))
            self._make_room()
        commits.collect()

    def finish(self) -> None:
        """Wait for every row in flight and commit (nothing to wait for in a dry run)."""
        if self.writer is not None:
            self.commits.finish()

    def _marks(self, slots: list[Slot]) -> list[Mark]:
        """A mark for each first send (no user_id yet); a payload that cannot merge also
        carries Personyze's newest change, where a later read-back begins. An idempotent
        target (products) needs none: a resend after a lost answer is harmless."""
        if self.target.idempotent:
            return []
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
        window = self.commits.window
        batch = self.job.source.batch_size
        quarter = max(1, batch // 4)
        while len(window) >= HELD_BATCHES * batch:  # behind a row waiting out retries
            self.commits.collect(wait_for=quarter)
        if window.pending >= WINDOW_BATCHES * batch:
            window.wait_for_room(WINDOW_BATCHES * batch - quarter)
            self.commits.collect()


def _unmergeable(mapped: Record | Rejection) -> bool:
    """A sendable row Personyze could not merge on a resend (no email, no user_id)."""
    return isinstance(mapped, Record) and not merges(mapped.payload)


def _to_send(slot: Slot) -> bool:
    return slot.reason is None and bool(slot.payload)
