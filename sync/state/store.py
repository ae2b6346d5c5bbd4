"""The state store: everything personyze-sync must remember between runs.

One SQLAlchemy implementation serves the embedded SQLite file and a shared
PostgreSQL database alike. Per part (a job, or one shard of it) it keeps the
checkpoint ``(cursor, key)``, the identity map (row key -> Personyze user_id) with
the fingerprint of each row's last acknowledged payload, rows that were sent without
an answer (to reconcile), the rejected rows, identity collisions and the run history.
The API key is never stored here.

Here: the engine, schema, transactions and their fencing, leases, shard counts and
what spans parts. What one part reads and writes is :class:`sync.state.part.PartState`
(``store.part(name)``): a batch's outcome is written in one transaction
(:meth:`PartState.commit`), so a checkpoint can never be stored without the
acknowledgements behind it. Each group of tables has a module both delegate to:
``identities``, ``marks``, ``rejected``, ``shards``, ``history``.

:meth:`StateStore.create_schema` creates the tables or upgrades older ones
(``sync.state.migrations``); :meth:`StateStore.lease` lets one process at a time run
a part (``sync.state.leases``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, event, select, text
from sqlalchemy.exc import SQLAlchemyError

from sync.databases import Reconnecting, database_url, engine_for, shown
from sync.errors import ConfigError, StateError
from sync.state.deliveries import KEEP_30_DAYS, Retention, of_job, of_row, of_run
from sync.state.fencing import Fence
from sync.state.history import History
from sync.state.identities import Identities
from sync.state.leases import Lease, leases_for
from sync.state.marks import Marks
from sync.state.migrations import LATEST, migrate, stored_version
from sync.state.part import PartState, Tables
from sync.state.records import LeaseInfo, RunRecord, StoredDelivery
from sync.state.rejected import Rejections
from sync.state.schema import (
    checkpoints,
    collisions,
    deliveries,
    pending,
    rejected,
    rows,
    runs,
    vanished,
)
from sync.state.schema import duplicates as duplicates_table
from sync.state.shards import Shards
from sync.state.sql import IN_CHUNK, in_chunks

# names callers import from here, defined in the modules this one delegates to
__all__ = ["ANALYZE_FIRST", "IN_CHUNK", "Fence", "StateStore", "in_chunks", "state_engine"]

T = TypeVar("T")

ANALYZE_FIRST = 1000  # rows written before the first ANALYZE; then each time they double


# A plain "postgresql://" (or the old "postgres://") URL would ask SQLAlchemy for psycopg2,
# which this package does not install: it installs psycopg (3), as the source side does.
def state_engine(url: str) -> Engine:
    """An engine for the state store; a SQLite file's folder is created if missing."""
    parsed = database_url(url, "state.url")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"state.url: the state store must be SQLite or PostgreSQL, not "
            f"{parsed.get_backend_name()!r}"
        )
    if parsed.get_backend_name() == "postgresql":
        return engine_for(parsed, "state.url", pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        try:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"state store {shown(url)}: cannot create its folder: {exc.strerror or exc}"
            ) from exc
    engine = engine_for(parsed, "state.url", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits to a power cut,
        # and marks written before a send must survive one (see bench/sqlite_synchronous.py)
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    return engine


class StateStore:
    """The store of every job's state: its engine, schema, leases and parts."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float],
        sleep: Callable[[float], None] = time.sleep,
        holder: str | None = None,
    ) -> None:
        """``holder`` names this process in leases and runs (default: host:pid)."""
        self._engine = engine
        self._clock = clock
        self._where = shown(engine.url)
        self._reconnecting = Reconnecting(f"state store {self._where}", sleep)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._leases = leases_for(engine, self.holder, clock, self._run, self._where, sleep)
        self._acked = 0  # rows this process recorded as sent
        self._analyze_at = ANALYZE_FIRST  # ... when it next refreshes PostgreSQL's statistics

        self._identities = Identities(self._run)
        self._marks = Marks(self._run, clock)
        self._rejections = Rejections(self._run)
        self._shards = Shards(self._run)
        self._history = History(self._run, clock, self.holder)

    def ping(self) -> None:
        """Raise StateError unless the store answers (for /readyz)."""
        self._run(lambda conn: conn.execute(select(1)).scalar(), "answering a ping")

    def create_schema(self) -> None:
        """Create the tables, or bring an older store's up to date; one process at a time.

        A store already up to date is only read: no lock, no write (``status`` may run
        beside a busy daemon, or as a user who may only read).
        """
        if self._run(stored_version, "creating its tables") != LATEST:
            self._run(lambda conn: migrate(conn, self._where), "creating its tables")
        self._reconnecting.answered()

    def close(self) -> None:
        """Release this store's leases and claim, then its connections."""
        self._leases.close()
        self._engine.dispose()

    # -- leases: one run of a job at a time ------------------------------------

    def claim(self) -> None:
        """Take a SQLite store for this process (StateError if another has it).

        A SQLite file serves one process at a time; call this before running jobs.
        On PostgreSQL it does nothing: replicas share the store, and leases divide it.
        """
        self._leases.claim()

    def lease(self, name: str) -> Lease | None:
        """The lease to run ``name`` (a job, or a shard such as "customers#2/3"), or None.

        Never waits: None means another holder runs it now. Release it (or use it as a
        context manager) when the run ends; a process that dies releases it by itself.
        """
        return self._leases.take(name)

    def leases(self) -> list[LeaseInfo]:
        """The leases held right now, by any process (for ``status``)."""
        return self._leases.held()

    # -- one part's state --------------------------------------------------------

    def part(
        self,
        name: str,
        *,
        parts: Sequence[str] = (),
        fence: Fence | None = None,
        history: Retention | None = KEEP_30_DAYS,
    ) -> PartState:
        """The state of one part (a job, or one of its shards), for one run of it.

        ``parts``: every part of its job; ``fence``: the run's lease, checked by every
        write; ``history``: how long its deliveries are kept (None: not recorded).
        """
        tables = Tables(self._identities, self._marks, self._rejections, self._history)
        return PartState(
            name,
            parts=parts,
            fence=fence,
            run=self._run,
            clock=self._clock,
            tables=tables,
            committed=self._keep_statistics,
            history=history,
        )

    # -- the delivery history (sync.state.deliveries), across a job's parts ----------

    def deliveries(self, job: str, key: str, limit: int = 100) -> list[StoredDelivery]:
        """The deliveries of one row of ``job`` (in whichever shard), newest first."""
        return self._run(lambda conn: of_row(conn, job, key, limit), "reading a row's history")

    def run_of(self, job: str, run_id: int) -> tuple[RunRecord, list[StoredDelivery]] | None:
        """Run ``run_id`` of ``job`` (or of one of its shards) and its deliveries; None if
        the job has no such run."""

        def read(conn: Connection) -> tuple[RunRecord, list[StoredDelivery]] | None:
            found = conn.execute(
                select(runs).where(runs.c.id == run_id, of_job(runs.c.job, job))
            ).first()
            if found is None:
                return None
            return RunRecord(**found._mapping), of_run(conn, run_id)

        return self._run(read, "reading a run")

    def holders_anywhere(self, user_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
        """Which (part, row key) of any job already hold each of these user_ids (for an
        adoption, which spans a job's parts; a run asks its :class:`PartState`)."""
        return self._identities.holders_anywhere(user_ids)

    # -- how a job's state is split into shards (sync.state.shards) ---------------

    def shards_of(self, job: str) -> int | None:
        """The number of shards ``job``'s state is kept in; None: not recorded yet."""
        return self._shards.shards_of(job)

    def set_shards(self, job: str, shards: int) -> None:
        self._shards.set_shards(job, shards)

    def rehome(self, part: str, target: Callable[[str], str]) -> int:
        """Move every row kept under ``part`` to the part ``target(key)`` names.

        For a change in the number of shards: identities, fingerprints, marks and
        rejections follow their rows; ``part``'s checkpoint is dropped (each new part
        reads from the start, and sends only what changed). Returns the rows moved.
        """
        moved = self._shards.move_rows(part, target)
        self.part(part).set_checkpoint(None)
        return moved

    # -- a full reset ------------------------------------------------------------

    def forget_job(self, job: str) -> None:
        """Drop everything known about a job (a full reset)."""

        def write(conn: Connection) -> None:
            for table in (
                checkpoints,
                rows,
                pending,
                rejected,
                collisions,
                vanished,
                duplicates_table,
                deliveries,
            ):
                conn.execute(delete(table).where(table.c.job == job))  # fmt: skip

        self._run(write, "forgetting a job")

    # -- plumbing --------------------------------------------------------------

    def _keep_statistics(self, acked: int) -> None:
        """ANALYZE the identity map each time this process has doubled what it wrote.

        PostgreSQL plans the identity-map lookups from table statistics. A backfill
        grows the table from nothing faster than autovacuum (where it runs at all)
        refreshes them, and a lookup planned for an empty table reads every row of the
        job: each batch then cost more than the last (2 s a batch at 40,000 rows).
        """
        self._acked += acked
        if self._engine.dialect.name != "postgresql" or self._acked < self._analyze_at:
            return
        self._analyze_at = 2 * self._acked
        self._run(lambda conn: conn.execute(text(f"ANALYZE {rows.name}")), "refreshing statistics")

    def transaction(self, work: Callable[[Connection], T], doing: str) -> T:
        """``work`` in one transaction of the store, as every method here runs its own
        (for the modules that keep tables of their own: adoptions)."""
        return self._run(work, doing)

    def _run(self, work: Callable[[Connection], T], doing: str, fence: Fence | None = None) -> T:
        """``work`` in one transaction, waited for across a brief outage of the store.

        ``fence``: the run's lease, checked first in the same transaction, so a run that
        lost its lease (another process runs the job now) writes nothing more.
        """

        def transaction() -> T:
            with self._engine.begin() as conn:
                if fence is not None:
                    fence.fence(conn)
                return work(conn)

        try:
            return self._reconnecting(transaction)
        except SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StateError(f"state store {self._where}: failed while {doing}: {detail}") from exc
