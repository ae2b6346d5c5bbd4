"""How a job's state is split into shards, and moving rows when that number changes.

A row moves to the shard the source will read it in: :func:`shard_target` computes
in Python what the reader's queries compute in the database (:mod:`sync.shard_hash`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Table, select, update

from sync.errors import ConfigError
from sync.shard_hash import shard_of
from sync.state.fencing import Transact
from sync.state.schema import collisions, jobs, pending, rejected, rows, vanished
from sync.state.schema import duplicates as duplicates_table
from sync.state.sql import in_chunks, upsert


class Shards:
    """The shards recorded per job, and the rows moved between parts; ``run`` transacts."""

    def __init__(self, run: Transact) -> None:
        self._run = run

    def shards_of(self, job: str) -> int | None:
        """The number of shards ``job``'s state is kept in; None: not recorded yet."""
        return self._run(
            lambda conn: conn.execute(select(jobs.c.shards).where(jobs.c.job == job)).scalar(),
            "reading a job's shards",
        )

    def set_shards(self, job: str, shards: int) -> None:
        self._run(
            lambda conn: upsert(conn, jobs, [{"job": job, "shards": shards}], ["job"]),
            "recording a job's shards",
        )

    def move_rows(self, part: str, target: Callable[[str], str]) -> int:
        """Move every row kept under ``part`` to the part ``target(key)`` names, a page of
        1,000 keys a transaction; the checkpoint is the store's (``StateStore.rehome``)."""
        moved = 0
        for table in (rows, pending, rejected, collisions, vanished, duplicates_table):
            after: str | None = None
            while True:
                page = self._keys_page(table, part, after)
                if not page:
                    break
                after = page[-1]
                groups: dict[str, list[str]] = {}
                for key in page:
                    groups.setdefault(target(key), []).append(key)
                move = functools.partial(self._move, table=table, part=part, groups=groups)
                self._run(move, "moving rows")
                moved += len(page) if table is rows else 0
        return moved

    def _keys_page(self, table: Table, part: str, after: str | None) -> list[str]:
        def read(conn: Connection) -> list[str]:
            query = select(table.c.row_key).where(table.c.job == part)
            if after is not None:
                query = query.where(table.c.row_key > after)
            return list(conn.execute(query.order_by(table.c.row_key).limit(1000)).scalars())

        return self._run(read, "reading rows to move")

    def _move(
        self, conn: Connection, table: Table, part: str, groups: dict[str, list[str]]
    ) -> None:
        for to, keys in groups.items():
            if to == part:
                continue
            for chunk in in_chunks(keys):
                conn.execute(
                    update(table)
                    .where(table.c.job == part, table.c.row_key.in_(chunk))
                    .values(job=to)
                )


def shard_target(job: str, parts: Sequence[str], *, numeric: bool) -> Callable[[str], str]:
    """``target`` for :meth:`Shards.move_rows`: which of ``parts`` (the job's new parts,
    in shard order) reads a key; ``numeric``: the key column is a number (the reader's
    ``key_is_numeric``), else the key's text is hashed."""

    def target(key: str) -> str:
        if len(parts) == 1:
            return parts[0]
        try:
            return parts[shard_of(key, len(parts), numeric=numeric)]
        except ValueError as exc:
            raise ConfigError(f"job {job}: {exc}, but its key column is numeric") from None

    return target
