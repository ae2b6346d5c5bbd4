"""Source row -> Personyze payload, or a rejection with a reason.

Pure: no database, no network, no clock. A :class:`Mapper` is compiled once from a
job's config; ``map(row)`` then renames the mapped columns, applies the column's
transforms, coerces values into what JSON and Personyze take, normalises emails,
and checks that at least one identifier is usable. Only mapped columns are sent.

A products job's rows are products (:func:`catalog_value`): the key is sent as
``internal_id``, numbers keep the source's decimals (a ``Decimal`` is sent exactly,
a float without binary artefacts) and ``is_in_stock`` is Personyze's ``yes``/``no``.

A template (``{template: "{first_name} {last_name}"}``) names source columns, and sees
each mapped one as its Personyze column's transforms made it (``last_name: [strip]``
applies first), coerced as it would be sent; a column nobody maps, or the template's
own column, it sees as read. So mapped columns are made in the order the config gives
(:meth:`JobSettings.columns_in_order`): each after the columns its templates read.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from sync.config.jobs import IDENTIFIERS, ConstantTransform, JobSettings, TemplateTransform

Scalar = str | int | float
Payload = dict[str, Scalar]

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})


class Unsendable(ValueError):
    """A value that cannot be sent as it is; the message says why."""


@dataclass(frozen=True)
class Record:
    """A row ready to send: its source key, its payload and the payload's fingerprint."""

    key: Any
    payload: Payload
    fingerprint: str


@dataclass(frozen=True)
class Rejection:
    """A row that must not be sent, and why; the fingerprint tells when that may change."""

    key: Any
    reason: str
    payload: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return fingerprint({"reason": self.reason, "payload": self.payload})


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A short stable digest of a payload, to tell whether a row changed since it was sent."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


# -- value conversions ---------------------------------------------------------


def format_datetime(value: datetime) -> str:
    """Personyze's date format, in UTC; a naive value is taken to be UTC already."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def coerce(value: Any) -> Scalar | None:
    """The default conversion of a database value into a JSON scalar (None: send nothing)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unsendable(f"{value} is not a finite number")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Unsendable(f"{value} is not a finite number")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise Unsendable("text that is not valid UTF-8") from None
        if "\x00" in value:
            raise Unsendable("text holding a NUL character")
        return value
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat(timespec="seconds")
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return coerce(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise Unsendable("a binary value (bytes); map a text column instead")
    if isinstance(value, dict | list | tuple):
        raise Unsendable("a nested value (JSON object or array); Personyze takes scalars only")
    raise Unsendable(f"a value of type {type(value).__name__}")


FLOAT_DIGITS = 15  # a double holds 15 significant decimal digits exactly; past them, noise
IN_STOCK = "is_in_stock"  # the products field Personyze takes as yes or no
PRODUCT_KEY = "internal_id"


def exact_number(value: Decimal) -> int | float | str:
    """A Decimal as JSON takes it without losing a digit: a whole number as an int, a
    float whose shortest form is that very number (19.99, 19.9 for 19.90), else its
    exact text (``"123456789012345678.99"``): never the ``19.990000000000002`` of a
    float that only comes close."""
    if not value.is_finite():
        raise Unsendable(f"{value} is not a finite number")
    if value == value.to_integral_value():
        return int(value)
    number = float(value)
    return number if Decimal(repr(number)) == value else str(value)


def catalog_value(target: str, value: Any) -> Scalar | None:
    """A products job's conversion: :func:`coerce`, but numbers keep the source's
    decimals (a float is rounded to the 15 digits a double holds: 0.1 + 0.2 is 0.3) and
    ``is_in_stock`` is ``yes`` or ``no`` (from true/false, 1/0 or those words)."""
    if value is None:
        return None
    if target == IN_STOCK:
        return _yes_no(value)
    if isinstance(value, Decimal):
        return exact_number(value)
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{FLOAT_DIGITS}g}")
    return coerce(value)


def _yes_no(value: Any) -> str | None:
    if isinstance(value, str):
        word = value.strip().lower()
        if not word:
            return None
        if word in TRUE_WORDS | FALSE_WORDS:
            return "yes" if word in TRUE_WORDS else "no"
    elif isinstance(value, bool) or (isinstance(value, int | float | Decimal) and value in (0, 1)):
        return "yes" if value else "no"
    raise Unsendable(f"{value!r} is not in stock or out of it: expected true/false, 1/0 or yes/no")


