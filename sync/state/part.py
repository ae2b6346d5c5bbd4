"""What one part (a job, or a shard of one) reads from the state store and commits to
it: a run holds this one object, bound to its part and its lease, and so do ``status``,
``verify`` and the other commands that look at one part (``store.part(name)``).

A batch costs three transactions: :meth:`PartState.lookup` (what is known of its rows),
:meth:`PartState.mark` (first sends, before they go) and :meth:`PartState.commit` (their
outcomes, the collisions among them and the checkpoint, all or nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from sync.model import PendingRow, Position
from sync.state.deliveries import KEEP_30_DAYS, Retention, prune, write_deliveries
from sync.state.fencing import Fence, Transact
from sync.state.history import History, write_counts
from sync.state.identities import Identities, read_holders, read_known
from sync.state.marks import Marks
from sync.state.outcome import (
    find_collisions,
    read_checkpoint,
    replace_checkpoint,
    write_outcome,
)
from sync.state.records import (
    BatchOutcome,
    Collision,
    KnownRow,
    Mark,
    RunRecord,
    StoredRejection,
)
from sync.state.rejected import Rejections, read_rejected_fingerprints


@dataclass(frozen=True)
class Lookup:
    """What the state store knows of a batch's rows, by key."""

    known: dict[str, KnownRow]  # rows synced before: their user_id and fingerprint
    refused: dict[str, str | None]  # rows rejected before: the fingerprint refused


@dataclass(frozen=True)
class Tables:
    """The state store's groups of tables a part's state lives in."""

    identities: Identities
    marks: Marks
    rejections: Rejections
    history: History


