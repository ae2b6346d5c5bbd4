"""The sandbox's in-memory Users store: normalisation, merge rules, path modifiers.

Pure Python, no HTTP: the server turns path segments and JSON bodies into calls here,
and every refusal is a :class:`RequestError` whose text becomes the plain-text 400
body. It emulates the behaviour described in ``PERSONYZE_API.md``; by default the
live service's (internal_id stored but never merged on or matched by ``where``),
with ``internal_id_merges=True`` the wiki's.

Lookups stay fast with a few hundred thousand users: identifier columns are indexed
(value -> set of user_ids), and user_id / data_last_modified are also kept in sorted
lists, so keyset pages (``where/user_id>N/order_by/user_id/limit/1000``) and change
polling (``where/data_last_modified>=T/order_by/data_last_modified``) read only
the rows they return instead of scanning the whole store.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote

Scalar: TypeAlias = str | int | float | bool
Row: TypeAlias = dict[str, Scalar]
Op: TypeAlias = Literal["=", "!=", ">", "<", ">=", "<=", ":", "!:"]

MAX_WINDOW = 1000
"""Largest offset + limit a read may ask for (live behaviour); also the default page."""

INDEXED = frozenset(
    {"user_id", "internal_id", "email", "fb_id", "last_session_time", "data_last_modified"}
)
"""Columns a GET without ``where`` may be ordered by."""

HASHED = ("email", "fb_id", "internal_id")
"""Columns with a value -> user_ids index (user_id is the store's own key)."""

MODIFIERS = frozenset({"where", "columns", "column", "order_by", "order_by_desc", "limit"})

_COLUMN_RE = re.compile(r"[A-Za-z0-9_]+")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_BAD_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Clients (httpx among them) percent-encode < > ! in a path; they are operators here,
# not reserved separators, so they are read as operators in either form.
_OPERATOR_ESCAPES = re.compile(r"%3[CcEe]|%21")
_OPERATOR_CHARS = "!=<>:"


class RequestError(Exception):
    """The request is refused with 400; ``str(error)`` is the plain-text body."""


# --- names and values --------------------------------------------------------------


def normalize_column(name: str) -> str:
    """camelCase -> snake_case (``firstName`` -> ``first_name``, ``customT1`` -> ``custom_t_1``).

    Names without capitals are kept as they are, so ``address2`` stays ``address2``.
    """
    if not _COLUMN_RE.fullmatch(name):
        raise RequestError(f"Invalid column name: {name!r}")
    if name.islower() or not any(c.isupper() for c in name):
        return name
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    s = re.sub(r"([A-Za-z])(\d)", r"\1_\2", s)
    return s.lower()


def normalize_body(body: object) -> Row:
    """Validate a write body: a flat JSON object, names normalised, empty values dropped.

    Empty values (null, "") are dropped as the live service does, so they can never
    clear a stored value. ``data_last_modified`` is the server's own and is ignored.
    """
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object")
    row: Row = {}
    for key, value in body.items():
        column = normalize_column(str(key))
        if isinstance(value, dict | list):
            raise RequestError(f"Column {column}: nested values (objects, arrays) are not accepted")
        if value is None or value == "" or column == "data_last_modified":
            continue
        if not isinstance(value, str | int | float | bool):
            raise RequestError(f"Column {column}: unsupported value")
        row[column] = value
    return row


def _number(value: Scalar) -> int | float | None:
    """The numeric reading of a value, or None when it is not a number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if _INTEGER_RE.fullmatch(value):
        return int(value)
    if _NUMBER_RE.fullmatch(value):
        return float(value)
    return None


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return str(int(value))
    return str(value)


def index_key(value: Scalar) -> int | float | str:
    """The key a value is indexed and compared by: ``"12"``, ``12`` and ``12.0`` meet."""
    number = _number(value)
    return _text(value) if number is None else number


SortKey: TypeAlias = tuple[int, int | float, str]


def _sort_key(value: Scalar | None) -> SortKey:
    """Missing first, then numbers by value, then text; the text is kept for comparisons."""
    if value is None:
        return (0, 0, "")
    number = _number(value)
    if number is not None:
        return (1, number, _text(value))
    return (2, 0, _text(value))


def _same(old: Scalar | None, new: Scalar) -> bool:
    return old == new and type(old) is type(new)


def _decode(raw: str, what: str) -> str:
    """Percent-decode one value after its separators have been parsed."""
    if _BAD_PERCENT_RE.search(raw):
        raise RequestError(f"Malformed percent-encoding in {what}: {raw!r}")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise RequestError(f"Malformed percent-encoding in {what}: {raw!r}") from None


def _decode_column(raw: str) -> str:
    return normalize_column(_decode(raw, "a column name"))


# --- where conditions --------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One ``column op value(s)`` test; ``values`` holds one item except for ``:``/``!:``."""

    column: str
    op: Op
    values: tuple[str, ...]
    _keys: tuple[SortKey, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", tuple(_sort_key(v) for v in self.values))

    def matches(self, row: Row) -> bool:
        """Numeric comparison when both sides are numbers, else text; missing never matches."""
        stored = row.get(self.column)
        if stored is None:
            return False
        mine = _sort_key(stored)
        if self.op == ":":
            return any(_equal(mine, k) for k in self._keys)
        if self.op == "!:":
            return not any(_equal(mine, k) for k in self._keys)
        order = _compare(mine, self._keys[0])
        if self.op == "=":
            return order == 0
        if self.op == "!=":
            return order != 0
        if self.op == ">":
            return order > 0
        if self.op == "<":
            return order < 0
        if self.op == ">=":
            return order >= 0
        return order <= 0


def _compare(a: SortKey, b: SortKey) -> int:
    """Numeric when both sides are numbers, else by text."""
    if a[0] == 1 and b[0] == 1:
        return (a[1] > b[1]) - (a[1] < b[1])
    return (a[2] > b[2]) - (a[2] < b[2])


def _equal(a: SortKey, b: SortKey) -> bool:
    return _compare(a, b) == 0


Where: TypeAlias = tuple[tuple[Condition, ...], ...]
"""Disjunction of conjunctions: ``&`` binds tighter than ``|``, no parentheses."""


def parse_where(raw: str) -> Where:
    """Parse a raw (still percent-encoded) condition; values are decoded after parsing."""
    if not raw:
        raise RequestError("Modifier where needs a condition")
    return tuple(
        tuple(_parse_condition(part) for part in group.split("&")) for group in raw.split("|")
    )


def _parse_condition(raw: str) -> Condition:
    text = _OPERATOR_ESCAPES.sub(lambda m: unquote(m.group(0)), raw)
    at = next((i for i, c in enumerate(text) if c in _OPERATOR_CHARS), -1)
    if at < 0:
        raise RequestError(f"Malformed condition {raw!r}: no operator")
    if at == 0:
        raise RequestError(f"Malformed condition {raw!r}: no column name")
    column = _decode_column(text[:at])
    two = text[at : at + 2]
    op: Op
    if two in ("!=", "!:", ">=", "<="):
        op = two  # type: ignore[assignment]
    elif text[at] in "=<>:":
        op = text[at]  # type: ignore[assignment]
    else:
        raise RequestError(f"Malformed condition {raw!r}: unknown operator")
    value = text[at + len(op) :]
    if "=" in value or ":" in value:
        raise RequestError(
            f"Malformed condition {raw!r}: '=' and ':' in a value must be percent-encoded"
        )
    parts = value.split(",") if op in (":", "!:") else [value]
    return Condition(column, op, tuple(_decode(p, f"condition {raw!r}") for p in parts))


# --- path modifiers ----------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """The parsed ``/rest/users/...`` path: a primary key or modifiers, or both."""

    user_id: int | None = None
    where: Where | None = None
    columns: tuple[str, ...] | None = None
    column: str | None = None
    order: tuple[tuple[str, bool], ...] = ()
    """(column, descending) pairs, in the order the path gave them."""
    offset: int = 0
    limit: int | None = None


def parse_modifiers(segments: list[str]) -> Query:
    """Parse raw path segments after ``users``: ``[<id>] (/<modifier>/<value>)*``."""
    user_id: int | None = None
    rest = segments
    if rest and _DIGITS_RE.fullmatch(rest[0]):
        user_id = int(rest[0])
        rest = rest[1:]
    seen: dict[str, str] = {}
    for i in range(0, len(rest), 2):
        name = rest[i]
        if name not in MODIFIERS:
            raise RequestError(f"Unknown modifier: {_decode(name, 'a modifier')!r}")
        if name in seen:
            raise RequestError(f"Modifier {name} given twice")
        if i + 1 >= len(rest):
            raise RequestError(f"Modifier {name} needs a value")
        seen[name] = rest[i + 1]
    if "columns" in seen and "column" in seen:
        raise RequestError("Use either columns or column, not both")
    if user_id is not None:
        extra = sorted(set(seen) - {"columns", "column"})
        if extra:
            raise RequestError(f"Modifier {extra[0]} cannot follow a user id")

    order: list[tuple[str, bool]] = []
    for name in seen:
        if name in ("order_by", "order_by_desc"):
            order.extend((c, name == "order_by_desc") for c in _column_list(seen[name], name))
    offset, limit = _parse_limit(seen["limit"]) if "limit" in seen else (0, None)
    return Query(
        user_id=user_id,
        where=parse_where(seen["where"]) if "where" in seen else None,
        columns=_column_list(seen["columns"], "columns") if "columns" in seen else None,
        column=_decode_column(seen["column"]) if "column" in seen else None,
        order=tuple(order),
        offset=offset,
        limit=limit,
    )


def _column_list(raw: str, modifier: str) -> tuple[str, ...]:
    if not raw or "" in raw.split(","):
        raise RequestError(f"Modifier {modifier} needs a comma-separated list of columns")
    return tuple(_decode_column(part) for part in raw.split(","))


def _parse_limit(raw: str) -> tuple[int, int]:
    parts = raw.split(",")
    if len(parts) > 2 or not all(_DIGITS_RE.fullmatch(p) for p in parts):
        raise RequestError(f"Malformed limit {raw!r}: expected N or OFFSET,N")
    offset, limit = (0, int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    if offset + limit > MAX_WINDOW:
        raise RequestError(
            f"limit {raw}: offset + limit must not exceed {MAX_WINDOW}; "
            "page with a where condition on an indexed column instead"
        )
    return offset, limit


# --- the store ---------------------------------------------------------------------


class UserStore:
    """Thread-safe in-memory users; every public method holds the one lock."""

    def __init__(
        self, *, internal_id_merges: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self.internal_id_merges = internal_id_merges
        self._clock = clock
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
        """GET: one object for a user id, else an array of objects (or of values)."""
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
            limit = MAX_WINDOW if query.limit is None else query.limit
            rows = [self._users[u] for u in self._run(query, query.offset, limit)]
            return self._shape(rows, query)

    # internals

    def _now(self) -> int:
        return int(self._clock())

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
        columns = ["email", "fb_id"] + (["internal_id"] if self.internal_id_merges else [])
        for column in columns:
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
        changes = {c: v for c, v in row.items() if not _same(stored.get(c), v)}
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
        if condition.column == "internal_id" and not self.internal_id_merges:
            return False  # live: internal_id is not a lookup key
        return condition.matches(row)

    def _run(self, query: Query, offset: int, limit: int | None) -> list[int]:
        """The selected user_ids, ordered, windowed; by index when the query allows."""
        candidates = self._indexed_candidates(query.where)
        if candidates is not None:
            ids = [u for u in sorted(candidates) if self._matches(self._users[u], query.where)]
            return _window(self._ordered(ids, query.order), offset, limit)
        stream = self._ordered_stream(query)
        if stream is not None:
            picked: list[int] = []
            wanted = None if limit is None else offset + limit
            for uid in stream:
                if wanted is not None and len(picked) >= wanted:
                    break
                if self._matches(self._users[uid], query.where):
                    picked.append(uid)
            return _window(picked, offset, limit)
        ids = [u for u in self._ids if self._matches(self._users[u], query.where)]
        return _window(self._ordered(ids, query.order), offset, limit)

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
            if condition.column == "internal_id" and not self.internal_id_merges:
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
        bounds = _bounds(query.where, columns[0])
        if columns == ("user_id",):
            lo, hi = _slice(self._ids, bounds, lambda v: v)
            return _walk(self._ids[lo:hi], descending)
        if columns in (("data_last_modified",), ("data_last_modified", "user_id")):
            lo, hi = _slice(self._by_modified, bounds, lambda v: (v, _EDGE))
            pairs = self._by_modified[lo:hi]
            return (uid for _, uid in _walk(pairs, descending))
        return None

    def _ordered(self, ids: list[int], order: tuple[tuple[str, bool], ...]) -> list[int]:
        """Sort by the order columns (stable, user_id as the final tie-break)."""
        for column, descending in reversed(order):
            ids.sort(key=lambda u: _sort_key(self._users[u].get(column)), reverse=descending)
        return ids

    def _shape(self, rows: list[Row], query: Query) -> Any:
        if query.column is not None:
            return [row.get(query.column) for row in rows]
        if query.columns is not None:
            return [{c: row.get(c) for c in query.columns} for row in rows]
        return [dict(row) for row in rows]


_EDGE = float("inf")


def _window(ids: list[int], offset: int, limit: int | None) -> list[int]:
    return ids[offset:] if limit is None else ids[offset : offset + limit]


def _walk(items: list[Any], descending: bool) -> Iterator[Any]:
    return reversed(items) if descending else iter(items)


Bounds: TypeAlias = tuple[list[tuple[str, float]], list[tuple[str, float]]]


def _bounds(where: Where | None, column: str) -> Bounds:
    """Numeric range tests on ``column`` in a single-group where (used to skip ahead)."""
    lows: list[tuple[str, float]] = []
    highs: list[tuple[str, float]] = []
    if where is None:
        return lows, highs
    if len(where) > 1:  # or-groups: the loosest of the groups' bounds, if each has one
        each = [_bounds((group,), column) for group in where]
        if all(group_lows for group_lows, _ in each):
            lows.append((">=", min(min(v for _, v in group_lows) for group_lows, _ in each)))
        if all(group_highs for _, group_highs in each):
            highs.append(("<=", max(max(v for _, v in group_highs) for _, group_highs in each)))
        return lows, highs
    for condition in where[0]:
        if condition.column != column or condition.op not in (">", ">=", "<", "<=", "="):
            continue
        number = _number(condition.values[0])
        if number is None:
            continue
        if condition.op in (">", ">=", "="):
            lows.append((">=" if condition.op == "=" else condition.op, number))
        if condition.op in ("<", "<=", "="):
            highs.append(("<=" if condition.op == "=" else condition.op, number))
    return lows, highs


def _slice(items: list[Any], bounds: Bounds, key: Callable[[float], Any]) -> tuple[int, int]:
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
        return (key[0], -_EDGE)
    return key
