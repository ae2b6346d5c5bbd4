"""How a value the source maps to compares with what Personyze holds (pure).

Lenient where the API is loose and strict everywhere else:

- numbers compare as numbers when either side is one (``5`` == ``"5"`` == ``5.0``),
  floats within a tiny relative tolerance; two texts compare as text, so ``"02139"``
  and ``"2139"`` differ;
- dates and times compare as instants (``"2024-05-01"`` == ``"2024-05-01 00:00:00"``,
  a time without a zone is UTC);
- emails compare without regard to case (the sync lower-cases them);
- a column the source leaves empty is not drift: the live API drops empty values,
  so the sync cannot clear Personyze's copy ("cannot clear");
- ``user_id`` is the handle, not data: it is not compared.

``verify`` uses it to find drift; reconciliation uses it to adopt only a user that
holds what was sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FLOAT_TOLERANCE = 1e-9  # relative (and absolute, near zero): what a float's round trip may lose
MODIFIED = "data_last_modified"

_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_WHEN = re.compile(
    r"\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)?(?:Z|[+-]\d\d:?\d\d)?", re.ASCII
)


# -- comparing one row with one user (pure) ------------------------------------------


@dataclass(frozen=True)
class Drift:
    """One column: what the source maps to now (``want``) and what Personyze has."""

    column: str
    want: Any
    have: Any


@dataclass(frozen=True)
class Comparison:
    different: tuple[Drift, ...] = ()  # drift a resend repairs
    cannot_clear: tuple[Drift, ...] = ()  # empty in the source, a value in Personyze


def compare(
    want: Mapping[str, Any], have: Mapping[str, Any], columns: Iterable[str] = ()
) -> Comparison:
    """Compare a mapped payload with a user Personyze returned.

    ``columns``: every Personyze column the job maps, so that a column the mapper
    left out of the payload (empty in the source) is still looked at.
    """
    different: list[Drift] = []
    cannot_clear: list[Drift] = []
    for column in dict.fromkeys([*columns, *want]):
        if column == "user_id":
            continue
        value, held = want.get(column), have.get(column)
        if _empty(value):
            if not _empty(held):
                cannot_clear.append(Drift(column, None, held))
        elif not same_value(value, held, email=column == "email"):
            different.append(Drift(column, value, held))
    return Comparison(tuple(different), tuple(cannot_clear))


def same_value(want: Any, have: Any, *, email: bool = False) -> bool:
    """Whether Personyze's ``have`` holds the value ``want``, allowing for the API's ways."""
    if _empty(have):
        return _empty(want)
    if _is_number(want) or _is_number(have):
        a, b = as_number(want), as_number(have)
        if a is None or b is None:
            return False
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return math.isclose(a, b, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    x, y = str(want), str(have)
    if x == y:
        return True
    if email:
        return x.strip().casefold() == y.strip().casefold()
    a_when, b_when = _when(x), _when(y)
    return a_when is not None and a_when == b_when


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)  # bool is an int: sent as 1/0


def as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    return None


def _when(text: str) -> datetime | None:
    """A date or date-time text as a UTC instant (no zone: UTC), else None."""
    text = text.strip()
    if not _WHEN.fullmatch(text):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def modified_at(user: Mapping[str, Any] | None) -> float | None:
    """A user's ``data_last_modified`` (Unix seconds), if it holds a readable one."""
    if user is None:
        return None
    value = as_number(user.get(MODIFIED)) if not _empty(user.get(MODIFIED)) else None
    return None if value is None else float(value)
