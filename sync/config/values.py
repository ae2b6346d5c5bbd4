"""The values a config field may hold that are more than a pydantic type.

Durations (``1h30m``), bounded whole numbers, positive numbers, lookbacks, delete
limits and database URLs (parseable, their driver installed, a state store in
SQLite or PostgreSQL) each accept what a person writes in YAML (``"30"``, ``5m``,
``1%``) and refuse the rest in plain English. Kept apart from the models so each
rule is written once, whichever model uses it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, ValidationInfo

from sync.config.drivers import driver_problem, with_default_driver
from sync.config.urls import resolve_file_database, userinfo_problem
from sync.config.yaml import invalid as _fail
from sync.config.yaml import suggest

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def to_snake_case(name: str) -> str:
    """``firstName`` -> ``first_name``: Personyze's columns are snake_case."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name.strip())
    return spaced.lower()


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|[smhdw])")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def parse_duration(text: str | int | float) -> timedelta:
    """``"1h30m"`` / ``"30s"`` / ``300`` (seconds) -> timedelta; ValueError if not one."""
    expected = "expected a duration such as 30s, 5m, 2h, 1d or 1h30m, or a number of seconds"
    if isinstance(text, bool):
        raise ValueError(expected)
    if isinstance(text, str):
        compact = text.strip().lower().replace(" ", "")
        if _NUMBER.fullmatch(compact):
            seconds = float(compact)
        elif compact and _DURATION.sub("", compact) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(compact))
        else:
            raise ValueError(expected)
    elif isinstance(text, int | float):
        seconds = float(text)
    else:
        raise ValueError(expected)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("expected a duration that is not negative")
    return timedelta(seconds=seconds)


def whole_number(value: Any, low: int, high: int) -> int:
    """``value`` (a number or its text) if whole and within ``low``..``high``."""
    expected = f"expected a whole number from {low} to {high}"
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(expected)
    return int(value)


def positive_number(value: Any, expected: str = "expected a number greater than 0") -> float:
    """``value`` (a number or its text) as a float, if finite and above 0."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(expected)
    if not math.isfinite(value) or value <= 0:
        raise _fail(expected)
    return float(value)


def duration_field(value: Any) -> timedelta:
    """A field validator: ``parse_duration`` with its message at the field's line."""
    if isinstance(value, timedelta):
        return value
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def lookback(value: Any) -> timedelta | int | float:
    """A duration for timestamp cursors, a plain number for numeric ones."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value) if "." in value else int(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return value
        raise _fail("expected a lookback that is not negative")
    if isinstance(value, timedelta) and value >= timedelta(0):
        return value
    try:
        return parse_duration(value)
    except ValueError:
        raise _fail("expected a duration such as 5m or 1h30m, or a number") from None


def db_url(value: SecretStr, info: ValidationInfo) -> SecretStr:
    """A parseable URL whose driver is installed; with the config's folder known,
    relative SQLite paths resolved."""
    url = _parsed(value)
    if (problem := driver_problem(url)) is not None:
        raise _fail(problem)
    return _resolved(value, info)


STATE_BACKENDS = ("sqlite", "postgresql")


def state_db_url(value: SecretStr, info: ValidationInfo) -> SecretStr:
    """``db_url`` of a database the state store can live in: SQLite or PostgreSQL."""
    backend = with_default_driver(_parsed(value)).drivername.partition("+")[0]
    if backend not in STATE_BACKENDS:  # MySQL, DuckDB, a plugin's or a misspelt one
        raise _fail(
            f"the state store must be SQLite or PostgreSQL, not {backend!r}"
            f"{suggest(backend, STATE_BACKENDS)}: sqlite:///state/personyze-sync.db or "
            "postgresql+psycopg://user@host/db"
        )
    return db_url(value, info)


def _parsed(value: SecretStr) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if (problem := userinfo_problem(value.get_secret_value())) is not None:
        raise _fail(problem)
    try:
        return make_url(value.get_secret_value())
    except (ArgumentError, ValueError, TypeError):
        example = "postgresql+psycopg://user:password@host:5432/db"
        raise _fail(f"expected a SQLAlchemy database URL such as {example}") from None


def _resolved(value: SecretStr, info: ValidationInfo) -> SecretStr:
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None:  # a model built in code, not from a config file
        return value
    return SecretStr(resolve_file_database(value.get_secret_value(), Path(base_dir)))


@dataclass(frozen=True)
class DeleteLimit:
    """``max_deletes_per_run``: a count, or a share of the users the job has synced."""

    count: int | None = None
    share: float | None = None  # percent

    @classmethod
    def parse(cls, value: Any) -> DeleteLimit:
        if isinstance(value, DeleteLimit):
            return value
        expected = "expected a count such as 100 or a share such as 1%"
        if isinstance(value, str) and value.strip().endswith("%"):
            number = value.strip()[:-1].strip()
            if not _NUMBER.fullmatch(number) or not 0 <= float(number) <= 100:
                raise _fail(f"{expected} (a share is between 0% and 100%)")
            return cls(share=float(number))
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
        ):
            raise _fail(expected)
        if int(value) < 0:
            raise _fail(expected)
        return cls(count=int(value))

    def allowed(self, known: int) -> int:
        """How many deletes a run may make when the job has synced ``known`` users."""
        if self.count is not None:
            return self.count
        assert self.share is not None
        return max(1, math.floor(known * self.share / 100)) if self.share else 0

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.share:g}%"
