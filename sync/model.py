"""The types every stage shares. Nothing here imports from sync: the stages import it.

A *part* is what the state store keeps one checkpoint and one lease for: a job, or
one shard of a sharded job (``customers#2/3``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Position:
    """Where a part got to: the last row read, by cursor value then key."""

    cursor: Any
    key: Any


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count``: the rows whose integer key modulo ``count`` is ``index``."""

    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, key: int) -> bool:
        """The same test as :func:`sync.extract.query.in_shard`, in Python."""
        return abs(key) % self.count == self.index


@dataclass(frozen=True)
class PendingRow:
    """A mark still standing: the row was sent and no answer was recorded."""

    key: str
    payload: dict[str, Any]
    fingerprint: str | None
    watermark: int | None
    sent_at: float  # this host's clock: for people, never for reconciliation


RunKind = Literal["once", "backfill", "scheduled", "retry", "repair"]


@dataclass(frozen=True)
class RunOptions:
    kind: RunKind = "once"
    dry_run: bool = False
    start: Position | None = None  # overrides the checkpoint (backfill --since / --full)
    full: bool = False
    only_rejected: bool = False  # ``rejected retry``: retry every rejected row now, nothing else


@dataclass
class RunStats:
    """What one run did, row by row; a sharded job's run adds up its parts'.

    ``read`` counts every row read from the source, retries included; each ends in one
    of the other counts (a row read twice in a run, changed in between, counts once).
    """

    read: int = 0
    sent: int = 0
    unchanged: int = 0  # not sent: the row is as Personyze last acknowledged it
    rejected: int = 0
    collisions: int = 0
    deleted: int = 0  # users deleted (delete_when, or vanished rows with sync: mirror)
    missing: int = 0  # sync: update found no such user: counted, never created
    vanished: int = 0  # synced rows no longer in the source (deleted only with mirror)
    unresolved: int = 0  # sent without a certain answer: the next run reconciles them
    deleted_before_sync: int = 0  # marked by delete_when, never synced: nothing to delete
    waiting: int = 0  # audience rows whose users do not exist yet: looked for next run
    rejected_rows: list[dict[str, Any]] = field(default_factory=list)  # key and reason each
    would_send: list[dict[str, Any]] = field(default_factory=list)
    would_delete: list[dict[str, Any]] = field(default_factory=list)
    too_many_deletes: str | None = None  # a dry run says why the real run would stop
    held_elsewhere: list[str] = field(default_factory=list)  # parts another process ran

    def add(self, other: RunStats) -> None:
        """Fold in the figures of another part (shard) of the same run."""
        self.read += other.read
        self.sent += other.sent
        self.unchanged += other.unchanged
        self.rejected += other.rejected
        self.collisions += other.collisions
        self.deleted += other.deleted
        self.missing += other.missing
        self.vanished += other.vanished
        self.unresolved += other.unresolved
        self.deleted_before_sync += other.deleted_before_sync
        self.waiting += other.waiting
        self.rejected_rows += other.rejected_rows
        self.would_send += other.would_send
        self.would_delete += other.would_delete
        self.held_elsewhere += other.held_elsewhere
        self.too_many_deletes = self.too_many_deletes or other.too_many_deletes


Progress = Callable[[int], None]  # told the rows of each batch read


class RunObserver(Protocol):
    """Told of a run's progress as it happens (the daemon's metrics)."""

    def rows_done(self, job: str, outcome: str, count: int) -> None: ...

    def checkpoint(self, job: str, position: Position) -> None: ...
