"""PostgreSQL leases: a session-level advisory lock, held on a connection of its own for
as long as the lease is.

A process that dies loses its connection and with it the lock: nothing to clean up, no
timeout to wait out. A heartbeat renews each lease every RENEW_S on its connection
(which keeps that from idling out) and sets ``lost`` on one whose connection or lock is
gone.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, extract, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import ColumnElement

from sync.errors import StateError
from sync.state.leases.interface import Lease, Leases, Transaction, read_rows, this_take
from sync.state.records import LeaseInfo
from sync.state.schema import leases

RENEW_S = 1.0  # the heartbeat's period (PostgreSQL)
RENEW_LOCK_WAIT = "1s"  # a renewal waits this long behind a write holding the row, then skips
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


def lease_key(name: str) -> int:
    """The advisory-lock key of a lease: the same in every process and every release."""
    digest = hashlib.blake2b(f"personyze-sync:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def key_halves(key: int) -> tuple[int, int]:
    """A bigint key as pg_locks shows it: (classid, objid), its high and low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


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
            rows = read_rows(conn)
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
            .where(*this_take(lease.name, lease.generation, self.holder))
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
