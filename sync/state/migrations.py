"""Versions of the state store's schema, and the steps from each to the next.

The version lives in ``psync_schema`` (one row). A store made before versions
existed has no such table but has ``psync_checkpoints``: it is version 1. A fresh
store is created at the latest version at once (``sync.state.schema``); an older one
runs each step above its version, in order. Every step keeps its own copy of the
DDL it applies, so later changes to ``schema.py`` do not change what it did.

Replicas may start together: :func:`migrate` runs in the caller's one transaction,
under a lock, so one of them upgrades and the others then find nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    inspect,
    select,
    text,
)

from sync.errors import StateError
from sync.state.schema import metadata, schema_version

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of schema changes: "psync-sc" as a big-endian integer
SCHEMA_LOCK = 0x7073796E632D7363


def add_column(conn: Connection, table: str, column: Column[Any]) -> None:
    """ALTER TABLE ... ADD COLUMN, which SQLite and PostgreSQL both understand."""
    quote = conn.dialect.identifier_preparer.quote
    kind = column.type.compile(dialect=conn.dialect)
    null = "" if column.nullable else " NOT NULL"
    conn.execute(text(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column.name)} {kind}{null}"))


def leases_and_run_holders(conn: Connection) -> None:
    """Version 2: who holds each job's lease, and which process ran each run."""
    v2 = MetaData()
    Table(
        "psync_leases",
        v2,
        Column("job", String(200), primary_key=True),
        Column("holder", String(200), nullable=False),
        Column("since", Float, nullable=False),
    )
    v2.create_all(conn)
    add_column(conn, "psync_runs", Column("holder", String(200), nullable=True))


def job_layouts(conn: Connection) -> None:
    """Version 3: how many shards each job was split into, so a change is noticed."""
    v3 = MetaData()
    Table(
        "psync_jobs",
        v3,
        Column("job", String(200), primary_key=True),
        Column("shards", Integer, nullable=False),
    )
    v3.create_all(conn)


def fencing_marks_and_adoptions(conn: Connection) -> None:
    """Version 4: lease generations, marks that say what was sent, duplicates found,
    rows a mirror run deleted, and adoptions of users Personyze already held."""
    add_column(conn, "psync_pending", Column("payload", Text, nullable=True))
    add_column(conn, "psync_pending", Column("fingerprint", String(32), nullable=True))
    add_column(conn, "psync_pending", Column("watermark", BigInteger, nullable=True))
    add_column(conn, "psync_leases", Column("generation", BigInteger, nullable=True))
    add_column(conn, "psync_leases", Column("renewed_at", Float, nullable=True))
    v4 = MetaData()
    Table(
        "psync_duplicates",
        v4,
        Column("job", String(200), primary_key=True),
        Column("row_key", String(), primary_key=True),
        Column("user_id", BigInteger, primary_key=True),
        Column("kept_user_id", BigInteger, nullable=False),
        Column("seen_at", Float, nullable=False),
    )
    Table(
        "psync_vanished",
        v4,
        Column("job", String(200), primary_key=True),
        Column("row_key", String(), primary_key=True),
        Column("user_id", BigInteger, nullable=False),
        Column("deleted_at", Float, nullable=False),
    )
    Table(
        "psync_adoptions",
        v4,
        Column("job", String(200), primary_key=True),
        Column("state", String(16), nullable=False),
        Column("after_user_id", BigInteger, nullable=False),
        Column("highest_user_id", BigInteger, nullable=False),
        Column("wanted", Integer, nullable=False),
        Column("found", Integer, nullable=False),
        Column("reads", Integer, nullable=False),
        Column("started_at", Float, nullable=False),
        Column("ended_at", Float, nullable=True),
    )
    Table(
        "psync_adopt_wanted",
        v4,
        Column("job", String(200), primary_key=True),
        Column("row_key", String(), primary_key=True),
        Column("identifier", Text, nullable=False),
        Column("payload", Text, nullable=False),
        Column("fingerprint", String(32), nullable=False),
        Column("user_id", BigInteger, nullable=True),
        Column("in_step", Integer, nullable=True),
        Index("ix_psync_adopt_wanted", "job", "identifier"),
    )
    v4.create_all(conn)


