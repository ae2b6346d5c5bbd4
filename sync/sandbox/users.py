"""The sandbox's in-memory, indexed Users store: merge rules, selection, stamps.

Pure Python, no HTTP: the server turns path segments and JSON bodies into calls here
(parsed by :mod:`sync.sandbox.query`, the path language), and every refusal is a
:class:`RequestError` whose text becomes the plain-text 400 body (or an empty one
when it is ``bare``). It emulates the behaviour described in
``PERSONYZE_API.md``; by default the live service's: only ``email`` and ``user_id``
merge a POST or find a user, ``internal_id`` and ``fb_id`` are stored and returned
but never merged on or matched by ``where``; with ``internal_id_merges=True`` the
wiki's (email, then fb_id, then internal_id merge, and all are found by ``where``).
In both modes a read whose ``where`` holds a range condition (``> < >= <=``) is
refused with a bare 400 past 50 rows (offset + limit, a missing limit counting as
1000), and every read past offset + limit 1000.

Lookups stay fast with a few hundred thousand users: identifier columns are indexed
(value -> set of user_ids), and user_id / data_last_modified are also kept in sorted
lists, so keyset pages (``where/user_id>N/order_by/user_id/limit/50``) and change
polling (``where/data_last_modified>=T/order_by/data_last_modified/limit/50``) read
only the rows they return instead of scanning the whole store.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sync.sandbox.query import (
    MAX_WINDOW,
    RANGE_WINDOW,
    Condition,
    Query,
    RequestError,
    Row,
    Scalar,
    Where,
    index_key,
    is_range,
    normalize_body,
    range_bounds,
    same_value,
    sort_key,
)
from sync.sandbox.table import EDGE, bounded_slice, walk, window

__all__ = ["HASHED", "INDEXED", "LIVE_UNRESOLVED", "UserStore"]

INDEXED = frozenset(
    {"user_id", "internal_id", "email", "fb_id", "last_session_time", "data_last_modified"}
)
"""Columns a GET without ``where`` may be ordered by."""

HASHED = ("email", "fb_id", "internal_id")
"""Columns with a value -> user_ids index (user_id is the store's own key)."""

LIVE_UNRESOLVED = frozenset({"internal_id", "fb_id"})
"""Identifiers the live service stores but never merges on nor matches in ``where``."""


# --- the store ---------------------------------------------------------------------


class UserStore:
    """Thread-safe in-memory users; every public method holds the one lock."""

    def __init__(
        self, *, internal_id_merges: bool = False, wall: Callable[[], float] = time.time
    ) -> None:
        self.internal_id_merges = internal_id_merges
        self._unresolved = frozenset() if internal_id_merges else LIVE_UNRESOLVED
        self._wall = wall
        self._lock = threading.Lock()
        self._users: dict[int, Row] = {}
        self._index: dict[str, dict[int | float | str, set[int]]] = {c: {} for c in HASHED}
        self._ids: list[int] = []  # sorted; ids only grow, so appends keep it sorted
        self._by_modified: list[tuple[int, int]] = []  # sorted (data_last_modified, user_id)
        self._next_id = 1

    # inspection

    def users(self) -> list[Row]:
        """Copies of every user, ordered by user_id."""
        with self._lock:
            return [dict(self._users[uid]) for uid in self._ids]

    def __len__(self) -> int:
        with self._lock:
            return len(self._users)

    def find(self, column: str, value: Scalar) -> int | None:
        """The lowest user_id whose ``column`` (user_id, email or internal_id) is ``value``.

        In either mode: the members of a list resolve internal_id (see audiences.py).
        """
        with self._lock:
            key = index_key(value)
            if column == "user_id":
                return key if isinstance(key, int) and key in self._users else None
            found = self._index[column].get(key)
            return min(found) if found else None

    def reset(self) -> None:
        with self._lock:
            self._users.clear()
            for index in self._index.values():
                index.clear()
            self._ids.clear()
            self._by_modified.clear()
            self._next_id = 1

    # writes

    def upsert(self, body: object) -> int:
        """POST: merge into the user an identifier finds, else create one; the user_id."""
        row = normalize_body(body)
        with self._lock:
            uid = self._find_for_merge(row)
            row.pop("user_id", None)
            if uid is None:
                return self._create(row)
            self._write(uid, row, self._now())
            return uid

    def update(self, query: Query, body: object) -> int:
        """PUT: update the users a user id or ``where`` selects; never creates."""
        row = normalize_body(body)
        self._require_target(query, "PUT")
        with self._lock:
            uids = self._select_ids(query)
            if "user_id" in row:
                if any(index_key(row["user_id"]) != uid for uid in uids):
                    raise RequestError("user_id cannot be changed")
                del row["user_id"]
            now = self._now()
            changed = [uid for uid in uids if self._write(uid, row, now, reindex=False)]
            self._reindex_modified(changed)
            return len(uids)

    def delete(self, query: Query) -> int:
        """DELETE: remove the users a user id or ``where`` selects; the number removed."""
        self._require_target(query, "DELETE")
        with self._lock:
            uids = self._select_ids(query)
            gone = set(uids)
            stamps = [(int(self._users[u]["data_last_modified"]), u) for u in uids]
            for uid in uids:
                self._unindex(uid, self._users.pop(uid))
            if len(gone) > 64:
                self._ids = [u for u in self._ids if u not in gone]
                self._by_modified = [p for p in self._by_modified if p[1] not in gone]
            else:
                for uid in uids:
                    del self._ids[bisect.bisect_left(self._ids, uid)]
                for pair in stamps:
                    del self._by_modified[bisect.bisect_left(self._by_modified, pair)]
            return len(uids)

    # reads

    def get(self, query: Query) -> Any:
        """GET: one object for a user id, else an array of objects (or of values).

        A ``where`` with a range condition in any or-group reads at most 50 rows
        (offset + limit; no limit means 1000): past that it is a bare 400.
        """
        with self._lock:
            if query.user_id is not None:
                found = self._users.get(query.user_id)
                if found is None:
                    raise RequestError("Row not found")
                return self._shape([found], query)[0]
            if query.where is None:
                if not query.order:
                    raise RequestError(
                        "A read without where must be ordered (order_by or order_by_desc) "
                        "by an indexed column: " + ", ".join(sorted(INDEXED))
                    )
                if query.order[0][0] not in INDEXED:
                    raise RequestError(
                        f"Cannot order by {query.order[0][0]} without a where condition: "
                        "order by an indexed column: " + ", ".join(sorted(INDEXED))
                    )
            if is_range(query.where) and query.window_end > RANGE_WINDOW:
                raise RequestError(
                    f"A range read (> < >= <=) may ask for at most {RANGE_WINDOW} rows "
                    f"(offset + limit, {MAX_WINDOW} without a limit); "
                    f"this one asks for {query.window_end}",
                    bare=True,
                )
            limit = MAX_WINDOW if query.limit is None else query.limit
            rows = [self._users[u] for u in self._run(query, query.offset, limit)]
            return self._shape(rows, query)

    # internals

    def _now(self) -> int:
        return int(self._wall())

    @staticmethod
    def _require_target(query: Query, method: str) -> None:
        if query.user_id is None and query.where is None:
            raise RequestError(f"{method} needs a user id or a where condition")
        if query.columns or query.column or query.order or query.limit is not None:
            raise RequestError(f"{method} takes only a user id or a where condition")

    def _find_for_merge(self, row: Row) -> int | None:
        if "user_id" in row:
            key = index_key(row["user_id"])
            if isinstance(key, int) and key in self._users:
                return key
            raise RequestError("Row not found")
        for column in ("email", "fb_id", "internal_id"):
            if column in self._unresolved:
                continue
            if column in row:
                found = self._index[column].get(index_key(row[column]))
                if found:
                    return min(found)
        return None

    def _create(self, row: Row) -> int:
        uid = self._next_id
        self._next_id += 1
        now = self._now()
        stored: Row = {"user_id": uid, **row, "data_last_modified": now}
        self._users[uid] = stored
        self._ids.append(uid)
        bisect.insort(self._by_modified, (now, uid))
        for column in HASHED:
            if column in stored:
                self._index[column].setdefault(index_key(stored[column]), set()).add(uid)
        return uid

    def _write(self, uid: int, row: Row, now: int, *, reindex: bool = True) -> bool:
        """Apply columns to one user; True when any value changed (and the stamp moved)."""
        stored = self._users[uid]
        changes = {c: v for c, v in row.items() if not same_value(stored.get(c), v)}
        if not changes:
            return False
        for column, value in changes.items():
            if column in self._index:
                if column in stored:
                    self._drop_key(column, stored[column], uid)
                self._index[column].setdefault(index_key(value), set()).add(uid)
            stored[column] = value
        old = stored["data_last_modified"]
        stored["data_last_modified"] = now
        if reindex and old != now:
            pair = (int(old), uid)
            del self._by_modified[bisect.bisect_left(self._by_modified, pair)]
            bisect.insort(self._by_modified, (now, uid))
        return True

    def _reindex_modified(self, uids: list[int]) -> None:
        if not uids:
            return
        if len(uids) > 64:
            self._by_modified = sorted(
                (int(r["data_last_modified"]), u) for u, r in self._users.items()
            )
            return
        moved = set(uids)
        self._by_modified = [p for p in self._by_modified if p[1] not in moved]
        for uid in uids:
            bisect.insort(self._by_modified, (int(self._users[uid]["data_last_modified"]), uid))

    def _unindex(self, uid: int, row: Row) -> None:
        for column in HASHED:
            if column in row:
                self._drop_key(column, row[column], uid)

    def _drop_key(self, column: str, value: Scalar, uid: int) -> None:
        key = index_key(value)
        ids = self._index[column].get(key)
        if ids is not None:
            ids.discard(uid)
            if not ids:
                del self._index[column][key]

    def _select_ids(self, query: Query) -> list[int]:
        if query.user_id is not None:
            return [query.user_id] if query.user_id in self._users else []
        return list(self._run(query, 0, None))

    def _matches(self, row: Row, where: Where | None) -> bool:
        if where is None:
            return True
        return any(all(self._test(c, row) for c in group) for group in where)

    def _test(self, condition: Condition, row: Row) -> bool:
        if condition.column in self._unresolved:
            return False  # live: internal_id and fb_id are not lookup keys
        return condition.matches(row)

    def _run(self, query: Query, offset: int, limit: int | None) -> list[int]:
        """The selected user_ids, ordered, windowed; by index when the query allows."""
        candidates = self._indexed_candidates(query.where)
        if candidates is not None:
            ids = [u for u in sorted(candidates) if self._matches(self._users[u], query.where)]
            return window(self._ordered(ids, query.order), offset, limit)
        stream = self._ordered_stream(query)
        if stream is not None:
            picked: list[int] = []
            wanted = None if limit is None else offset + limit
            for uid in stream:
                if wanted is not None and len(picked) >= wanted:
                    break
                if self._matches(self._users[uid], query.where):
                    picked.append(uid)
            return window(picked, offset, limit)
        ids = [u for u in self._ids if self._matches(self._users[u], query.where)]
        return window(self._ordered(ids, query.order), offset, limit)

    def _indexed_candidates(self, where: Where | None) -> set[int] | None:
        """Ids that may match, from equality / in tests on indexed columns; None = scan."""
        if where is None:
            return None
        found: set[int] = set()
        for group in where:
            group_ids = self._group_candidates(group)
            if group_ids is None:
                return None
            found |= group_ids
        return found

    def _group_candidates(self, group: tuple[Condition, ...]) -> set[int] | None:
        for condition in group:
            if condition.op not in ("=", ":"):
                continue
            if condition.column in self._unresolved:
                return set()
            if condition.column == "user_id":
                keys = (index_key(v) for v in condition.values)
                return {k for k in keys if isinstance(k, int) and k in self._users}
            if condition.column in self._index:
                index = self._index[condition.column]
                ids: set[int] = set()
                for value in condition.values:
                    ids |= index.get(index_key(value), set())
                return ids
        return None

    def _ordered_stream(self, query: Query) -> Iterator[int] | None:
        """Ids in the query's order straight from a sorted list, or None if none fits."""
        order = query.order or (("user_id", False),)
        descending = order[0][1]
        if any(d != descending for _, d in order):
            return None
        columns = tuple(c for c, _ in order)
        bounds = range_bounds(query.where, columns[0])
        if columns == ("user_id",):
            lo, hi = bounded_slice(self._ids, bounds, lambda v: v)
            return walk(self._ids[lo:hi], descending)
        if columns in (("data_last_modified",), ("data_last_modified", "user_id")):
            lo, hi = bounded_slice(self._by_modified, bounds, lambda v: (v, EDGE))
            pairs = self._by_modified[lo:hi]
            return (uid for _, uid in walk(pairs, descending))
        return None

    def _ordered(self, ids: list[int], order: tuple[tuple[str, bool], ...]) -> list[int]:
        """Sort by the order columns (stable, user_id as the final tie-break)."""
        for column, descending in reversed(order):
            ids.sort(key=lambda u: sort_key(self._users[u].get(column)), reverse=descending)
        return ids

    def _shape(self, rows: list[Row], query: Query) -> Any:
        if query.column is not None:
            return [row.get(query.column) for row in rows]
        if query.columns is not None:
            return [{c: row.get(c) for c in query.columns} for row in rows]
        return [dict(row) for row in rows]