def _parse_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise Unsendable(f"{value!r} is not a date or time") from None
    raise Unsendable(f"{value!r} is not a date or time")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        number = float(value) if not isinstance(value, Decimal) else value
    except (TypeError, ValueError):
        raise Unsendable(f"{value!r} is not a whole number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise Unsendable(f"{value!r} is not a whole number")
    if number != int(number):
        raise Unsendable(f"{value!r} is not a whole number")
    return int(number)


def _to_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Unsendable(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise Unsendable(f"{value!r} is not a finite number")
    return number


def _to_bool(value: Any) -> int:
    if isinstance(value, bool | int | Decimal | float):
        return int(bool(value))
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return 1
    if word in FALSE_WORDS:
        return 0
    raise Unsendable(f"{value!r} is not true or false")


def _text(fn: Callable[[str], str]) -> Callable[[Any], Any]:
    def apply(value: Any) -> Any:
        return fn(value if isinstance(value, str) else str(coerce(value)))

    return apply


SIMPLE: dict[str, Callable[[Any], Any]] = {
    "strip": _text(str.strip),
    "lower": _text(str.lower),
    "upper": _text(str.upper),
    "str": lambda v: v if isinstance(v, str) else str(coerce(v)),
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "date": lambda v: _parse_datetime(v).date().isoformat(),
    "datetime": lambda v: format_datetime(_parse_datetime(v)),
    "unix": lambda v: int(_aware(_parse_datetime(v)).timestamp()),
}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# -- the mapper ----------------------------------------------------------------

# A step: (the value so far, the source row, the values made so far by source column).
Step = Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]


def _compile_step(transform: str | TemplateTransform | ConstantTransform) -> Step:
    if isinstance(transform, TemplateTransform):
        template = transform.template
        fields = _fields(template)

        def render(_: Any, row: Mapping[str, Any], made: Mapping[str, Any]) -> Any:
            values = {f: _shown(made[f] if f in made else coerce(row[f])) for f in fields}
            try:
                return template.format_map(values).strip() or None
            except (ValueError, TypeError) as exc:  # a format spec the value does not take
                raise Unsendable(f"template {template!r}: {exc}") from None

        return render
    if isinstance(transform, ConstantTransform):
        constant = transform.constant
        return lambda _value, _row, _made: constant
    fn = SIMPLE[transform]
    return lambda value, _row, _made: None if value is None else fn(value)


def _shown(value: Scalar | None) -> Scalar:
    """A value as a template writes it: nothing for a value that is not sent."""
    return "" if value is None else value


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def template_fields(job: JobSettings) -> list[str]:
    """Source columns a job's templates read (they must be selected too)."""
    return [
        field
        for steps in job.transforms.values()
        for step in steps
        if isinstance(step, TemplateTransform)
        for field in _fields(step.template)
    ]


@dataclass(frozen=True)
class _Column:
    source: str | None  # None: made by a template or constant
    target: str
    steps: tuple[Step, ...]


class Mapper:
    """One job's mapping, compiled once, applied to every row."""

    def __init__(self, job: JobSettings) -> None:
        self.key = job.source.key
        self.catalog = job.object == "products"  # its rows are products, keyed by internal_id
        sources = {dst: src for src, dst in job.mapping.items()}
        self._columns = tuple(
            _Column(sources.get(dst), dst, tuple(map(_compile_step, job.transforms.get(dst, []))))
            for dst in job.columns_in_order()
        )
        self.source_columns: tuple[str, ...] = tuple(
            dict.fromkeys([*job.mapping, *template_fields(job)])
        )

    def map(self, row: Mapping[str, Any]) -> Record | Rejection:
        key = row[self.key]
        payload: dict[str, Any] = {}
        made: dict[str, Any] = {}  # by source column: what templates see of a mapped one
        for col in self._columns:
            value = row[col.source] if col.source is not None else None
            try:
                for step in col.steps:
                    value = step(value, row, made)
                value = catalog_value(col.target, value) if self.catalog else coerce(value)
            except Unsendable as exc:
                return Rejection(
                    key,
                    f"column {col.source or col.target!r}: {exc}",
                    _printable(row, self._columns),
                )
            if col.source is not None:
                made[col.source] = value
            if value is not None and value != "":
                payload[col.target] = value
        if self.catalog:
            payload, problem = _product(payload, key, self.key)
        else:
            problem = _identify(payload)
        if problem:
            return Rejection(key, problem, payload)
        return Record(key, payload, fingerprint(payload))


def _identify(payload: dict[str, Any]) -> str | None:
    """Normalise identifiers in place; say why the row cannot be identified, if it cannot."""
    if "email" in payload:
        email = str(payload["email"]).strip().lower()
        if not EMAIL.match(email):
            return f"email {email!r} is not a valid email address"
        payload["email"] = email
    if "user_id" in payload:
        try:
            user_id = _to_int(payload["user_id"])
        except Unsendable:
            user_id = 0
        if user_id <= 0:
            return f"user_id {payload['user_id']!r} is not a positive whole number"
        payload["user_id"] = user_id
    if not any(payload.get(name) not in (None, "") for name in IDENTIFIERS):
        return "no identifier: " + ", ".join(IDENTIFIERS) + " are all empty or not mapped"
    return None


def _product(payload: dict[str, Any], key: Any, column: str) -> tuple[dict[str, Any], str | None]:
    """The product's payload, its internal_id (the key) first; why it cannot be sent."""
    try:
        internal_id = payload.pop(PRODUCT_KEY, None) or catalog_value(PRODUCT_KEY, key)
    except Unsendable as exc:
        return payload, f"key {column!r}: {exc}"
    if internal_id in (None, ""):
        return payload, f"no internal_id: the key {column!r} is empty"
    return {PRODUCT_KEY: internal_id, **payload}, None


def _printable(row: Mapping[str, Any], columns: tuple[_Column, ...]) -> dict[str, Any]:
    """The mapped source values of a rejected row, as text, for the rejected-rows record."""
    out: dict[str, Any] = {}
    for col in columns:
        if col.source is not None:
            value = row.get(col.source)
            out[col.target] = None if value is None else repr(value)[:200]
    return out