def delivery_history(conn: Connection) -> None:
    """Version 5: each row's deliveries (``history``, ``runs``)."""
    v5 = MetaData()
    Table(
        "psync_deliveries",
        v5,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("job", String(200), nullable=False),
        Column("row_key", String(), nullable=False),
        Column("run_id", Integer, nullable=True),
        Column("at", Float, nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("operation", String(8), nullable=True),
        Column("fingerprint", String(32), nullable=True),
        Column("columns", Text, nullable=False),
        Column("changed", Text, nullable=True),
        Column("status", Integer, nullable=True),
        Column("user_id", BigInteger, nullable=True),
        Column("reason", Text, nullable=True),
        Index("ix_psync_deliveries_row", "job", "row_key"),
        Index("ix_psync_deliveries_run", "run_id"),
        Index("ix_psync_deliveries_at", "job", "at"),
    )
    v5.create_all(conn)


def audiences(conn: Connection) -> None:
    """Version 6: each audience job's list, and the members it confirmed."""
    v6 = MetaData()
    Table(
        "psync_audiences",
        v6,
        Column("job", String(200), primary_key=True),
        Column("name", Text, nullable=False),
        Column("list_id", BigInteger, nullable=True),
        Column("since", Float, nullable=False),
        Column("waiting", Integer, nullable=False),
    )
    Table(
        "psync_audience_members",
        v6,
        Column("job", String(200), primary_key=True),
        Column("user_id", BigInteger, primary_key=True),
        Column("row_key", String(), nullable=False),
        Column("added_at", Float, nullable=False),
    )
    v6.create_all(conn)


def senders(conn: Connection) -> None:
    """Version 7: the processes sending now, which share the account's rate budget."""
    v7 = MetaData()
    Table(
        "psync_senders",
        v7,
        Column("holder", String(200), primary_key=True),
        Column("seen_at", Float, nullable=False),
        Column("cut_rate", Float, nullable=True),
        Column("cut_at", Float, nullable=True),
    )
    v7.create_all(conn)


# (version, step): each step takes a store from the version before it to its own.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (2, leases_and_run_holders),
    (3, job_layouts),
    (4, fencing_marks_and_adoptions),
    (5, delivery_history),
    (6, audiences),
    (7, senders),
]
LATEST = MIGRATIONS[-1][0]


def stored_version(conn: Connection) -> int:
    """The store's version: 0 when it is empty, 1 when it predates versions."""
    tables = set(inspect(conn).get_table_names())
    if "psync_schema" in tables:
        version = conn.execute(select(func.max(schema_version.c.version))).scalar()
        if version is not None:
            return int(version)
    return 1 if "psync_checkpoints" in tables else 0


def lock(conn: Connection) -> None:
    """Hold the schema lock until the transaction ends, so one process migrates at a time.

    SQLite: ``BEGIN IMMEDIATE`` makes the transaction a writer from its first
    statement, so a second process waits here instead of reading a version that is
    about to change.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK)))
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(conn: Connection, where: str) -> int:
    """Bring the store to :data:`LATEST` in this transaction; the version it had before.

    ``where`` names the store (its URL, password hidden) in the error a store newer
    than this code gets.
    """
    lock(conn)
    found = stored_version(conn)
    if found > LATEST:
        raise StateError(
            f"state store {where}: its schema is version {found}, newer than this "
            f"personyze-sync knows ({LATEST}): upgrade personyze-sync, or point state.url "
            f"at another store"
        )
    if found == LATEST:
        return found
    if found == 0:
        metadata.create_all(conn)
    else:
        schema_version.create(conn, checkfirst=True)
        for version, step in MIGRATIONS:
            if version > found:
                step(conn)
        log.info(
            "state store schema upgraded",
            extra={"store": where, "from_version": found, "to_version": LATEST},
        )
    conn.execute(delete(schema_version))
    conn.execute(schema_version.insert().values(version=LATEST))
    return found