class PartState:
    """One part's checkpoint, identities, marks, rejections and runs; every write fenced.

    ``parts``: every part of the part's job (a user_id held by a row of a sibling shard
    is a collision too); ``history``: how long its delivery history is kept (None: no
    history is written).
    """

    def __init__(
        self,
        name: str,
        *,
        parts: Sequence[str],
        fence: Fence | None,
        run: Transact,
        clock: Callable[[], float],
        tables: Tables,
        committed: Callable[[int], None],
        history: Retention | None = KEEP_30_DAYS,
    ) -> None:
        self.name = name
        self.parts = list(parts) or [name]
        self.fence = fence
        self._run = run
        self._clock = clock
        self._t = tables
        self._committed = committed  # told the rows acknowledged by each commit
        self.history = history
        self.run_id: int | None = None  # the run started last: its deliveries name it

    # -- the three transactions of a batch ---------------------------------------------

    def lookup(self, keys: Sequence[str], *, refused: bool = True) -> Lookup:
        """The rows of ``keys`` synced before and (``refused``) rejected before."""
        if not keys:
            return Lookup({}, {})

        def read(conn: Connection) -> Lookup:
            known = read_known(conn, self.name, keys)
            rejected = read_rejected_fingerprints(conn, self.name, keys) if refused else {}
            return Lookup(known, rejected)

        return self._run(read, "reading the identity map")

    def mark(self, marks: Sequence[Mark]) -> None:
        """Mark first sends before sending them (see :mod:`sync.load.reconcile`)."""
        self._t.marks.add_pending(self.name, marks, self.fence)

    def commit(self, outcome: BatchOutcome) -> None:
        """Acks, rejections, deletes, the checkpoint and the delivery history, all or
        nothing; the acks whose user_id another row holds are found in the same
        transaction and recorded as collisions (``outcome.collisions``)."""
        now = self._clock()

        def write(conn: Connection) -> None:
            ids = list({a.user_id for a in outcome.acks})
            holders = read_holders(conn, self.parts, ids) if ids else {}
            outcome.collisions = find_collisions(outcome.acks, holders)
            write_outcome(conn, self.name, outcome, now, self._clock)
            if self.history is not None:
                write_deliveries(conn, self.name, self.run_id, outcome.deliveries, now)
            if self.run_id is not None and outcome.counts is not None:
                write_counts(conn, self.run_id, outcome.counts)

        self._run(write, "saving a batch's progress", self.fence)
        self._committed(len(outcome.acks))

    # -- the checkpoint ----------------------------------------------------------------

    def checkpoint(self) -> Position | None:
        return self._run(lambda conn: read_checkpoint(conn, self.name), "reading a checkpoint")

    def set_checkpoint(self, position: Position | None) -> None:
        """Move the checkpoint deliberately (a diff pass is done, ``checkpoint reset``);
        None forgets it."""
        now = self._clock()
        self._run(
            lambda conn: replace_checkpoint(conn, self.name, position, now),
            "moving a checkpoint",
            self.fence,
        )

    # -- the identity map --------------------------------------------------------------

    def row_count(self) -> int:
        return self._t.identities.row_count(self.name)

    def known_keys(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        """One page of the identity map, (key, user_id) in key order after ``after``."""
        return self._t.identities.known_keys(self.name, after, limit)

    def sample_keys(self, count: int) -> list[str]:
        """Up to ``count`` keys of the identity map, picked at random (``verify --sample``)."""
        return self._t.identities.sample_keys(self.name, count)

    def holders(self, user_ids: Iterable[int]) -> dict[int, list[str]]:
        """Which row keys of the job's parts hold each of these user_ids."""
        return self._t.identities.holders(self.parts, user_ids)

    def holders_anywhere(self, user_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
        """Which (part, row key) of any job already hold each of these user_ids."""
        return self._t.identities.holders_anywhere(user_ids)

    def forget(self, keys: Sequence[str]) -> None:
        """Forget these rows' users (deleted in Personyze): a later write creates anew."""
        self._t.identities.forget_rows(self.name, keys, self.fence)

    # -- rows sent without an answer, and what reconciliation found --------------------

    def pending(self) -> list[PendingRow]:
        return self._t.marks.pending(self.name)

    def adopt(
        self, found: dict[str, tuple[int, str]], duplicates: Sequence[tuple[str, int, int]] = ()
    ) -> None:
        """Record users reconciliation found (key -> user_id, fingerprint sent) and the
        duplicates seen beside them; their marks are done."""
        self._t.marks.adopt(self.name, found, duplicates, self.fence)

    def duplicates(self) -> list[tuple[str, int, int]]:
        """Rows whose identifiers Personyze holds in two users: (key, user_id, kept)."""
        return self._t.marks.duplicates(self.name)

    def clear_pending(self, keys: Sequence[str]) -> None:
        self._t.marks.clear_pending(self.name, keys, self.fence)

    def vanished_keys(self, after: str | None, limit: int) -> list[tuple[str, int]]:
        """One page of rows a mirror run deleted as gone from the source, in key order."""
        return self._t.marks.vanished_keys(self.name, after, limit)

    # -- rejected rows and collisions --------------------------------------------------

    def rejections(self) -> list[StoredRejection]:
        """The rows Personyze (or the mapping) refused, oldest first."""
        return self._t.rejections.rejections(self.name)

    def drop_rejections(self, keys: Sequence[str]) -> None:
        self._t.rejections.drop_rejections(self.name, keys, self.fence)

    def collisions(self) -> list[Collision]:
        """Rows whose user_id another row of the job holds too, by key."""
        return self._t.rejections.collisions(self.name)

    # -- run history -------------------------------------------------------------------

    def start_run(self, kind: str) -> int:
        """A new run in the history; a run of the part still marked running is marked died."""
        self.run_id = self._t.history.start_run(self.name, kind)
        return self.run_id

    def finish_run(
        self, run_id: int, outcome: str, *, read: int, sent: int, unchanged: int, rejected: int,
        error: str | None,
    ) -> None:  # fmt: skip
        """Record how the run ended, then prune the delivery history to its retention."""
        self._t.history.finish_run(
            run_id, outcome, read=read, sent=sent, unchanged=unchanged, rejected=rejected,
            error=error,
        )  # fmt: skip
        if (keep := self.history) is not None:
            now = self._clock()
            self._run(lambda conn: prune(conn, self.name, keep, run_id, now), "pruning history")

    def runs(self, limit: int = 5) -> list[RunRecord]:
        """The part's latest runs, newest first."""
        return self._t.history.runs(self.name, limit)
