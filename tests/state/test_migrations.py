"""Schema versions: fresh stores, upgrades of old ones, newer ones refused, races.

Every test runs on an SQLite file and on a fresh PostgreSQL database. The version-1
tables are written here as they were, so an upgrade is tested from the real thing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)

from sync.errors import FatalError, StateError
from sync.extract.query import Position
from sync.state.migrations import LATEST
from sync.state.records import Ack, BatchOutcome, KnownRow
from sync.state.store import StateStore, state_engine

T0 = 1_700_000_000.5

# The tables as version 1 of personyze-sync created them, before versions existed.
v1 = MetaData()
Table(
    "psync_checkpoints",
    v1,
    Column("job", String(200), primary_key=True),
    Column("cursor_type", String(16), nullable=False),
    Column("cursor_value", Text, nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("key_value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Table(
    "psync_rows",
    v1,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("fingerprint", String(32), nullable=False),
    Column("sent_at", Float, nullable=False),
    Index("ix_psync_rows_user", "job", "user_id"),
)
Table(
    "psync_pending",
    v1,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("internal_id", Text, nullable=False),
    Column("sent_at", Float, nullable=False),
)
Table(
    "psync_rejected",
    v1,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("payload", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", Integer, nullable=True),
    Column("fingerprint", String(32), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("first_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
)
Table(
    "psync_collisions",
    v1,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("other_key", String(), nullable=False),
    Column("seen_at", Float, nullable=False),
)
Table(
    "psync_runs",
    v1,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(200), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("rows_read", Integer, nullable=False, default=0),
    Column("rows_sent", Integer, nullable=False, default=0),
    Column("rows_skipped", Integer, nullable=False, default=0),
    Column("rows_rejected", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state/state.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def open_store(store_url: str) -> Iterator[Callable[[], StateStore]]:
    """Opens stores on the test's database, each closed at the end."""
    opened: list[StateStore] = []

    def open_one() -> StateStore:
        store = StateStore(state_engine(store_url), lambda: T0, holder="test:1")
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def plain_engine(url: str) -> Engine:
    return create_engine(url)


def version_of(url: str) -> int | None:
    if url.startswith("sqlite") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    engine = plain_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("psync_schema"):
                return None
            return int(conn.execute(text("SELECT version FROM psync_schema")).scalar_one())
    finally:
        engine.dispose()


def sqlite_folder(url: str) -> None:
    """Make the folder of a SQLite store's file (a PostgreSQL URL needs none)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def write_v1_store(url: str) -> None:
    """A version-1 store holding a checkpoint, an identity and a finished run."""
    sqlite_folder(url)
    engine = plain_engine(url)
    try:
        with engine.begin() as conn:
            v1.create_all(conn)
            conn.execute(
                text(
                    "INSERT INTO psync_checkpoints VALUES"
                    " ('customers', 'int', '41', 'str', 'k-41', 1.5)"
                )
            )
            conn.execute(
                text("INSERT INTO psync_rows VALUES ('customers', 'k-41', 9001, :f, 2.5)"),
                {"f": "a" * 32},
            )
            conn.execute(
                text(
                    "INSERT INTO psync_runs (job, kind, started_at, ended_at, outcome, rows_read,"
                    " rows_sent, rows_skipped, rows_rejected, error)"
                    " VALUES ('customers', 'sync', 1.0, 3.0, 'ok', 41, 40, 1, 0, NULL)"
                )
            )
    finally:
        engine.dispose()


def shape(url: str) -> dict[str, Any]:
    """Every table's columns (type, nullable), primary key and indexes, as reflected."""
    engine = plain_engine(url)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            return {
                table: {
                    "columns": {
                        c["name"]: (str(c["type"].compile(dialect=conn.dialect)), c["nullable"])
                        for c in found.get_columns(table)
                    },
                    "primary_key": found.get_pk_constraint(table)["constrained_columns"],
                    "indexes": sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                        for i in found.get_indexes(table)
                    ),
                }
                for table in sorted(found.get_table_names())
            }
    finally:
        engine.dispose()


