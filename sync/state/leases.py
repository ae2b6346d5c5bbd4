"""Run leases: one run of a job (or of a shard of one) at a time, across processes.

PostgreSQL: a session-level advisory lock, held on a connection of its own for as
long as the lease is. A process that dies loses its connection and with it the lock:
nothing to clean up, no timeout to wait out. A heartbeat renews each lease every
RENEW_S on its connection (which keeps that from idling out) and sets ``lost`` on
one whose connection or lock is gone. SQLite: ``sync.state.sqlite_leases``.

The ``psync_leases`` row says who holds a lease, for ``status`` (on PostgreSQL it
counts only while its lock is held). Every take bumps its ``generation`` in the
transaction that writes it, and every write of the run checks it first
(:meth:`Lease.fence`): a run whose lease another process took over writes nothing
more. A released lease empties its row (holder "") but keeps the generation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Float, extract, func, literal, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ColumnElement

from sync.errors import LeaseLost, StateError
from sync.state.records import LeaseInfo
from sync.state.schema import leases

if TYPE_CHECKING:
    from sync.state.sqlite_leases import SqliteLeases as SqliteLeases

log = logging.getLogger(__name__)
T = TypeVar("T")

RENEW_S = 1.0  # the heartbeat's period (PostgreSQL)
RENEW_LOCK_WAIT = "1s"  # a renewal waits this long behind a write holding the row, then skips
RELEASED = ""  # the holder in a released lease's row
# TCP on a lease's connection: probe it when idle, fail it when data goes unacknowledged
KEEPALIVE = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3, "TCP_USER_TIMEOUT": 10_000}

# Advisory locks of this database, as pg_locks shows a bigint key: its high and low halves.
ADVISORY_LOCKS = text(
    "SELECT classid::bigint AS hi, objid::bigint AS lo FROM pg_locks"
    " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
MY_ADVISORY_LOCK = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND objsubid = 1 AND pid = pg_backend_pid()"
    " AND classid::bigint = :hi AND objid::bigint = :lo)"
)


class Transaction(Protocol):
    """The store's way to run work in one transaction, its errors made StateErrors."""

    def __call__(self, work: Callable[[Connection], T], doing: str) -> T: ...


def lease_key(name: str) -> int:
    """The advisory-lock key of a lease: the same in every process and every release."""
    digest = hashlib.blake2b(f"personyze-sync:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def key_halves(key: int) -> tuple[int, int]:
    """A bigint key as pg_locks shows it: (classid, objid), its high and low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class Lease:
    """The right to run ``name`` until released; a context manager.

    ``generation``: this take's. ``takeover_of``: when the previous holder never
    released the lease, the store-clock time it last renewed it (its requests may still
    be in flight); else None. ``lost`` is set once the lease is found lost.
    """

    def __init__(
        self,
        owner: Leases,
        name: str,
        since: float,
        generation: int,
        takeover_of: float | None,
        conn: Connection | None = None,
    ) -> None:
        self.name, self.holder, self.since = name, owner.holder, since
        self.generation, self.takeover_of = generation, takeover_of
        self.lost = threading.Event()
        self.conn = conn  # PostgreSQL: the connection holding the lock ...
        self.using = threading.Lock()  # ... used from any thread, one at a time
        self._owner = owner
        self._released = False
        self._guard = threading.Lock()

    def held(self) -> bool:
        """Whether it still holds: a PostgreSQL lease dies with its connection."""
        if self._released or self.lost.is_set():
            return False
        if self._owner._check(self):
            return True
        self._lose("its lock is no longer held")
        return False

    def fence(self, conn: Connection) -> None:
        """Raise LeaseLost unless this take still holds the row: call it first in each
        write transaction of the run. It locks the row, so it serialises with a take."""
        if not self.lost.is_set():
            found = conn.execute(
                update(leases)
                .where(*_this(self.name, self.generation, self.holder))
                .values(generation=leases.c.generation)
            ).rowcount
            if found == 1:
                return
            self._lose("another process took it over")
        raise LeaseLost(
            f"state store {self._owner._where}: the lease of {self.name} was lost (its "
            f"connection dropped, or another process took it over): this run writes nothing "
            f"more; the process that holds it now goes on"
        )

    def store_now(self) -> float:
        """The store's clock, the one ``takeover_of`` is on."""
        return self._owner.store_now()

    def release(self) -> None:
        """Give the lease up; harmless twice."""
        with self._guard:
            if self._released:
                return
            self._released = True
        self._owner._release(self)

    def _lose(self, error: str) -> None:
        """Mark it lost, saying so once (a released lease is not lost, only gone)."""
        with self._guard:
            if self._released or self.lost.is_set():
                return
            self.lost.set()
        log.warning("lease lost", extra={"lease": self.name, "error": error})

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.name!r}, holder={self.holder!r}, generation={self.generation})"


