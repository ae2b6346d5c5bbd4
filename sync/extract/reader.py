"""The one module that reads the source database.

It resolves the configured ``table`` or ``query`` into a selectable (``SourceTable``,
whose checks ``validate --connect`` runs one by one), checks that the cursor, key and
mapped columns exist (naming near misses), and runs the keyset queries from
:mod:`sync.extract.query`. SQLAlchemy errors are translated into
:class:`SourceError` here (by :func:`sync.databases.source_error`), naming the database
without its user or password.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    FromClause,
    Integer,
    MetaData,
    Numeric,
    Table,
    TextClause,
    column,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import NoSuchTableError, SAWarning, SQLAlchemyError
from sqlalchemy.types import NullType

from sync.config.jobs import SourceSettings
from sync.config.yaml import suggest
from sync.databases import Reconnecting, shown, source_error
from sync.errors import MissingPrivilege, SourceError
from sync.extract import query as q
from sync.extract.query import SourceShape
from sync.extract.stored import AsStored, declared
from sync.model import Position, Shard

Row = dict[str, Any]
UP_TO_NOW: Any = object()  # batches_after's default bound: the largest cursor once needed


class SourceTable:
    """A job's table or query as its database describes it: the columns it has.

    Each check of a source is a method here: the reader raises the first problem it
    meets, ``validate --connect`` (:mod:`sync.checks`) reports every one.
    """

    def __init__(self, engine: Engine, source: SourceSettings) -> None:
        self._engine = engine
        self._source = source
        self._url = source.url.get_secret_value()
        self.where = shown(self._url)
        self.what = "the query" if source.table is None else f"table {source.table!r}"
        try:
            if source.table is not None:
                self.selectable: FromClause = self._reflect(source.table)
            else:
                assert source.query is not None
                self.selectable = self._describe(source.query)
        except SQLAlchemyError as exc:
            raise self.error(exc, "reading the source's shape") from exc

    def missing(self, name: str) -> SourceError | None:
        """Why column ``name`` cannot be read (it does not exist, near misses named), or None."""
        if name in self.selectable.c:
            return None
        available = list(self.selectable.c.keys())
        return SourceError(
            f"column {name!r} does not exist in {self.what} at {self.where}"
            f"{suggest(name, available)}; its columns are: {', '.join(available)}"
        )

    def read_nothing(self, columns: Sequence[str]) -> None:
        """Select ``columns`` for zero rows: raises unless this user may read them."""
        cols: list[Any] = [self.selectable.c[name] for name in columns] or [func.count()]
        self._scalar(select(*cols).select_from(self.selectable).limit(0))

    def condition(self, sql: str) -> TextClause:
        """``sql`` (a job's ``delete_when``) as a condition, once the database accepts it."""
        condition = text(f"({sql})")
        try:
            with self._engine.connect() as conn:
                conn.execute(
                    select(func.count())
                    .select_from(self.selectable)
                    .where(condition, text("1 = 0"))
                )
        except SQLAlchemyError as exc:
            error = self.error(exc, "checking delete_when")
            if isinstance(error, MissingPrivilege):
                raise error from None
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise SourceError(
                f"delete_when {sql!r} is not a condition {self.what} at "
                f"{self.where} understands: {detail}"
            ) from None
        return condition

    def repeated_keys(self, limit: int) -> list[tuple[Any, int]]:
        """Up to ``limit`` keys held by more than one row, the most repeated first."""
        statement = q.select_repeated_keys(self.selectable, self._source.key, limit)
        try:
            with self._engine.connect() as conn:
                return [(key, int(n)) for key, n in conn.execute(statement)]
        except SQLAlchemyError as exc:
            raise self.error(exc, "looking for repeated keys") from exc

    def nulls(self, name: str) -> int:
        """How many rows hold NULL in column ``name``."""
        return int(self._scalar(q.select_nulls(self.selectable, name)) or 0)

    def error(self, exc: SQLAlchemyError, doing: str) -> SourceError:
        return source_error(exc, self._url, doing, table=self._source.table)

    def _scalar(self, statement: Any) -> Any:
        try:
            with self._engine.connect() as conn:
                return conn.execute(statement).scalar()
        except SQLAlchemyError as exc:
            raise self.error(exc, "querying the source") from exc

    def _reflect(self, name: str) -> Table:
        try:
            return reflect(self._engine, name)
        except NoSuchTableError:
            schema, _, table = name.rpartition(".")
            names = inspect(self._engine).get_table_names(schema=schema or None)
            raise SourceError(
                f"table {name!r} does not exist at {self.where}{suggest(table, names)}"
            ) from None

    def _describe(self, sql: str) -> Any:
        """A user query as a subquery; its columns are found by running it for zero rows."""
        body = sql.strip().rstrip(";")
        with self._engine.connect() as conn:
            names = list(conn.execute(text(f"SELECT * FROM ({body}) AS src WHERE 1 = 0")).keys())
        return text(body).columns(*(column(n) for n in names)).subquery("src")


def reflect(engine: Engine, name: str) -> Table:
    """Table ``name`` (``schema.name`` or ``name``) with its columns and their types.

    Only those: its keys and indexes are not read (DuckDB's dialect cannot). A type the
    dialect does not know (a DuckDB LIST or STRUCT) is left untyped, unwarned: the mapper
    judges its values; on SQLite a value stored as another type is read as stored.
    Raises NoSuchTableError.
    """
    schema, _, table = name.rpartition(".")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Did not recognize type", SAWarning)
        found = inspect(engine).get_columns(table, schema=schema or None)
    as_stored = engine.dialect.name == "sqlite"  # its declared types are advisory
    columns = (Column(c["name"], AsStored(c["type"]) if as_stored else c["type"]) for c in found)
    return Table(table, MetaData(), *columns, schema=schema or None)


def reach(engine: Engine, source: SourceSettings) -> None:
    """Connect once to the source: its server answers and lets the user in."""
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        url = source.url.get_secret_value()
        raise source_error(exc, url, "connecting", table=source.table) from exc


class SourceReader:
    """Reads changed rows of one job's source in (cursor, key) order."""

    def __init__(
        self,
        engine: Engine,
        source: SourceSettings,
        columns: Sequence[str],
        sleep: Callable[[float], None] = time.sleep,
        *,
        delete_when: str | None = None,
        shard: Shard | None = None,
    ) -> None:
        self._engine = engine
        self._source = source
        self._shard = shard
        self._url = source.url.get_secret_value()
        self._where = shown(self._url)
        self._reconnecting = Reconnecting(f"source {self._where}", sleep)
        self._order = source.order_column
        wanted = [source.key, self._order, *columns]
        self.columns: tuple[str, ...] = tuple(dict.fromkeys(wanted))
        self.shape = self._resolve(delete_when)
        self._reconnecting.answered()
        if shard is not None and not self.key_is_numeric:  # text, a UUID: by its hash
            self.shape = dataclasses.replace(self.shape, hashed_key=True)

    def _resolve(self, delete_when: str | None) -> SourceShape:
        """The source's shape; the first thing that does not match the config raises."""
        table = SourceTable(self._engine, self._source)
        for name in self.columns:
            problem = table.missing(name)
            if problem is not None:
                raise problem
        return SourceShape(
            selectable=table.selectable,
            cursor=self._order,
            key=self._source.key,
            shard=self._shard,
            deleted=None if delete_when is None else table.condition(delete_when),
        )

    # -- reads ---------------------------------------------------------------

    def max_cursor(self) -> Any:
        return self._scalar(q.select_max_cursor(self.shape))

    def count(self, start: Position | None, upper: Any) -> int:
        start, lower = _split(start)
        statement = q.select_count(self.shape, start=start, upper=upper, lower_cursor=lower)
        return int(self._scalar(statement) or 0)

    def null_cursor_count(self) -> int:
        return int(self._scalar(q.select_null_cursors(self.shape)) or 0)

    def batches_after(self, start: Position | None, upper: Any = UP_TO_NOW) -> Iterator[list[Row]]:
        """Every row after ``start`` with cursor <= ``upper``, a batch at a time.

        A start without a key (``--since``, ``checkpoint reset --to``) means every
        row whose cursor is at least that value. ``UP_TO_NOW`` bounds the pass by the
        largest cursor present once a second batch is needed (so rows changing while
        it runs cannot keep it going forever); a run with nothing new costs one query.
        """
        start, lower = _split(start)
        limit: Any = None if upper is UP_TO_NOW else upper
        pages = 0

        def batch_after(position: Position | None) -> Any:
            nonlocal limit, pages
            if pages == 1 and upper is UP_TO_NOW:
                limit = self.max_cursor()  # a second batch is needed: bound the pass
            pages += 1
            return q.select_batch(
                self.shape,
                self.columns,
                start=position,
                upper=limit,
                lower_cursor=lower,
                limit=self._source.batch_size,
            )

        return self._pages(batch_after, start)

    def batches_in_window(self, lower_cursor: Any, end: Position) -> Iterator[list[Row]]:
        """Rows already passed whose cursor is within the lookback window."""
        return self._pages(
            lambda position: q.select_window(
                self.shape,
                self.columns,
                start=position,
                lower_cursor=lower_cursor,
                end=end,
                limit=self._source.batch_size,
            ),
            None,
        )

    def _pages(
        self, statement: Callable[[Position | None], Any], start: Position | None
    ) -> Iterator[list[Row]]:
        """Keyset paging: each batch starts after the last row of the one before."""
        while True:
            batch = self._rows(statement(start))
            if not batch:
                return
            yield batch
            if len(batch) < self._source.batch_size:
                return
            start = self.position(batch[-1])

    def deleted_after(self, start: Position | None, upper: Any) -> Iterator[list[Row]]:
        """Cursor and key of every row ``delete_when`` marks from ``start`` up to ``upper``."""
        start, _lower = _split(start)
        return self._pages(
            lambda position: q.select_deleted(
                self.shape, start=position, upper=upper, limit=self._source.batch_size
            ),
            start,
        )

    def present_keys(self, keys: Sequence[Any]) -> set[Any]:
        """Which of these keys the source still holds."""
        if not keys:
            return set()
        return {r[self._source.key] for r in self._rows(q.select_present_keys(self.shape, keys))}

    def rows_by_key(self, keys: Sequence[Any]) -> list[Row]:
        if not keys:
            return []
        return self._rows(q.select_keys(self.shape, self.columns, keys))

    @functools.cached_property
    def key_is_numeric(self) -> bool:
        """Whether keys compare as numbers (rejected rows are kept by key text)."""
        col = self.shape.key_col()
        if not isinstance(col.type, NullType):
            return isinstance(declared(col.type), Integer | Numeric)
        sample = self._scalar(select(col).where(col.is_not(None)).limit(1))
        return isinstance(sample, int | Decimal) and not isinstance(sample, bool)

    def typed_key(self, text: str) -> Any:
        """A key kept as text in the state store, back as the value the source compares."""
        return int(text) if text.lstrip("-").isdigit() and self.key_is_numeric else text

    def position(self, row: Row) -> Position:
        key = row[self._source.key]
        if key is None:
            raise SourceError(
                f"key column {self._source.key!r} is NULL in a row of {self._where}: "
                "the key must be unique and never NULL"
            )
        return Position(cursor=row[self._order], key=key)

    # -- plumbing ------------------------------------------------------------

    def _rows(self, statement: Any) -> list[Row]:
        def read() -> list[Row]:
            with self._engine.connect() as conn:
                result = conn.execution_options(stream_results=True).execute(statement)
                with result:
                    return [dict(r) for r in result.mappings()]

        try:
            return self._reconnecting(read)
        except SQLAlchemyError as exc:
            raise self._translate(exc, "reading rows") from exc

    def _scalar(self, statement: Any) -> Any:
        def read() -> Any:
            with self._engine.connect() as conn:
                return conn.execute(statement).scalar()

        try:
            return self._reconnecting(read)
        except SQLAlchemyError as exc:
            raise self._translate(exc, "querying the source") from exc

    def _translate(self, exc: SQLAlchemyError, doing: str) -> SourceError:
        return source_error(exc, self._url, doing, table=self._source.table)


def _split(start: Position | None) -> tuple[Position | None, Any]:
    """A start without a key means "every row whose cursor is at least this"."""
    if start is not None and start.key is None:
        return None, start.cursor
    return start, None