def test_a_fresh_store_is_created_at_the_latest_version(
    store_url: str, open_store: Callable[[], StateStore]
) -> None:
    assert version_of(store_url) is None
    open_store().create_schema()
    assert version_of(store_url) == LATEST == 7
    tables = set(shape(store_url))
    assert {"psync_schema", "psync_leases", "psync_checkpoints", "psync_runs"} <= tables
    assert "holder" in shape(store_url)["psync_runs"]["columns"]
    open_store().create_schema()  # again: nothing to do
    assert version_of(store_url) == LATEST


def test_a_version_1_store_is_upgraded_with_its_data(
    store_url: str, open_store: Callable[[], StateStore]
) -> None:
    write_v1_store(store_url)
    assert version_of(store_url) is None

    store = open_store()
    store.create_schema()

    assert version_of(store_url) == LATEST
    customers = store.part("customers")
    assert customers.checkpoint() == Position(cursor=41, key="k-41")
    assert customers.lookup(["k-41"]).known == {"k-41": KnownRow(9001, "a" * 32)}
    [old] = customers.runs()
    assert (old.outcome, old.rows_read, old.rows_sent, old.holder) == ("ok", 41, 40, None)
    # The new parts work on the upgraded store.
    run = customers.start_run("sync")
    assert customers.runs()[0].id == run
    assert customers.runs()[0].holder == "test:1"
    customers.commit(BatchOutcome(acks=[Ack("k-42", 9002, "b" * 32)]))
    assert customers.row_count() == 2
    with store.lease("customers") as lease:
        assert lease is not None
        assert [i.holder for i in store.leases()] == ["test:1"]


def test_an_upgraded_store_matches_a_fresh_one(
    store_url: str, open_store: Callable[[], StateStore], tmp_path: Path
) -> None:
    write_v1_store(store_url)
    open_store().create_schema()
    if store_url.startswith("sqlite"):
        fresh_url = f"sqlite:///{tmp_path}/fresh/state.db"
    else:
        fresh_url = store_url + "_fresh"
        admin = create_engine(store_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{fresh_url.rsplit("/", 1)[1]}"'))
        admin.dispose()
    fresh = StateStore(state_engine(fresh_url), lambda: T0)
    try:
        fresh.create_schema()
    finally:
        fresh.close()
    try:
        assert shape(store_url) == shape(fresh_url)
    finally:
        if not store_url.startswith("sqlite"):
            admin = create_engine(store_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(
                    text(f'DROP DATABASE IF EXISTS "{fresh_url.rsplit("/", 1)[1]}" WITH (FORCE)')
                )
            admin.dispose()


def test_a_store_newer_than_this_code_is_refused_untouched(
    store_url: str, open_store: Callable[[], StateStore]
) -> None:
    store = open_store()
    store.create_schema()
    store.part("customers").set_checkpoint(Position(cursor=1, key="a"))
    engine = plain_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE psync_schema SET version = :v"), {"v": LATEST + 1})
    engine.dispose()

    with pytest.raises(StateError) as caught:
        open_store().create_schema()

    message = str(caught.value)
    assert f"its schema is version {LATEST + 1}, newer than this personyze-sync knows" in message
    assert f"({LATEST}): upgrade personyze-sync, or point state.url at another store" in message
    assert isinstance(caught.value, FatalError)
    assert caught.value.exit_code == 1
    assert version_of(store_url) == LATEST + 1
    assert store.part("customers").checkpoint() == Position(cursor=1, key="a")


@pytest.mark.parametrize("start", ["fresh", "version-1"])
def test_replicas_starting_together_migrate_once(store_url: str, start: str) -> None:
    """Several processes' worth of engines create (or upgrade) one store at once."""
    if start == "version-1":
        write_v1_store(store_url)
    else:
        sqlite_folder(store_url)
    count = 6
    stores = [StateStore(state_engine(store_url), lambda: T0) for _ in range(count)]
    for store in stores:
        store.ping()  # connected before the race, so the race is the migration itself
    ready = threading.Barrier(count)
    errors: list[BaseException] = []

    def start_up(store: StateStore) -> None:
        ready.wait()
        try:
            store.create_schema()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=start_up, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert version_of(store_url) == LATEST
        assert "holder" in shape(store_url)["psync_runs"]["columns"]
        if start == "version-1":
            assert stores[0].part("customers").checkpoint() == Position(cursor=41, key="k-41")
    finally:
        for store in stores:
            store.close()
