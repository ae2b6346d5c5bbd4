"""Keyset reads on SQLite, PostgreSQL and MariaDB: ties, resumption, windows, errors."""

from __future__ import annotations

import gc
import warnings
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Date, Integer, MetaData, String, Table, text

from sync.config import SourceSettings
from sync.databases import source_engine
from sync.errors import SourceError
from sync.extract.query import Position
from sync.extract.reader import SourceReader
from tests.support import BASE_TIME, execute, make_customers, writer


def settings(url: str, **overrides: Any) -> SourceSettings:
    return SourceSettings.model_validate(
        {
            "url": url,
            "table": "customers",
            "cursor": "updated_at",
            "key": "id",
            "batch_size": 7,
            **overrides,
        }
    )


ENGINES: list[Any] = []


@pytest.fixture(autouse=True)
def _dispose_engines() -> Any:
    yield
    while ENGINES:
        ENGINES.pop().dispose()


def reader(url: str, columns: tuple[str, ...] = ("email",), **overrides: Any) -> SourceReader:
    engine = source_engine(url)
    ENGINES.append(engine)
    return SourceReader(engine, settings(url, **overrides), columns)


def ids(batches: Any) -> list[int]:
    return [row["id"] for batch in batches for row in batch]


def expected_order(all_ids: range) -> list[int]:
    """(updated_at, id) order of tests.support.customer rows."""

    def cursor(i: int) -> Any:
        return BASE_TIME if i % 3 == 0 else BASE_TIME + timedelta(seconds=i)

    return sorted(all_ids, key=lambda i: (cursor(i), i))


def test_every_row_once_in_keyset_order_though_ties_span_batches(source_url: str) -> None:
    make_customers(source_url, range(1, 51))
    src = reader(source_url)
    batches = list(src.batches_after(None, src.max_cursor()))
    assert [len(b) for b in batches] == [7] * 7 + [1]
    assert ids(batches) == expected_order(range(1, 51))
    assert ids(batches)[:16] == list(range(3, 49, 3))  # the 16 tied rows come first


@pytest.mark.parametrize("stop_after", [3, 9, 16, 17, 49])
def test_resuming_from_any_position_continues_exactly(source_url: str, stop_after: int) -> None:
    make_customers(source_url, range(1, 51))
    src = reader(source_url)
    order = expected_order(range(1, 51))
    everything = [row for batch in src.batches_after(None, None) for row in batch]
    position = src.position(everything[stop_after - 1])
    assert ids(src.batches_after(position, None)) == order[stop_after:]
    assert src.count(position, None) == 50 - stop_after


def test_upper_bound_and_window(source_url: str) -> None:
    make_customers(source_url, range(1, 31))
    src = reader(source_url)
    upper = BASE_TIME + timedelta(seconds=10)
    assert ids(src.batches_after(None, upper)) == expected_order(
        [i for i in range(1, 31) if i % 3 == 0 or i <= 10]
    )  # type: ignore[arg-type]
    end = Position(BASE_TIME + timedelta(seconds=20), 20)
    window = ids(src.batches_in_window(BASE_TIME + timedelta(seconds=14), end))
    assert window == [14, 16, 17, 19, 20]


def test_a_start_without_key_means_from_that_cursor_on(source_url: str) -> None:
    make_customers(source_url, range(1, 31))
    src = reader(source_url)
    start = Position(BASE_TIME + timedelta(seconds=25), None)
    assert ids(src.batches_after(start, None)) == [25, 26, 28, 29]
    assert src.count(start, None) == 4


def test_rows_by_key_and_key_type(source_url: str) -> None:
    make_customers(source_url, range(1, 21))
    src = reader(source_url)
    assert sorted(r["id"] for r in src.rows_by_key([2, 5, 99])) == [2, 5]
    assert src.key_is_numeric is True
    assert reader(source_url, key="email").key_is_numeric is False


def test_null_cursors_are_counted_not_read(source_url: str) -> None:
    make_customers(source_url, range(1, 6))
    make_customers(source_url, range(6, 8), updated_at=None)
    execute(source_url, text("UPDATE customers SET updated_at = NULL WHERE id >= 6"))
    src = reader(source_url)
    assert src.null_cursor_count() == 2
    assert sorted(ids(src.batches_after(None, None))) == [1, 2, 3, 4, 5]


def test_a_query_source_with_a_computed_cursor(source_url: str) -> None:
    make_customers(source_url, range(1, 11))
    query = "SELECT id, email, updated_at AS changed, id * 10 AS score10 FROM customers"
    src = reader(source_url, ("email", "score10"), table=None, query=query, cursor="changed")
    rows = [r for b in src.batches_after(None, None) for r in b]
    assert [r["id"] for r in rows] == expected_order(range(1, 11))
    assert rows[0]["score10"] == 30