class Leases(ABC):
    """What both backends share: the rows, and the leases held here."""

    def __init__(
        self, holder: str, clock: Callable[[], float], transaction: Transaction, where: str
    ) -> None:
        self.holder = holder
        self._clock = clock
        self._transaction = transaction
        self._where = where
        self._mine: dict[str, Lease] = {}
        self._mine_lock = threading.Lock()

    @abstractmethod
    def claim(self) -> None:
        """Make sure this process may run jobs on the store."""

    @abstractmethod
    def take(self, name: str) -> Lease | None:
        """The lease of ``name``, or None when another holder has it; never waits."""

    @abstractmethod
    def held(self) -> list[LeaseInfo]:
        """The leases held right now, by any process; stale rows left out."""

    @abstractmethod
    def _check(self, lease: Lease) -> bool: ...

    @abstractmethod
    def _release(self, lease: Lease) -> None: ...

    def store_now(self) -> float:
        """The store's clock (SQLite: the injected one)."""
        return self._clock()

    def close(self) -> None:
        """Release every lease this store took."""
        with self._mine_lock:
            mine = list(self._mine.values())
        for lease in mine:
            lease.release()

    def _now_sql(self) -> ColumnElement[Any]:
        return literal(self._clock(), Float)

    def _remember(self, lease: Lease) -> Lease:
        with self._mine_lock:
            self._mine[lease.name] = lease
        return lease

    def _forget(self, lease: Lease) -> None:
        with self._mine_lock:
            if self._mine.get(lease.name) is lease:
                del self._mine[lease.name]

    def _write_row(self, name: str, since: float) -> tuple[int, float | None]:
        """A take's row, in one transaction: (its generation, its ``takeover_of``)."""

        def write(conn: Connection) -> tuple[int, float | None]:
            row = leases.c.job == name
            # A write first: it locks the row (and on SQLite begins the transaction).
            conn.execute(update(leases).where(row).values(generation=leases.c.generation))
            previous = conn.execute(select(leases).where(row)).first()
            values = {"holder": self.holder, "since": since, "renewed_at": self._now_sql()}
            if previous is None:
                conn.execute(leases.insert().values(job=name, generation=1, **values))
                return 1, None
            generation = (previous.generation or 0) + 1
            conn.execute(update(leases).where(row).values(generation=generation, **values))
            if previous.holder == RELEASED:
                return generation, None
            if previous.renewed_at is None:  # a row older than renewals: as if renewed now
                return generation, float(conn.execute(select(self._now_sql())).scalar_one())
            return generation, float(previous.renewed_at)

        return self._transaction(write, "taking a lease")

    def _drop_row(self, lease: Lease) -> None:
        """Empty the row if it is still this take's; a row left behind is ignored anyway."""
        try:
            self._transaction(
                lambda conn: conn.execute(
                    update(leases)
                    .where(*_this(lease.name, lease.generation, self.holder))
                    .values(holder=RELEASED, renewed_at=None)
                ),
                "releasing a lease",
            )
        except StateError as exc:
            log.warning(
                "a released lease's row was left behind",
                extra={"lease": lease.name, "error": str(exc)},
            )

    def _rows(self) -> list[LeaseInfo]:
        return self._transaction(_read_rows, "reading the leases")


