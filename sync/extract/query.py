"""Keyset queries over a source, built from SQLAlchemy constructs only.

Pure: nothing here touches a database. Identifiers come from the config and are
quoted by SQLAlchemy; every value is a bound parameter, so no string a user's data
could reach is ever spliced into SQL.

The position of a row is ``(cursor, key)``. Reading "after" a position means
``cursor > c OR (cursor = c AND key > k)``, written as
``cursor >= c AND (cursor > c OR key > k)`` so that an index on ``(cursor, key)``
serves it on every dialect. Ties on the cursor therefore never lose or repeat rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, TextClause, and_, case, func, or_, select

from sync.model import Position, Shard
from sync.shard_hash import key_hash

DELETED = "_psync_deleted"  # the extra column a job with ``delete_when`` reads: 1 or 0


@dataclass(frozen=True)
class SourceShape:
    """The selectable to read, the names of its cursor and key columns, and, for a job
    with ``delete_when``, the condition that marks a row deleted."""

    selectable: FromClause
    cursor: str
    key: str
    deleted: ColumnElement[bool] | TextClause | None = None
    shard: Shard | None = None
    hashed_key: bool = False  # the key is not a number (text, a UUID): shard by its hash

    def columns(self, names: Sequence[str]) -> list[ColumnElement[Any]]:
        """The named columns, and the deleted flag when there is a condition."""
        cols: list[ColumnElement[Any]] = [self.selectable.c[name] for name in names]
        if self.deleted is not None:
            cols.append(case((self.deleted, 1), else_=0).label(DELETED))
        return cols

    def cursor_col(self) -> ColumnElement[Any]:
        return self.selectable.c[self.cursor]

    def key_col(self) -> ColumnElement[Any]:
        return self.selectable.c[self.key]


def after(shape: SourceShape, position: Position) -> ColumnElement[bool]:
    """Rows strictly after ``position`` in (cursor, key) order."""
    cursor, key = shape.cursor_col(), shape.key_col()
    return and_(cursor >= position.cursor, or_(cursor > position.cursor, key > position.key))


def not_after(shape: SourceShape, position: Position) -> ColumnElement[bool]:
    """Rows at or before ``position`` in (cursor, key) order."""
    cursor, key = shape.cursor_col(), shape.key_col()
    return and_(cursor <= position.cursor, or_(cursor < position.cursor, key <= position.key))


def select_batch(
    shape: SourceShape,
    columns: Sequence[str],
    *,
    start: Position | None,
    upper: Any,
    lower_cursor: Any = None,
    limit: int,
) -> Select[Any]:
    """The next batch in keyset order.

    ``start``: read strictly after it (None: from the beginning).
    ``upper``: the largest cursor value this pass reads (None: no bound).
    ``lower_cursor``: the smallest cursor value read (the lookback window's edge).
    """
    return (
        select(*shape.columns(columns))
        .where(*_in_range(shape, start, upper, lower_cursor))
        .order_by(shape.cursor_col(), shape.key_col())
        .limit(limit)
    )


def in_shard(shape: SourceShape, shard: Shard) -> ColumnElement[bool]:
    """The key's shard, computed by the database so that each replica reads its part only:
    ``abs(key) % count``, or of the key's hash (:mod:`sync.shard_hash`, as Python has it)."""
    key = shape.key_col()
    value = key_hash(key) if shape.hashed_key else func.abs(key)
    return value % shard.count == shard.index


def _in_range(
    shape: SourceShape, start: Position | None, upper: Any, lower_cursor: Any
) -> list[ColumnElement[bool]]:
    """A non-NULL cursor in the shard, after ``start``, between ``lower_cursor`` and ``upper``."""
    cursor = shape.cursor_col()
    conditions: list[ColumnElement[bool]] = [cursor.is_not(None)]
    if shape.shard is not None:
        conditions.append(in_shard(shape, shape.shard))
    if start is not None:
        conditions.append(after(shape, start))
    if lower_cursor is not None:
        conditions.append(cursor >= lower_cursor)
    if upper is not None:
        conditions.append(cursor <= upper)
    return conditions


def select_window(
    shape: SourceShape,
    columns: Sequence[str],
    *,
    start: Position | None,
    lower_cursor: Any,
    end: Position,
    limit: int,
) -> Select[Any]:
    """A batch of the lookback window: cursor >= lower_cursor, up to and including ``end``."""
    query = select_batch(
        shape, columns, start=start, upper=None, lower_cursor=lower_cursor, limit=limit
    )
    return query.where(not_after(shape, end))


def select_keys(shape: SourceShape, columns: Sequence[str], keys: Sequence[Any]) -> Select[Any]:
    """Rows by key, for re-reading rows that were rejected earlier."""
    return select(*shape.columns(columns)).where(shape.key_col().in_(list(keys)))


def select_present_keys(shape: SourceShape, keys: Sequence[Any]) -> Select[Any]:
    """Which of these keys the source still holds (rows that vanished are not)."""
    return select(shape.key_col()).where(shape.key_col().in_(list(keys)))


def select_deleted(
    shape: SourceShape, *, start: Position | None, upper: Any, limit: int
) -> Select[Any]:
    """A batch of the rows ``delete_when`` marks, in keyset order, cursor and key only."""
    assert shape.deleted is not None
    return (
        select(shape.cursor_col(), shape.key_col())
        .where(*_in_range(shape, start, upper, None), shape.deleted)
        .order_by(shape.cursor_col(), shape.key_col())
        .limit(limit)
    )


def select_max_cursor(shape: SourceShape) -> Select[Any]:
    query = select(func.max(shape.cursor_col()))
    return query if shape.shard is None else query.where(in_shard(shape, shape.shard))


def select_count(
    shape: SourceShape, *, start: Position | None, upper: Any, lower_cursor: Any = None
) -> Select[Any]:
    """How many rows a pass from ``start`` up to ``upper`` will read (for progress)."""
    conditions = _in_range(shape, start, upper, lower_cursor)
    return select(func.count()).select_from(shape.selectable).where(*conditions)


def select_null_cursors(shape: SourceShape) -> Select[Any]:
    """Rows a cursor can never reach: their cursor is NULL."""
    return select(func.count()).select_from(shape.selectable).where(shape.cursor_col().is_(None))


def select_repeated_keys(selectable: FromClause, key: str, limit: int) -> Select[Any]:
    """Up to ``limit`` keys that more than one row holds, with how many, most first."""
    col, rows = selectable.c[key], func.count()
    return (
        select(col, rows)
        .where(col.is_not(None))
        .group_by(col)
        .having(rows > 1)
        .order_by(rows.desc(), col)
        .limit(limit)
    )


def select_nulls(selectable: FromClause, name: str) -> Select[Any]:
    """How many rows hold NULL in column ``name``."""
    return select(func.count()).select_from(selectable).where(selectable.c[name].is_(None))
