"""SQL helpers shared by the state store's modules: IN lists in chunks, upserts, deletes by key.

In one module so that every table's module writes them alike (one cached statement shape
per IN-list length, one upsert per dialect).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, delete
from sqlalchemy.dialects import postgresql, sqlite

T = TypeVar("T")

IN_CHUNK = 1024  # values per IN list, at most


def in_chunks(values: Iterable[T]) -> list[list[T]]:
    """The values in lists of a power-of-two length (at most IN_CHUNK), padded with repeats.

    Each length of an IN list is a SQL text of its own, so a prepared statement of its
    own in SQLite's statement cache (and psycopg's). Commits of every size from 1 to
    1,000 filled that cache with near-copies of a few statements, ~100 KB each: peak
    RSS grew by 30 MB over a long backfill. Powers of two leave 11 shapes a statement.
    """
    items = list(values)
    chunks = []
    for at in range(0, len(items), IN_CHUNK):
        chunk = items[at : at + IN_CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        chunks.append(chunk + chunk[-1:] * (size - len(chunk)))
    return chunks


def upsert(conn: Connection, table: Table, values: list[dict[str, Any]], keys: list[str]) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(table)
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), values)


def delete_keys(conn: Connection, table: Table, job: str, keys: Iterable[str]) -> None:
    for chunk in in_chunks(keys):
        conn.execute(delete(table).where(table.c.job == job, table.c.row_key.in_(chunk)))
