"""SQLite's declared column types are advisory: a value is read as it was stored.

A SQLite column may hold any value whatever its declared type, and ``CREATE TABLE ...
AS SELECT`` (how dbt-sqlite and many scripts build tables) declares a timestamp column
``NUM``. SQLAlchemy converts each value by the declared type, so a text timestamp in a
``NUM`` column failed the whole read with "must be real number, not str". Here the
declared type converts the values it can; any other is kept as SQLite returns it, for
the mapper to judge like a value of an untyped query column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

Processor = Callable[[Any], Any]


class AsStored(TypeDecorator[Any]):
    """``declared`` where a value fits it; the value as stored where it does not."""

    impl = TypeEngine
    cache_ok = True

    def __init__(self, declared: TypeEngine[Any]) -> None:
        super().__init__()
        self.declared = declared

    @property
    def python_type(self) -> type[Any]:
        return self.declared.python_type

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return self.declared.dialect_impl(dialect)

    def bind_processor(self, dialect: Dialect) -> Processor | None:
        return _or_as_is(self.declared.dialect_impl(dialect).bind_processor(dialect))

    def result_processor(self, dialect: Dialect, coltype: object) -> Processor | None:
        return _or_as_is(self.declared.dialect_impl(dialect).result_processor(dialect, coltype))


def declared(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """The column's declared type, through ``AsStored``."""
    return type_.declared if isinstance(type_, AsStored) else type_


def _or_as_is(convert: Processor | None) -> Processor | None:
    if convert is None:
        return None

    def process(value: Any) -> Any:
        try:
            return convert(value)
        except (TypeError, ValueError):  # stored as another type than declared
            return value

    return process
