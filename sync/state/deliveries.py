"""The delivery history: per row, what each run sent and what Personyze answered.

Written in the batch's own commit (:meth:`sync.state.part.PartState.commit`), so it
costs no transaction of its own. A delivery keeps the names of the columns sent, each
with a short hash of its value, never the value: the hashes tell which columns changed
since the row's previous delivery, and nothing a payload holds can be read back from
the store. Unchanged rows are not deliveries: nothing is written for them.

Kept for a while (:class:`Retention`): the last N days, or the last N deliveries of
each row; pruned when a run ends.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, RowMapping, delete, func, or_, select

from sync.config import HistorySettings
from sync.state.records import Delivery, StoredDelivery
from sync.state.schema import deliveries
from sync.state.sql import in_chunks


@dataclass(frozen=True)
class Retention:
    """How much history a part keeps: ``days`` of it, or the last ``per_row`` deliveries
    of each row (exactly one of them)."""

    days: float | None = 30.0
    per_row: int | None = None


KEEP_30_DAYS = Retention()  # the default


def retention_of(settings: HistorySettings) -> Retention | None:
    """The config's history settings as a retention; None: no history is kept."""
    if not settings.enabled:
        return None
    if settings.keep_per_row is not None:
        return Retention(days=None, per_row=settings.keep_per_row)
    if settings.keep_for is not None:
        return Retention(days=settings.keep_for.total_seconds() / 86400)
    return KEEP_30_DAYS


def column_hashes(payload: Mapping[str, Any]) -> str:
    """Each column sent, with a CRC-32 of its value (``email:1a2b3c4d,first_name:...``):
    enough to tell a change, not to read the value back (the value is never stored).
    Personyze's column names hold neither ``:`` nor ``,``; ``user_id`` is the answer's
    (the identity map's), not a column sent."""
    crc = zlib.crc32
    return ",".join(
        [f"{n}:{crc(repr(v).encode()):x}" for n, v in payload.items() if n != "user_id"]
    )


def parsed(columns: str) -> dict[str, str]:
    """:func:`column_hashes`' text as column -> hash."""
    return dict(item.split(":", 1) for item in columns.split(",")) if columns else {}


def changed_between(before: str, now: str) -> list[str]:
    """The columns whose hash differs (or that only one of the two sent), by name."""
    old, new = parsed(before), parsed(now)
    return sorted(n for n in old.keys() | new.keys() if old.get(n) != new.get(n))


STORED = (
    "job", "row_key", "run_id", "at", "outcome", "operation", "fingerprint", "columns",
    "changed", "status", "user_id", "reason",
)  # fmt: skip


def write_deliveries(
    conn: Connection, part: str, run_id: int | None, found: Sequence[Delivery], now: float
) -> None:
    """Insert a batch's deliveries, each with the columns changed since the row's last.

    Through the driver, not SQLAlchemy's statement: its parameters cost more per row than
    everything else the history does (bench/history.py).
    """
    if not found:
        return
    hashed = [column_hashes(d.payload) if d.operation != "DELETE" else "" for d in found]
    last = _last_columns(conn, part, [d.key for d, h in zip(found, hashed, strict=True) if h])
    values = []
    for d, columns in zip(found, hashed, strict=True):
        changed = None
        if columns:
            before = last.get(d.key)
            if before is not None:
                changed = json.dumps(changed_between(before, columns))
            last[d.key] = columns  # the same row twice in a batch: the second after the first
        values.append(
            (part, d.key, run_id, now, d.outcome, d.operation, d.fingerprint, columns, changed,
             d.status, d.user_id, d.reason)
        )  # fmt: skip
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in STORED)
    marks = ", ".join([_mark(conn)] * len(STORED))
    conn.exec_driver_sql(f"INSERT INTO {deliveries.name} ({names}) VALUES ({marks})", values)


def _mark(conn: Connection) -> str:
    """The driver's placeholder: sqlite3's ``?``, psycopg's ``%s``."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _last_columns(conn: Connection, part: str, keys: list[str]) -> dict[str, str]:
    """The column hashes of each row's latest delivery that sent columns."""
    last: dict[str, str] = {}
    mark = _mark(conn)
    for chunk in in_chunks(dict.fromkeys(keys)):
        query = (
            f"SELECT row_key, {conn.dialect.identifier_preparer.quote('columns')} "
            f"FROM {deliveries.name} WHERE job = {mark} AND row_key IN "
            f"({', '.join([mark] * len(chunk))}) ORDER BY id"
        )
        for key, columns in conn.exec_driver_sql(query, (part, *chunk)):
            if columns:
                last[key] = columns
    return last


def of_row(conn: Connection, job: str, key: str, limit: int) -> list[StoredDelivery]:
    """One row's deliveries in the job or any shard it was ever split into, newest first."""
    t = deliveries.c
    query = (
        select(deliveries)
        .where(t.row_key == key, of_job(t.job, job))
        .order_by(t.id.desc())
        .limit(limit)
    )
    return [_stored(r._mapping) for r in conn.execute(query)]


def of_run(conn: Connection, run_id: int) -> list[StoredDelivery]:
    """One run's deliveries, in the order they were recorded."""
    query = select(deliveries).where(deliveries.c.run_id == run_id).order_by(deliveries.c.id)
    return [_stored(r._mapping) for r in conn.execute(query)]


def of_job(part: ColumnElement[str], job: str) -> ColumnElement[bool]:
    """``part`` is the job or one of its shards (``customers#2/3``), now or before a reshard."""
    return or_(part == job, part.startswith(f"{job}#", autoescape=True))


def prune(conn: Connection, part: str, keep: Retention, run_id: int, now: float) -> int:
    """Drop what ``keep`` no longer keeps; the deliveries dropped.

    By age: every delivery of the part older than the retention. Per row: only the rows
    this run delivered can have gone over their count.
    """
    t = deliveries.c
    if keep.days is not None:
        old = delete(deliveries).where(t.job == part, t.at < now - keep.days * 86400)
        return int(conn.execute(old).rowcount or 0)
    assert keep.per_row is not None
    ranked = (
        select(
            t.id,
            func.row_number().over(partition_by=t.row_key, order_by=t.id.desc()).label("n"),
        )
        .where(
            t.job == part,
            t.row_key.in_(select(t.row_key).where(t.run_id == run_id).distinct()),
        )
        .subquery()
    )
    beyond = select(ranked.c.id).where(ranked.c.n > keep.per_row)
    return int(conn.execute(delete(deliveries).where(t.id.in_(beyond))).rowcount or 0)


def _stored(row: RowMapping) -> StoredDelivery:
    return StoredDelivery(
        id=row["id"],
        part=row["job"],
        key=row["row_key"],
        run_id=row["run_id"],
        at=row["at"],
        outcome=row["outcome"],
        operation=row["operation"],
        fingerprint=row["fingerprint"],
        columns=sorted(parsed(row["columns"])),
        changed=None if row["changed"] is None else json.loads(row["changed"]),
        status=row["status"],
        user_id=row["user_id"],
        reason=row["reason"],
    )
