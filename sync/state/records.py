"""What goes into the state store and comes out of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sync.model import Position


@dataclass(frozen=True)
class KnownRow:
    user_id: int
    fingerprint: str


@dataclass(frozen=True)
class Ack:
    """Personyze accepted this row's payload and answered with its user_id."""

    key: str
    user_id: int
    fingerprint: str


@dataclass(frozen=True)
class RejectedRow:
    key: str
    payload: dict[str, Any]
    reason: str
    status: int | None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Collision:
    key: str
    user_id: int
    other_key: str
    seen_at: float | None = field(default=None, compare=False)  # when a commit found it


@dataclass(frozen=True)
class Mark:
    """A first send of a row, marked before it goes: what it carries, and the newest
    ``data_last_modified`` Personyze held before (None: it can merge by email)."""

    key: str
    payload: dict[str, Any]
    fingerprint: str
    watermark: int | None = None


@dataclass(frozen=True)
class Delivery:
    """What became of one row this batch: its request and Personyze's answer, or the
    mapper's refusal, for the delivery history (``sync.state.deliveries``)."""

    key: str
    outcome: str  # sent, deleted, rejected, missing, gone, unresolved or failed
    operation: str | None  # POST, PUT or DELETE; None: refused by the mapper, never sent
    payload: Mapping[str, Any]  # what was sent: only a hash of each column is kept
    fingerprint: str | None
    status: int | None = None  # Personyze's HTTP status, when it refused the row
    user_id: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class StoredDelivery:
    """One delivery as the history keeps it: the columns sent by name, never a value."""

    id: int
    part: str
    key: str
    run_id: int | None
    at: float
    outcome: str
    operation: str | None
    fingerprint: str | None
    columns: list[str]  # the Personyze columns sent
    changed: list[str] | None  # those that changed since the row's previous delivery
    # (None: no earlier delivery is kept)
    status: int | None
    user_id: int | None
    reason: str | None


@dataclass(frozen=True)
class RunCounts:
    """A run's rows so far, kept in its history row as it goes (``status`` reads them)."""

    read: int
    sent: int
    unchanged: int
    rejected: int


@dataclass
class BatchOutcome:
    """Everything one batch changed, written in one transaction."""

    acks: list[Ack] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # keys whose users Personyze deleted
    unsent: list[str] = field(default_factory=list)  # marked, but never sent: unmark them
    vanished: list[tuple[str, int]] = field(default_factory=list)  # (key, user_id) of rows
    # gone from the source whose users a mirror run deleted: sent again if they come back
    checkpoint: Position | None = None
    deliveries: list[Delivery] = field(default_factory=list)  # for the delivery history
    counts: RunCounts | None = None  # the run's rows up to this batch, for its history row


@dataclass(frozen=True)
class RunRecord:
    id: int
    job: str
    kind: str
    started_at: float
    ended_at: float | None
    outcome: str
    rows_read: int
    rows_sent: int
    rows_skipped: int  # the rows skipped as unchanged (the column's name)
    rows_rejected: int
    error: str | None
    holder: str | None = None  # the process that ran it (None before schema version 2)


@dataclass(frozen=True)
class LeaseInfo:
    """A lease held right now: ``holder`` runs ``name`` (a job or a shard) since ``since``."""

    name: str
    holder: str
    since: float


@dataclass(frozen=True)
class StoredRejection:
    key: str
    payload: dict[str, Any]
    reason: str
    status: int | None
    fingerprint: str | None
    attempts: int
    first_at: float
    last_at: float