class PostgresLeases(Leases):
    """Advisory locks, one connection per lease held, renewed by a heartbeat."""

    def __init__(
        self,
        engine: Engine,
        holder: str,
        clock: Callable[[], float],
        transaction: Transaction,
        where: str,
    ) -> None:
        super().__init__(holder, clock, transaction, where)
        self._engine = engine
        self._beating: threading.Event | None = None  # the heartbeat's; set: stop

    def claim(self) -> None:
        """Nothing to claim: replicas share the store, and leases divide the jobs."""

    def take(self, name: str) -> Lease | None:
        key = lease_key(name)
        conn = self._connect()
        try:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())
        except SQLAlchemyError as exc:
            conn.invalidate()
            conn.close()
            raise self._failed(exc) from exc
        if not got:
            conn.close()
            return None
        since = self._clock()
        try:
            generation, takeover_of = self._write_row(name, since)
        except BaseException:
            _unlock(conn, key)
            raise
        lease = self._remember(Lease(self, name, since, generation, takeover_of, conn))
        self._beat()
        return lease

    def held(self) -> list[LeaseInfo]:
        def read(conn: Connection) -> list[LeaseInfo]:
            rows = _read_rows(conn)
            locked = {(r.hi, r.lo) for r in conn.execute(ADVISORY_LOCKS)}
            return [r for r in rows if key_halves(lease_key(r.name)) in locked]

        return self._transaction(read, "reading the leases")

    def store_now(self) -> float:
        return self._transaction(
            lambda conn: float(conn.execute(select(self._now_sql())).scalar_one()),
            "reading the store's clock",
        )

    def close(self) -> None:
        with self._mine_lock:
            stop, self._beating = self._beating, None
        if stop is not None:
            stop.set()
        super().close()

    def _now_sql(self) -> ColumnElement[Any]:
        return extract("epoch", func.clock_timestamp())

    def _check(self, lease: Lease) -> bool:
        assert lease.conn is not None
        hi, lo = key_halves(lease_key(lease.name))
        with lease.using:
            try:
                return bool(lease.conn.execute(MY_ADVISORY_LOCK, {"hi": hi, "lo": lo}).scalar())
            except SQLAlchemyError:
                return False

    def _release(self, lease: Lease) -> None:
        assert lease.conn is not None
        self._drop_row(lease)
        with lease.using:
            _unlock(lease.conn, lease_key(lease.name))
        self._forget(lease)

    # -- the heartbeat -------------------------------------------------------------

    def _beat(self) -> None:
        """Start the heartbeat unless it runs; it ends when no lease is held."""
        with self._mine_lock:
            if self._beating is not None:
                return
            stop = self._beating = threading.Event()
        threading.Thread(
            target=self._heartbeat, args=(stop,), name=f"lease heartbeat {self.holder}", daemon=True
        ).start()

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(RENEW_S):
            with self._mine_lock:
                live = [lease for lease in self._mine.values() if not lease.lost.is_set()]
                if not live:
                    if self._beating is stop:
                        self._beating = None
                    return
            for lease in live:
                if stop.is_set():
                    return
                error = self._renew(lease)
                if error is not None:
                    lease._lose(error)

    def _renew(self, lease: Lease) -> str | None:
        """Renew on the lease's own connection: None, or why the lease is lost."""
        conn = lease.conn
        assert conn is not None
        hi, lo = key_halves(lease_key(lease.name))
        renewal = (
            update(leases)
            .where(*_this(lease.name, lease.generation, self.holder))
            .values(renewed_at=self._now_sql())
        )
        with lease.using:
            if conn.closed:
                return None  # released meanwhile
            try:
                renewed = conn.execute(renewal).rowcount
                mine = bool(conn.execute(MY_ADVISORY_LOCK, {"hi": hi, "lo": lo}).scalar())
            except SQLAlchemyError as exc:
                if getattr(getattr(exc, "orig", None), "sqlstate", None) == "55P03":
                    return None  # a write of the run holds the row: renew next time
                return str(self._failed(exc, "renewing a lease"))
        if renewed != 1:
            return f"state store {self._where}: another process took {lease.name} over"
        return None if mine else f"state store {self._where}: the lock of {lease.name} is gone"

    def _connect(self) -> Connection:
        """A connection of the lease's own, out of the pool, in autocommit (never idle in
        a transaction), that waits at most RENEW_LOCK_WAIT for a row."""
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            raise self._failed(exc) from exc
        try:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.detach()  # its settings stay its own; closing it closes it
            conn.execute(text(f"SET lock_timeout = '{RENEW_LOCK_WAIT}'"))
        except SQLAlchemyError as exc:
            conn.invalidate()
            conn.close()
            raise self._failed(exc) from exc
        _keep_alive(conn)
        return conn

    def _failed(self, exc: SQLAlchemyError, doing: str = "taking a lease") -> StateError:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return StateError(f"state store {self._where}: failed while {doing}: {detail}")


def _this(name: str, generation: int, holder: str) -> list[ColumnElement[bool]]:
    """The row of one take of a lease."""
    return [leases.c.job == name, leases.c.generation == generation, leases.c.holder == holder]


def _unlock(conn: Connection, key: int) -> None:
    """Unlock and close; a connection that cannot unlock is discarded, which does."""
    try:
        if not conn.execute(select(func.pg_advisory_unlock(key))).scalar():
            conn.invalidate()
    except SQLAlchemyError:
        conn.invalidate()
    finally:
        conn.close()


def _keep_alive(conn: Connection) -> None:
    """TCP keepalives and a user timeout on a lease's connection, where the OS has them:
    a peer gone without a word fails the heartbeat in seconds, not minutes."""
    try:
        fd = conn.connection.dbapi_connection.pgconn.socket  # type: ignore[union-attr]
        sock = socket.socket(fileno=os.dup(fd))
    except (AttributeError, OSError, SQLAlchemyError):
        return
    with sock:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in KEEPALIVE.items():
                    if hasattr(socket, option):
                        sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            except OSError:
                pass


def _read_rows(conn: Connection) -> list[LeaseInfo]:
    """Every psync_leases row but released ones, stale ones included: callers sort them."""
    query = select(leases).where(leases.c.holder != RELEASED).order_by(leases.c.job)
    return [LeaseInfo(r.job, r.holder, r.since) for r in conn.execute(query)]


def leases_for(
    engine: Engine,
    holder: str,
    clock: Callable[[], float],
    transaction: Transaction,
    where: str,
    sleep: Callable[[float], None],
) -> Leases:
    """The lease backend of this store's database."""
    if engine.dialect.name == "postgresql":
        return PostgresLeases(engine, holder, clock, transaction, where)
    from sync.state.sqlite_leases import SqliteLeases  # it builds on this module

    return SqliteLeases(engine.url.database, holder, clock, transaction, where, sleep)


def __getattr__(name: str) -> Any:
    """``SqliteLeases`` is importable from here too (its module imports this one)."""
    if name == "SqliteLeases":
        from sync.state.sqlite_leases import SqliteLeases

        return SqliteLeases
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