def test_integer_and_date_cursors(source_url: str) -> None:
    table = Table(
        "events",
        MetaData(),
        Column("id", String(20), primary_key=True),
        Column("version", Integer),
        Column("day", Date),
    )
    engine = writer(source_url)
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {
                    "id": f"k{i:02d}",
                    "version": i // 4,
                    "day": date(2024, 1, 1) + timedelta(days=i // 5),
                }
                for i in range(20)
            ],
        )
    engine.dispose()
    by_version = reader(source_url, (), table="events", cursor="version")
    rows = [r for b in by_version.batches_after(Position(2, "k09"), None) for r in b]
    assert [r["id"] for r in rows] == [f"k{i:02d}" for i in range(10, 20)]
    by_day = reader(source_url, (), table="events", cursor="day")
    rows = [r for b in by_day.batches_after(Position(date(2024, 1, 3), "k12"), None) for r in b]
    assert [r["id"] for r in rows] == [f"k{i:02d}" for i in range(13, 20)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"table": "customer"}, "table 'customer' does not exist"),
        ({"cursor": "updatedat"}, "column 'updatedat' does not exist"),
        ({"key": "ID_"}, "column 'ID_' does not exist"),
    ],
)
def test_missing_tables_and_columns_are_named_with_a_suggestion(
    source_url: str, overrides: dict[str, str], message: str
) -> None:
    make_customers(source_url, range(1, 3))
    with pytest.raises(SourceError) as raised:
        reader(source_url, **overrides)
    assert message in str(raised.value)
    assert "did you mean" in str(raised.value)


def test_a_mapped_column_that_does_not_exist(source_url: str) -> None:
    make_customers(source_url, range(1, 3))
    with pytest.raises(SourceError, match=r"column 'emial' does not exist.*did you mean 'email'"):
        reader(source_url, ("emial",))


def test_a_sqlite_table_made_by_create_table_as_is_read_as_stored(sqlite_url: str) -> None:
    """CREATE TABLE AS (how dbt-sqlite builds a model) declares the timestamp column NUM;
    its values are text, read as text (they failed the read: 'must be real number')."""
    make_customers(sqlite_url, range(1, 31))
    execute(
        sqlite_url,
        text(
            "CREATE TABLE copied AS SELECT id, email, updated_at,"
            " CAST(2.5 AS NUMERIC) AS score FROM customers"  # declared NUM too
        ),
    )
    src = reader(sqlite_url, ("email", "score"), table="copied")
    rows = [row for batch in src.batches_after(None) for row in batch]
    assert [row["id"] for row in rows] == expected_order(range(1, 31))
    assert {type(row["updated_at"]) for row in rows} == {str}  # as stored
    assert {(type(row["score"]), row["score"]) for row in rows} == {(Decimal, Decimal("2.5"))}
    position = src.position(rows[19])
    assert ids(src.batches_after(position, None)) == [row["id"] for row in rows[20:]]


def test_hostile_identifiers_and_values_are_quoted_and_bound(sqlite_url: str) -> None:
    name = "Odd-Täble"  # the config refuses quotes and semicolons in table names outright
    table = Table(
        name,
        MetaData(),
        Column("k'ey", Integer, primary_key=True),
        Column('cur"sor', Integer),
        Column("data", String(50)),
    )
    victims = Table("victims", table.metadata, Column("id", Integer, primary_key=True))
    engine = source_engine(sqlite_url)
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [{"k'ey": i, 'cur"sor': 1, "data": "'); DROP TABLE victims;"} for i in range(5)],
        )
    src = reader(sqlite_url, ("data",), table=name, cursor='cur"sor', key="k'ey")
    rows = [r for b in src.batches_after(Position(1, 1), None) for r in b]
    assert [r["k'ey"] for r in rows] == [2, 3, 4]
    with engine.connect() as conn:
        assert conn.execute(victims.select()).all() == []  # still there
    engine.dispose()


@pytest.mark.postgres
def test_a_read_whose_connection_dies_mid_stream_leaves_no_open_server_cursor(
    pg_url: str,
) -> None:
    """Each attempt's server-side cursor is closed though its connection died under it:
    psycopg warns, when one is collected still open, long after the test that left it."""
    make_customers(pg_url, range(1, 3001))
    execute(pg_url, text("CREATE INDEX customers_cursor ON customers (updated_at, id)"))
    # the backend ends itself when the scan reaches row 2000, a few FETCHes in
    query = "SELECT * FROM customers WHERE id <> 2000 OR pg_terminate_backend(pg_backend_pid())"
    engine = source_engine(pg_url)
    ENGINES.append(engine)
    src = SourceReader(
        engine,
        settings(pg_url, table=None, query=query, batch_size=3000),
        ("email",),
        sleep=lambda _s: None,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SourceError, match="error while reading rows") as raised:
            list(src.batches_after(None, None))
        del raised  # its traceback holds the last attempt's frames
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_a_duckdb_query_over_parquet_files_pages_in_keyset_order(tmp_path: Path) -> None:
    """Parquet exports read by DuckDB, with no database file at all: ties span batches."""
    import duckdb

    export = tmp_path / "customers.parquet"
    with duckdb.connect() as conn:
        conn.execute(
            "COPY (SELECT i AS id, 'u' || i || '@example.com' AS email, "
            "TIMESTAMP '2024-01-01' + INTERVAL (i // 7) DAY AS updated_at "
            f"FROM range(1, 120) t(i)) TO '{export}' (FORMAT parquet)"
        )
    query = f"SELECT * FROM read_parquet('{export}')"
    src = reader("duckdb:///:memory:", table=None, query=query, batch_size=10)
    assert ids(src.batches_after(None)) == list(range(1, 120))
    assert ids(src.batches_after(src.position({"id": 13, "updated_at": datetime(2024, 1, 2)}))) == (
        list(range(14, 120))
    )
