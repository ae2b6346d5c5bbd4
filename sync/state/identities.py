"""The identity map of every job: row key -> Personyze user_id, with each row's fingerprint.

Read before each batch (what is known, who holds a user_id) and paged through by
mirror runs and ``verify``; :func:`forget` is shared with a batch's commit, which forgets
the rows whose users Personyze deleted in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, Table, func, select

from sync.state.fencing import Fence, Transact
from sync.state.records import KnownRow
from sync.state.schema import collisions, pending, rejected, rows
from sync.state.schema import duplicates as duplicates_table
from sync.state.sql import delete_keys, in_chunks


def forget(conn: Connection, job: str, keys: Sequence[str]) -> None:
    """Forget these rows' users everywhere a row is kept, but for the vanished list."""
    for table in (rows, pending, rejected, collisions, duplicates_table):
        delete_keys(conn, table, job, keys)


def read_known(conn: Connection, job: str, keys: Sequence[str]) -> dict[str, KnownRow]:
    """The user_id and fingerprint of each of these rows that has one."""
    found = {}
    for chunk in in_chunks(keys):
        query = select(rows.c.row_key, rows.c.user_id, rows.c.fingerprint).where(
            rows.c.job == job, rows.c.row_key.in_(chunk)
        )
        found.update({r.row_key: KnownRow(r.user_id, r.fingerprint) for r in conn.execute(query)})
    return found


def read_holders(
    conn: Connection, parts: Sequence[str], ids: Sequence[int]
) -> dict[int, list[str]]:
    """Which row keys of these parts (a job's shards) hold each of these user_ids."""
    found: dict[int, list[str]] = {}
    for chunk in in_chunks(ids):
        query = select(rows.c.user_id, rows.c.row_key).where(
            rows.c.job.in_(list(parts)), rows.c.user_id.in_(chunk)
        )
        for r in conn.execute(query):
            found.setdefault(r.user_id, []).append(r.row_key)
    return found


def key_page(
    run: Transact, table: Table, job: str, after: str | None, limit: int, doing: str
) -> list[tuple[str, int]]:
    """One page of (key, user_id) of ``table`` in key order after ``after``."""

    def read(conn: Connection) -> list[tuple[str, int]]:
        query = select(table.c.row_key, table.c.user_id).where(table.c.job == job)
        if after is not None:
            query = query.where(table.c.row_key > after)
        query = query.order_by(table.c.row_key).limit(limit)
        return [(r.row_key, r.user_id) for r in conn.execute(query)]

    return run(read, doing)


class Identities:
    """Reads and forgets of the identity map, each one transaction of ``run``."""

    def __init__(self, run: Transact) -> None:
        self._run = run

    def holders(self, parts: Sequence[str], user_ids: Iterable[int]) -> dict[int, list[str]]:
        """Which row keys of these parts (a job's shards) hold each of these user_ids."""
        ids = list(set(user_ids))
        if not ids:
            return {}
        return self._run(lambda conn: read_holders(conn, parts, ids), "reading the identity map")

    def holders_anywhere(self, user_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
        """Which (part, row key) of any job already hold each of these user_ids."""
        ids = list(set(user_ids))
        if not ids:
            return {}

        def read(conn: Connection) -> dict[int, list[tuple[str, str]]]:
            found: dict[int, list[tuple[str, str]]] = {}
            for chunk in in_chunks(ids):
                query = select(rows.c.user_id, rows.c.job, rows.c.row_key).where(
                    rows.c.user_id.in_(chunk)
                )
                for r in conn.execute(query):
                    found.setdefault(r.user_id, []).append((r.job, r.row_key))
            return found

        return self._run(read, "reading the identity map")

    def known_keys(self, job: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """One page of the identity map, (key, user_id) in key order after ``after``."""
        return key_page(self._run, rows, job, after, limit, "reading the identity map")

    def sample_keys(self, job: str, count: int) -> list[str]:
        """Up to ``count`` keys of the identity map, picked at random (``verify --sample``)."""

        def read(conn: Connection) -> list[str]:
            query = (
                select(rows.c.row_key).where(rows.c.job == job).order_by(func.random()).limit(count)
            )
            return [r.row_key for r in conn.execute(query)]

        return self._run(read, "sampling the identity map")

    def forget_rows(self, job: str, keys: Sequence[str], fence: Fence | None = None) -> None:
        """Forget these rows' users (deleted in Personyze): a later write creates anew."""
        if keys:
            self._run(lambda conn: forget(conn, job, keys), "forgetting rows", fence)

    def row_count(self, job: str) -> int:
        return int(
            self._run(
                lambda conn: conn.execute(
                    select(func.count()).select_from(rows).where(rows.c.job == job)
                ).scalar(),
                "counting rows",
            )
            or 0
        )
