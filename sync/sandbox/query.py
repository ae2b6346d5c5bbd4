"""The sandbox's path language: column names, write bodies, ``where`` and modifiers.

Pure parsing, no state: :mod:`sync.sandbox.store` runs what is parsed here. Every
refusal is a :class:`RequestError`; its text becomes the plain-text 400 body, unless
it is ``bare`` (the live service's empty 400 for a range read past 50 rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, TypeAlias
from urllib.parse import unquote

Scalar: TypeAlias = str | int | float | bool
Row: TypeAlias = dict[str, Scalar]
Op: TypeAlias = Literal["=", "!=", ">", "<", ">=", "<=", ":", "!:"]

MAX_WINDOW = 1000
"""Largest offset + limit a read may ask for (live behaviour); also the default page."""

RANGE_WINDOW = 50
"""Largest offset + limit of a read whose ``where`` holds a range condition (live)."""

RANGE_OPS: frozenset[Op] = frozenset({">", "<", ">=", "<="})
"""The operators that make a read a "slow" range read to the live service."""

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
    """The request is refused with 400; ``str(error)`` is the plain-text body.

    A ``bare`` refusal is answered with an empty body (as the live service answers a
    range read past 50 rows); its text is kept only for logs and tests.
    """

    def __init__(self, message: str, *, bare: bool = False) -> None:
        super().__init__(message)
        self.bare = bare


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


def as_number(value: Scalar) -> int | float | None:
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
    number = as_number(value)
    return _text(value) if number is None else number


SortKey: TypeAlias = tuple[int, int | float, str]


def sort_key(value: Scalar | None) -> SortKey:
    """Missing first, then numbers by value, then text; the text is kept for comparisons."""
    if value is None:
        return (0, 0, "")
    number = as_number(value)
    if number is not None:
        return (1, number, _text(value))
    return (2, 0, _text(value))


def same_value(old: Scalar | None, new: Scalar) -> bool:
    """True when writing ``new`` over ``old`` changes nothing (same value, same type)."""
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
        object.__setattr__(self, "_keys", tuple(sort_key(v) for v in self.values))

    def matches(self, row: Row) -> bool:
        """Numeric comparison when both sides are numbers, else text; missing never matches."""
        stored = row.get(self.column)
        if stored is None:
            return False
        mine = sort_key(stored)
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


def is_range(where: Where | None) -> bool:
    """True when any condition, in any or-group, is a range test (``> < >= <=``)."""
    return where is not None and any(c.op in RANGE_OPS for group in where for c in group)


Bounds: TypeAlias = tuple[list[tuple[str, float]], list[tuple[str, float]]]


def range_bounds(where: Where | None, column: str) -> Bounds:
    """Numeric (op, bound) low and high tests on ``column`` (for skipping ahead in an index)."""
    lows: list[tuple[str, float]] = []
    highs: list[tuple[str, float]] = []
    if where is None:
        return lows, highs
    if len(where) > 1:  # or-groups: the loosest of the groups' bounds, if each has one
        each = [range_bounds((group,), column) for group in where]
        if all(group_lows for group_lows, _ in each):
            lows.append((">=", min(min(v for _, v in group_lows) for group_lows, _ in each)))
        if all(group_highs for _, group_highs in each):
            highs.append(("<=", max(max(v for _, v in group_highs) for _, group_highs in each)))
        return lows, highs
    for condition in where[0]:
        if condition.column != column or condition.op not in (">", ">=", "<", "<=", "="):
            continue
        number = as_number(condition.values[0])
        if number is None:
            continue
        if condition.op in (">", ">=", "="):
            lows.append((">=" if condition.op == "=" else condition.op, number))
        if condition.op in ("<", "<=", "="):
            highs.append(("<=" if condition.op == "=" else condition.op, number))
    return lows, highs


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

    @property
    def window_end(self) -> int:
        """offset + limit; a read without a limit asks for the default window (1000)."""
        return self.offset + (MAX_WINDOW if self.limit is None else self.limit)


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
