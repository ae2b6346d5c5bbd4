"""The state store: everything personyze-sync must remember between runs.

One SQLAlchemy implementation serves the embedded SQLite file and a shared
PostgreSQL database alike. Per job it keeps the checkpoint ``(cursor, key)``, the
identity map (row key -> Personyze user_id) with the fingerprint of each row's last
acknowledged payload, rows that were sent without an answer (to reconcile), the
rejected rows, identity collisions and the run history.

Every batch's outcome is written in one transaction (:meth:`StateStore.commit_batch`),
so a checkpoint can never be stored without the acknowledgements behind it.
The API key is never stored here.

:meth:`StateStore.create_schema` creates the tables or upgrades older ones
(``sync.state.migrations``); :meth:`StateStore.lease` lets one process at a time run
a job (``sync.state.leases``).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from sync.databases import Reconnecting, database_url, engine_for, shown
from sync.errors import ConfigError, StateError
from sync.extract.query import Position
from sync.state.leases import Lease, leases_for
from sync.state.migrations import LATEST, migrate, stored_version
from sync.state.records import (
    BatchOutcome,
    Collision,
    KnownRow,
    LeaseInfo,
    Mark,
    PendingRow,
    RejectedRow,
    RunRecord,
    StoredRejection,
)
from sync.state.schema import (
    DIED,
    checkpoints,
    collisions,
    decode_value,
    encode_value,
    jobs,
    pending,
    rejected,
    rows,
    runs,
    vanished,
)
from sync.state.schema import duplicates as duplicates_table

T = TypeVar("T")


class Fence(Protocol):
    """A run's lease: ``fence(conn)`` raises LeaseLost unless the run still holds it;
    ``lost`` is set once it is known lost; ``takeover_of`` is the store-clock time the
    previous holder last renewed it, when that holder never released it."""

    lost: threading.Event
    takeover_of: float | None

    def fence(self, conn: Connection) -> None: ...

    def store_now(self) -> float: ...


ANALYZE_FIRST = 1000  # rows written before the first ANALYZE; then each time they double
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


# -- the store -------------------------------------------------------------------


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
        def read(conn: Connection) -> Position | None:
            row = conn.execute(select(checkpoints).where(checkpoints.c.job == job)).first()
            if row is None:
                return None
            return Position(
                cursor=decode_value(row.cursor_type, row.cursor_value),
                key=decode_value(row.key_type, row.key_value),
            )

        return self._run(read, "reading a checkpoint")

    def set_checkpoint(
        self, job: str, position: Position | None, fence: Fence | None = None
    ) -> None:
        """Move a checkpoint deliberately (``checkpoint reset``); None forgets it."""

        def write(conn: Connection) -> None:
            conn.execute(delete(checkpoints).where(checkpoints.c.job == job))
            if position is not None:
                conn.execute(checkpoints.insert().values(self._checkpoint_values(job, position)))

        self._run(write, "moving a checkpoint", fence)

    def _checkpoint_values(self, job: str, position: Position) -> dict[str, Any]:
        cursor_type, cursor_value = encode_value(position.cursor)
        key_type, key_value = encode_value(position.key)
        return {
            "job": job,
            "cursor_type": cursor_type,
            "cursor_value": cursor_value,
            "key_type": key_type,
            "key_value": key_value,
            "updated_at": self._clock(),
        }

    # -- identities ----------------------------------------------------------

    def known_rows(self, job: str, keys: Sequence[str]) -> dict[str, KnownRow]:
        if not keys:
            return {}

        def read(conn: Connection) -> dict[str, KnownRow]:
            found = {}
            for chunk in in_chunks(keys):
                query = select(rows.c.row_key, rows.c.user_id, rows.c.fingerprint).where(
                    rows.c.job == job, rows.c.row_key.in_(chunk)
                )
                found.update(
                    {r.row_key: KnownRow(r.user_id, r.fingerprint) for r in conn.execute(query)}
                )
            return found

        return self._run(read, "reading the identity map")

    def rejected_fingerprints(self, job: str, keys: Sequence[str]) -> dict[str, str | None]:
        """Fingerprints of rows already recorded as rejected (so they are not resent as is)."""
        if not keys:
            return {}

        def read(conn: Connection) -> dict[str, str | None]:
            found = {}
            for chunk in in_chunks(keys):
                query = select(rejected.c.row_key, rejected.c.fingerprint).where(
                    rejected.c.job == job, rejected.c.row_key.in_(chunk)
                )
                found.update({r.row_key: r.fingerprint for r in conn.execute(query)})
            return found

        return self._run(read, "reading rejected rows")

    def holders(self, parts: Sequence[str], user_ids: Iterable[int]) -> dict[int, list[str]]:
        """Which row keys of these parts (a job's shards) hold each of these user_ids."""
        ids = list(set(user_ids))
        if not ids:
            return {}

        def read(conn: Connection) -> dict[int, list[str]]:
            found: dict[int, list[str]] = {}
            for chunk in in_chunks(ids):
                query = select(rows.c.user_id, rows.c.row_key).where(
                    rows.c.job.in_(list(parts)), rows.c.user_id.in_(chunk)
                )
                for r in conn.execute(query):
                    found.setdefault(r.user_id, []).append(r.row_key)
            return found

        return self._run(read, "reading the identity map")

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
        return self._key_page(rows, job, after, limit, "reading the identity map")

    def _key_page(
        self, table: Table, job: str, after: str | None, limit: int, doing: str
    ) -> list[tuple[str, int]]:
        def read(conn: Connection) -> list[tuple[str, int]]:
            query = select(table.c.row_key, table.c.user_id).where(table.c.job == job)
            if after is not None:
                query = query.where(table.c.row_key > after)
            query = query.order_by(table.c.row_key).limit(limit)
            return [(r.row_key, r.user_id) for r in conn.execute(query)]

        return self._run(read, doing)

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
            self._run(lambda conn: self._forget(conn, job, keys), "forgetting rows", fence)

    def _forget(self, conn: Connection, job: str, keys: Sequence[str]) -> None:
        for table in (rows, pending, rejected, collisions, duplicates_table):
            self._delete_keys(conn, table, job, keys)

    @staticmethod
    def _delete_keys(conn: Connection, table: Table, job: str, keys: Iterable[str]) -> None:
        for chunk in in_chunks(keys):
            conn.execute(delete(table).where(table.c.job == job, table.c.row_key.in_(chunk)))

    # -- how a job's state is split into shards ---------------------------------

    def shards_of(self, job: str) -> int | None:
        """The number of shards ``job``'s state is kept in; None: not recorded yet."""
        return self._run(
            lambda conn: conn.execute(select(jobs.c.shards).where(jobs.c.job == job)).scalar(),
            "reading a job's shards",
        )

    def set_shards(self, job: str, shards: int) -> None:
        self._run(
            lambda conn: self._upsert(conn, jobs, [{"job": job, "shards": shards}], ["job"]),
            "recording a job's shards",
        )

    def rehome(self, part: str, target: Callable[[str], str]) -> int:
        """Move every row kept under ``part`` to the part ``target(key)`` names.

        For a change in the number of shards: identities, fingerprints, marks and
        rejections follow their rows; ``part``'s checkpoint is dropped (each new part
        reads from the start, and sends only what changed). Returns the rows moved.
        """
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
        self.set_checkpoint(part, None)
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

    # -- rows sent without an answer -------------------------------------------

    def add_pending(self, job: str, marks: Sequence[Mark], fence: Fence | None = None) -> None:
        """Mark first sends before sending them (see :mod:`sync.load.reconcile`)."""
        if not marks:
            return
        now = self._clock()
        values = [
            {
                "job": job,
                "row_key": m.key,
                "internal_id": str(m.payload.get("internal_id", "")),
                "sent_at": now,
                "payload": json.dumps(m.payload, default=str, sort_keys=True),
                "fingerprint": m.fingerprint,
                "watermark": m.watermark,
            }
            for m in marks
        ]
        self._run(
            lambda conn: self._upsert(conn, pending, values, ["job", "row_key"]),
            "marking rows as sent",
            fence,
        )

    def pending(self, job: str) -> list[PendingRow]:
        def read(conn: Connection) -> list[PendingRow]:
            query = select(pending).where(pending.c.job == job).order_by(pending.c.sent_at)
            return [
                PendingRow(
                    r.row_key,
                    json.loads(r.payload) if r.payload else {"internal_id": r.internal_id},
                    r.fingerprint,
                    r.watermark,
                    r.sent_at,
                )
                for r in conn.execute(query)
            ]

        return self._run(read, "reading rows sent without an answer")

    def adopt(
        self,
        job: str,
        found: dict[str, tuple[int, str]],
        duplicates: Sequence[tuple[str, int, int]] = (),
        fence: Fence | None = None,
    ) -> None:
        """Record users found by reconciliation (key -> user_id, fingerprint sent) and
        the duplicates seen beside them; their marks are done."""

        def write(conn: Connection) -> None:
            now = self._clock()
            values = [
                {"job": job, "row_key": k, "user_id": u, "fingerprint": f, "sent_at": now}
                for k, (u, f) in found.items()
            ]
            if values:
                self._upsert(conn, rows, values, ["job", "row_key"])
                self._delete_keys(conn, pending, job, found)
            if duplicates:
                self._upsert(
                    conn,
                    duplicates_table,
                    [
                        {"job": job, "row_key": k, "user_id": u, "kept_user_id": kept,
                         "seen_at": now}
                        for k, u, kept in duplicates
                    ],
                    ["job", "row_key", "user_id"],
                )  # fmt: skip

        self._run(write, "adopting reconciled users", fence)

    def duplicates(self, job: str) -> list[tuple[str, int, int]]:
        """Rows whose identifiers Personyze holds in two users: (key, user_id, kept)."""

        def read(conn: Connection) -> list[tuple[str, int, int]]:
            t = duplicates_table
            query = select(t).where(t.c.job == job).order_by(t.c.row_key, t.c.user_id)
            return [(r.row_key, r.user_id, r.kept_user_id) for r in conn.execute(query)]

        return self._run(read, "reading duplicate users")

    def clear_pending(self, job: str, keys: Sequence[str], fence: Fence | None = None) -> None:
        if keys:
            self._run(
                lambda conn: self._delete_keys(conn, pending, job, keys), "clearing marks", fence
            )

    def vanished_keys(self, job: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """One page of rows a mirror run deleted as gone from the source, in key order."""
        return self._key_page(vanished, job, after, limit, "reading rows deleted as vanished")

    # -- one batch's outcome ---------------------------------------------------

    def commit_batch(self, job: str, outcome: BatchOutcome, fence: Fence | None = None) -> None:
        """Acks, rejections, collisions, deletes and the checkpoint, all or nothing."""
        now = self._clock()

        def write(conn: Connection) -> None:
            acked = [a.key for a in outcome.acks]
            if outcome.acks:
                self._upsert(
                    conn,
                    rows,
                    [
                        {
                            "job": job,
                            "row_key": a.key,
                            "user_id": a.user_id,
                            "fingerprint": a.fingerprint,
                            "sent_at": now,
                        }
                        for a in outcome.acks
                    ],
                    ["job", "row_key"],
                )
                for table in (pending, rejected, vanished):
                    self._delete_keys(conn, table, job, acked)
            for r in outcome.rejected:
                self._record_rejection(conn, job, r, now)
            if outcome.unsent:
                self._delete_keys(conn, pending, job, outcome.unsent)
            if outcome.collisions:
                self._upsert(
                    conn,
                    collisions,
                    [
                        {
                            "job": job,
                            "row_key": c.key,
                            "user_id": c.user_id,
                            "other_key": c.other_key,
                            "seen_at": now,
                        }
                        for c in outcome.collisions
                    ],
                    ["job", "row_key"],
                )
            if outcome.deleted:
                self._forget(conn, job, outcome.deleted)
            if outcome.vanished:
                self._forget(conn, job, [k for k, _ in outcome.vanished])
                self._upsert(
                    conn,
                    vanished,
                    [{"job": job, "row_key": k, "user_id": u, "deleted_at": now}
                     for k, u in outcome.vanished],
                    ["job", "row_key"],
                )  # fmt: skip
            if outcome.checkpoint is not None:
                self._upsert(
                    conn, checkpoints, [self._checkpoint_values(job, outcome.checkpoint)], ["job"]
                )

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

    def _record_rejection(self, conn: Connection, job: str, r: RejectedRow, now: float) -> None:
        existing = conn.execute(
            select(rejected.c.attempts).where(rejected.c.job == job, rejected.c.row_key == r.key)
        ).scalar()
        values = {
            "payload": json.dumps(r.payload, default=str),
            "reason": r.reason,
            "status": r.status,
            "fingerprint": r.fingerprint,
            "last_at": now,
        }
        if existing is None:
            conn.execute(
                rejected.insert().values(job=job, row_key=r.key, attempts=1, first_at=now, **values)
            )
        else:
            conn.execute(
                update(rejected)
                .where(rejected.c.job == job, rejected.c.row_key == r.key)
                .values(attempts=existing + 1, **values)
            )

    # -- rejected rows and collisions ------------------------------------------

    def rejections(self, job: str) -> list[StoredRejection]:
        def read(conn: Connection) -> list[StoredRejection]:
            query = select(rejected).where(rejected.c.job == job).order_by(rejected.c.first_at)
            return [
                StoredRejection(
                    r.row_key,
                    json.loads(r.payload),
                    r.reason,
                    r.status,
                    r.fingerprint,
                    r.attempts,
                    r.first_at,
                    r.last_at,
                )
                for r in conn.execute(query)
            ]

        return self._run(read, "reading rejected rows")

    def drop_rejections(self, job: str, keys: Sequence[str], fence: Fence | None = None) -> None:
        if keys:
            self._run(
                lambda conn: self._delete_keys(conn, rejected, job, keys),
                "dropping rejections",
                fence,
            )

    def collisions(self, job: str) -> list[Collision]:
        def read(conn: Connection) -> list[Collision]:
            query = select(collisions).where(collisions.c.job == job).order_by(collisions.c.row_key)
            return [Collision(r.row_key, r.user_id, r.other_key) for r in conn.execute(query)]

        return self._run(read, "reading identity collisions")

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

    # -- run history -----------------------------------------------------------

    def start_run(self, job: str, kind: str) -> int:
        """A new run in the history; runs of the job still marked running never ended.

        One run of a job goes at a time, so a "running" one left behind belongs to a
        process that died (killed, crashed): it is marked so, for ``status``.
        """

        def write(conn: Connection) -> int:
            conn.execute(
                update(runs)
                .where(runs.c.job == job, runs.c.outcome == "running")
                .values(outcome="died", error=DIED)
            )
            result = conn.execute(
                runs.insert().values(
                    job=job,
                    kind=kind,
                    holder=self.holder,
                    started_at=self._clock(),
                    outcome="running",
                    rows_read=0,
                    rows_sent=0,
                    rows_skipped=0,
                    rows_rejected=0,
                )
            )
            inserted = result.inserted_primary_key
            if inserted is None:  # pragma: no cover - both backends report the new id
                raise StateError("state store: a new run got no id")
            return int(inserted[0])

        return self._run(write, "starting a run")

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
        self._run(
            lambda conn: conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    ended_at=self._clock(),
                    outcome=outcome,
                    rows_read=read,
                    rows_sent=sent,
                    rows_skipped=skipped,
                    rows_rejected=rejected_count,
                    error=error,
                )
            ),
            "finishing a run",
        )

    def runs(self, job: str, limit: int = 5) -> list[RunRecord]:
        def read(conn: Connection) -> list[RunRecord]:
            query = select(runs).where(runs.c.job == job).order_by(runs.c.id.desc()).limit(limit)
            return [RunRecord(**r._mapping) for r in conn.execute(query)]

        return self._run(read, "reading the run history")

    # -- plumbing --------------------------------------------------------------

    def _upsert(
        self, conn: Connection, table: Table, values: list[dict[str, Any]], keys: list[str]
    ) -> None:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        statement = insert(table)
        updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
        conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), values)

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
