"""The state store: everything personyze-sync must remember between runs.

One SQLAlchemy implementation serves the embedded SQLite file and a shared
PostgreSQL database alike. Per job it keeps the checkpoint ``(cursor, key)``, the
identity map (row key -> Personyze user_id) with the fingerprint of each row's last
acknowledged payload, rows that were sent without an answer (to reconcile), the
rejected rows, identity collisions and the run history.

Every batch's outcome is written in one transaction (:meth:`StateStore.commit_batch`),
so a checkpoint can never be stored without the acknowledgements behind it.
The API key is never stored here.

Here: the engine, schema, transactions and their fencing, checkpoints and a batch's
commit. Each group of tables has a module :class:`StateStore` delegates to (callers
see one object): ``identities``, ``marks``, ``rejected``, ``shards``, ``history``.

:meth:`StateStore.create_schema` creates the tables or upgrades older ones
(``sync.state.migrations``); :meth:`StateStore.lease` lets one process at a time run
a job (``sync.state.leases``).
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
from sync.model import PendingRow, Position
from sync.state.fencing import Fence
from sync.state.history import History
from sync.state.identities import Identities
from sync.state.leases import Lease, leases_for
from sync.state.marks import Marks
from sync.state.migrations import LATEST, migrate, stored_version
from sync.state.outcome import read_checkpoint, replace_checkpoint, write_outcome
from sync.state.part import PartState, Tables
from sync.state.records import (
    BatchOutcome,
    Collision,
    KnownRow,
    LeaseInfo,
    Mark,
    RunRecord,
    StoredRejection,
)
from sync.state.rejected import Rejections
from sync.state.schema import (
    checkpoints,
    collisions,
    pending,
    rejected,
    rows,
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
    """Checkpoints, identities, rejections and runs of every job."""

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

    # -- checkpoints ---------------------------------------------------------

    def checkpoint(self, job: str) -> Position | None:
        return self._run(lambda conn: read_checkpoint(conn, job), "reading a checkpoint")

    def set_checkpoint(
        self, job: str, position: Position | None, fence: Fence | None = None
    ) -> None:
        """Move a checkpoint deliberately (``checkpoint reset``); None forgets it."""
        now = self._clock()
        self._run(
            lambda conn: replace_checkpoint(conn, job, position, now), "moving a checkpoint", fence
        )

    def part(
        self, name: str, *, parts: Sequence[str] = (), fence: Fence | None = None
    ) -> PartState:
        """The state of one part (a job, or one of its shards), for one run of it.

        ``parts``: every part of its job; ``fence``: the run's lease, checked by every write.
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
        )

    # -- identities (sync.state.identities) -------------------------------------

    def known_rows(self, job: str, keys: Sequence[str]) -> dict[str, KnownRow]:
        return self._identities.known_rows(job, keys)

    def rejected_fingerprints(self, job: str, keys: Sequence[str]) -> dict[str, str | None]:
        """Fingerprints of rows already recorded as rejected (so they are not resent as is)."""
        return self._rejections.rejected_fingerprints(job, keys)

    def holders(self, parts: Sequence[str], user_ids: Iterable[int]) -> dict[int, list[str]]:
        """Which row keys of these parts (a job's shards) hold each of these user_ids."""
        return self._identities.holders(parts, user_ids)

    def holders_anywhere(self, user_ids: Iterable[int]) -> dict[int, list[tuple[str, str]]]:
        """Which (part, row key) of any job already hold each of these user_ids."""
        return self._identities.holders_anywhere(user_ids)

    def known_keys(self, job: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """One page of the identity map, (key, user_id) in key order after ``after``."""
        return self._identities.known_keys(job, after, limit)

    def sample_keys(self, job: str, count: int) -> list[str]:
        """Up to ``count`` keys of the identity map, picked at random (``verify --sample``)."""
        return self._identities.sample_keys(job, count)

    def forget_rows(self, job: str, keys: Sequence[str], fence: Fence | None = None) -> None:
        """Forget these rows' users (deleted in Personyze): a later write creates anew."""
        self._identities.forget_rows(job, keys, fence)

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
        self.set_checkpoint(part, None)
        return moved

    # -- rows sent without an answer (sync.state.marks) ----------------------------

    def add_pending(self, job: str, marks: Sequence[Mark], fence: Fence | None = None) -> None:
        """Mark first sends before sending them (see :mod:`sync.load.reconcile`)."""
        self._marks.add_pending(job, marks, fence)

    def pending(self, job: str) -> list[PendingRow]:
        return self._marks.pending(job)

    def adopt(
        self,
        job: str,
        found: dict[str, tuple[int, str]],
        duplicates: Sequence[tuple[str, int, int]] = (),
        fence: Fence | None = None,
    ) -> None:
        """Record users found by reconciliation (key -> user_id, fingerprint sent) and
        the duplicates seen beside them; their marks are done."""
        self._marks.adopt(job, found, duplicates, fence)

    def duplicates(self, job: str) -> list[tuple[str, int, int]]:
        """Rows whose identifiers Personyze holds in two users: (key, user_id, kept)."""
        return self._marks.duplicates(job)

    def clear_pending(self, job: str, keys: Sequence[str], fence: Fence | None = None) -> None:
        self._marks.clear_pending(job, keys, fence)

    def vanished_keys(self, job: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """One page of rows a mirror run deleted as gone from the source, in key order."""
        return self._marks.vanished_keys(job, after, limit)

    # -- one batch's outcome ---------------------------------------------------

    def commit_batch(self, job: str, outcome: BatchOutcome, fence: Fence | None = None) -> None:
        """Acks, rejections, collisions, deletes and the checkpoint, all or nothing."""
        now = self._clock()

        def write(conn: Connection) -> None:
            write_outcome(conn, job, outcome, now, self._clock)

        self._run(write, "saving a batch's progress", fence)
        self._keep_statistics(len(outcome.acks))

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

    # -- rejected rows and collisions (sync.state.rejected) ----------------------

    def rejections(self, job: str) -> list[StoredRejection]:
        return self._rejections.rejections(job)

    def drop_rejections(self, job: str, keys: Sequence[str], fence: Fence | None = None) -> None:
        self._rejections.drop_rejections(job, keys, fence)

    def collisions(self, job: str) -> list[Collision]:
        return self._rejections.collisions(job)

    def row_count(self, job: str) -> int:
        return self._identities.row_count(job)

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
            ):
                conn.execute(delete(table).where(table.c.job == job))  # fmt: skip

        self._run(write, "forgetting a job")

    # -- run history (sync.state.history) ----------------------------------------

    def start_run(self, job: str, kind: str) -> int:
        """A new run in the history; a run of the job still marked running is marked died."""
        return self._history.start_run(job, kind)

    def finish_run(
        self,
        run_id: int,
        outcome: str,
        *,
        read: int,
        sent: int,
        skipped: int,
        rejected_count: int,
        error: str | None,
    ) -> None:
        self._history.finish_run(
            run_id,
            outcome,
            read=read,
            sent=sent,
            skipped=skipped,
            rejected_count=rejected_count,
            error=error,
        )

    def runs(self, job: str, limit: int = 5) -> list[RunRecord]:
        return self._history.runs(job, limit)

    # -- plumbing --------------------------------------------------------------

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
