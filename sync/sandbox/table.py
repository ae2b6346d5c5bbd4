"""One object's rows in memory, read and selected with the path language.

:class:`Table` is what the products, the user lists and their members are stored in
(the users have their own, more heavily indexed store, :mod:`sync.sandbox.users`).
It holds the rows, hashed indexes for equality and in-list reads, and the live read
rules every object shares: a read past offset + limit 1000 is refused (when the
path is parsed), and a read whose ``where`` holds a range condition (``> < >= <=``)
is refused with a bare 400 past 50 rows (no limit counts as 1000). It is not
locked: the store that owns it holds its own lock around every call.

The helpers at the end (windowing and slicing sorted lists) are shared with the
users' store.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sync.sandbox.query import (
    MAX_WINDOW,
    RANGE_WINDOW,
    Bounds,
    Condition,
    Query,
    RequestError,
    Row,
    Scalar,
    Where,
    index_key,
    is_range,
    same_value,
    sort_key,
)

__all__ = ["EDGE", "Table", "bounded_slice", "require_target", "walk", "window"]


class Table:
    """Rows by a number the table assigns (1, 2, ...), in that order; not locked.

    ``key`` is the column that number is stored in and the bare-number form
    (``/rest/products/12``) finds; None: the rows have no id of their own (the
    members of a list), so that form finds nothing. ``hashed`` columns are indexed
    (value -> row numbers) for ``=`` and ``:`` reads. ``ordered``: the columns a GET
    without ``where`` may be ordered by (it must be ordered); None: such a GET needs
    no order.
    """

    def __init__(
        self,
        name: str,
        *,
        key: str | None,
        hashed: Iterable[str] = (),
        ordered: Iterable[str] | None = None,
    ) -> None:
        self.name = name
        self.key = key
        self.ordered = None if ordered is None else frozenset(ordered)
        self._rows: dict[int, Row] = {}  # insertion order is number order: numbers only grow
        self._index: dict[str, dict[int | float | str, set[int]]] = {c: {} for c in hashed}
        self._next = 1

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, number: object) -> bool:
        return number in self._rows

    def rows(self) -> list[Row]:
        """Copies of every row, in number order."""
        return [dict(row) for row in self._rows.values()]

    def reset(self) -> None:
        self._rows.clear()
        for index in self._index.values():
            index.clear()
        self._next = 1

    # writes

    def insert(self, row: Row) -> int:
        """Store a new row; its number (also stored in ``key``, when there is one)."""
        number = self._next
        self._next += 1
        stored: Row = dict(row) if self.key is None else {self.key: number, **row}
        self._rows[number] = stored
        for column, index in self._index.items():
            if column in stored:
                index.setdefault(index_key(stored[column]), set()).add(number)
        return number

    def write(self, number: int, row: Row) -> bool:
        """Apply the columns given to one row (the others keep theirs); True if any changed."""
        stored = self._rows[number]
        changes = {c: v for c, v in row.items() if not same_value(stored.get(c), v)}
        for column, value in changes.items():
            if column in self._index:
                if column in stored:
                    self._drop_key(column, stored[column], number)
                self._index[column].setdefault(index_key(value), set()).add(number)
            stored[column] = value
        return bool(changes)

    def remove(self, numbers: Iterable[int]) -> int:
        """Delete rows; how many there were."""
        removed = 0
        for number in numbers:
            row = self._rows.pop(number, None)
            if row is None:
                continue
            removed += 1
            for column in self._index:
                if column in row:
                    self._drop_key(column, row[column], number)
        return removed

    # reads

    def lookup(self, column: str, value: Scalar) -> set[int]:
        """The numbers of the rows whose indexed ``column`` holds ``value``."""
        return set(self._index[column].get(index_key(value), ()))

    def row(self, number: int) -> Row:
        return dict(self._rows[number])

    def select(self, query: Query) -> list[int]:
        """The numbers a PUT or DELETE acts on: every row the id or ``where`` selects."""
        if query.user_id is not None:
            return [query.user_id] if self.key is not None and query.user_id in self._rows else []
        return self._run(query.where, query.order)

    def read(self, query: Query) -> Any:
        """GET: one object for the bare-number form, else an array of objects (or values)."""
        if query.user_id is not None:
            if self.key is None or query.user_id not in self._rows:
                raise RequestError("Row not found")
            return self._shape([self._rows[query.user_id]], query)[0]
        unordered = not query.order or query.order[0][0] not in (self.ordered or ())
        if query.where is None and self.ordered is not None and unordered:
            raise RequestError(
                f"A read of {self.name} without where must be ordered (order_by or "
                "order_by_desc) by an indexed column: " + ", ".join(sorted(self.ordered))
            )
        if is_range(query.where) and query.window_end > RANGE_WINDOW:
            raise RequestError(
                f"A range read (> < >= <=) may ask for at most {RANGE_WINDOW} rows "
                f"(offset + limit, {MAX_WINDOW} without a limit); "
                f"this one asks for {query.window_end}",
                bare=True,
            )
        limit = MAX_WINDOW if query.limit is None else query.limit
        numbers = window(self._run(query.where, query.order), query.offset, limit)
        return self._shape([self._rows[n] for n in numbers], query)

    # internals

    def _run(self, where: Where | None, order: tuple[tuple[str, bool], ...]) -> list[int]:
        candidates = self._candidates(where)
        numbers = list(self._rows) if candidates is None else sorted(candidates)
        if where is not None:
            numbers = [n for n in numbers if _matches(self._rows[n], where)]
        for column, descending in reversed(order):  # stable: the row number breaks ties
            numbers.sort(key=lambda n: sort_key(self._rows[n].get(column)), reverse=descending)
        return numbers

    def _candidates(self, where: Where | None) -> set[int] | None:
        """Numbers that may match, from ``=`` / ``:`` tests on indexed columns; None = scan."""
        if where is None:
            return None
        found: set[int] = set()
        for group in where:
            indexed = [s for c in group if (s := self._indexed(c)) is not None]
            if not indexed:
                return None
            found |= min(indexed, key=len)  # the narrowest: a member, not its whole list
        return found

    def _indexed(self, condition: Condition) -> set[int] | None:
        if condition.op not in ("=", ":"):
            return None
        if condition.column == self.key:
            keys = (index_key(v) for v in condition.values)
            return {k for k in keys if isinstance(k, int) and k in self._rows}
        index = self._index.get(condition.column)
        if index is None:
            return None
        return set().union(*(index.get(index_key(v), set()) for v in condition.values))

    def _drop_key(self, column: str, value: Scalar, number: int) -> None:
        key = index_key(value)
        numbers = self._index[column].get(key)
        if numbers is not None:
            numbers.discard(number)
            if not numbers:
                del self._index[column][key]

    @staticmethod
    def _shape(rows: list[Row], query: Query) -> Any:
        if query.column is not None:
            return [row.get(query.column) for row in rows]
        if query.columns is not None:
            return [{c: row.get(c) for c in query.columns} for row in rows]
        return [dict(row) for row in rows]


def _matches(row: Row, where: Where) -> bool:
    return any(all(c.matches(row) for c in group) for group in where)


def require_target(query: Query, method: str) -> None:
    """A PUT or DELETE names its rows by an id or ``where``, and takes nothing else."""
    if query.user_id is None and query.where is None:
        raise RequestError(f"{method} needs an id or a where condition")
    if query.columns or query.column or query.order or query.limit is not None:
        raise RequestError(f"{method} takes only an id or a where condition")


# --- sorted-list helpers (shared with the users' store) ------------------------------

EDGE = float("inf")


def window(ids: list[int], offset: int, limit: int | None) -> list[int]:
    return ids[offset:] if limit is None else ids[offset : offset + limit]


def walk(items: list[Any], descending: bool) -> Iterator[Any]:
    return reversed(items) if descending else iter(items)


def bounded_slice(items: list[Any], bounds: Bounds, key: Callable[[float], Any]) -> tuple[int, int]:
    """The [lo, hi) slice of a sorted list that the bounds allow."""
    lows, highs = bounds
    lo, hi = 0, len(items)
    for op, number in lows:
        if op == ">":
            lo = max(lo, bisect.bisect_right(items, key(number)))
        else:
            lo = max(lo, bisect.bisect_left(items, _low(key(number))))
    for op, number in highs:
        if op == "<":
            hi = min(hi, bisect.bisect_left(items, _low(key(number))))
        else:
            hi = min(hi, bisect.bisect_right(items, key(number)))
    return lo, max(lo, hi)


def _low(key: Any) -> Any:
    """For a (value, user_id) key, the position before every user_id with that value."""
    if isinstance(key, tuple):
        return (key[0], -EDGE)
    return key
