"""Run leases: one run of a job (or of a shard of one) at a time, across processes.

PostgreSQL: a session-level advisory lock, held on a connection of its own for as
long as the lease is. A process that dies (killed, crashed, host lost) loses its
connection and with it the lock, so there is nothing to clean up and no timeout to
wait out. The ``psync_leases`` row says who holds a lease, for ``status``; a row
counts only while its lock is held.

SQLite: a file serves one process at a time. :meth:`SqliteLeases.claim` takes an
``flock`` on ``<file>.lock``, which the kernel frees when the process ends; inside
the process, a set of the names running keeps two threads off the same job.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, delete, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from sync.errors import StateError
from sync.state.records import LeaseInfo
from sync.state.schema import leases

log = logging.getLogger(__name__)
T = TypeVar("T")

CLAIM_TRIES = 5  # a probe by ``status`` holds the lock file for an instant: try again
CLAIM_WAIT = 0.1

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
    """The right to run ``name`` until released; a context manager."""

    def __init__(
        self,
        name: str,
        holder: str,
        since: float,
        release: Callable[[], None],
        check: Callable[[], bool],
    ) -> None:
        self.name = name
        self.holder = holder
        self.since = since
        self._release = release
        self._check = check
        self._released = False
        self._guard = threading.Lock()

    def held(self) -> bool:
        """Whether it still holds: a PostgreSQL lease dies with its connection."""
        return not self._released and self._check()

    def release(self) -> None:
        """Give the lease up; harmless twice."""
        with self._guard:
            if self._released:
                return
            self._released = True
        self._release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.name!r}, holder={self.holder!r}, since={self.since!r})"


class Leases(ABC):
    """What both backends share: the rows for ``status``, and the leases held here."""

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

    def close(self) -> None:
        """Release every lease this store took."""
        with self._mine_lock:
            mine = list(self._mine.values())
        for lease in mine:
            lease.release()

    def _remember(self, lease: Lease) -> Lease:
        with self._mine_lock:
            self._mine[lease.name] = lease
        return lease

    def _forget(self, name: str) -> None:
        with self._mine_lock:
            self._mine.pop(name, None)

    def _write_row(self, name: str, since: float) -> None:
        def write(conn: Connection) -> None:
            conn.execute(delete(leases).where(leases.c.job == name))
            conn.execute(leases.insert().values(job=name, holder=self.holder, since=since))

        self._transaction(write, "taking a lease")

    def _drop_row(self, name: str) -> None:
        """Delete the row if it is still ours; a row left behind is ignored anyway."""
        try:
            self._transaction(
                lambda conn: conn.execute(
                    delete(leases).where(leases.c.job == name, leases.c.holder == self.holder)
                ),
                "releasing a lease",
            )
        except StateError as exc:
            log.warning(
                "a released lease's row was left behind", extra={"lease": name, "error": str(exc)}
            )

    def _rows(self) -> list[LeaseInfo]:
        return self._transaction(_read_rows, "reading the leases")


class PostgresLeases(Leases):
    """Advisory locks, one connection per lease held."""

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
        guard = threading.Lock()  # the lease's connection, used from any thread
        since = self._clock()
        try:
            self._write_row(name, since)
        except BaseException:
            self._unlock(conn, key, guard)
            raise

        def release() -> None:
            self._drop_row(name)
            self._unlock(conn, key, guard)
            self._forget(name)

        return self._remember(
            Lease(name, self.holder, since, release, lambda: self._holds(conn, key, guard))
        )

    def held(self) -> list[LeaseInfo]:
        def read(conn: Connection) -> list[LeaseInfo]:
            rows = _read_rows(conn)
            locked = {(r.hi, r.lo) for r in conn.execute(ADVISORY_LOCKS)}
            return [r for r in rows if key_halves(lease_key(r.name)) in locked]

        return self._transaction(read, "reading the leases")

    def _connect(self) -> Connection:
        """A connection of the lease's own, in autocommit: never idle in a transaction."""
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            raise self._failed(exc) from exc
        try:
            conn.execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            conn.close()
            raise self._failed(exc) from exc
        return conn

    def _unlock(self, conn: Connection, key: int, guard: threading.Lock) -> None:
        """Unlock and close; a connection that cannot unlock is discarded, which does."""
        with guard:
            try:
                if not conn.execute(select(func.pg_advisory_unlock(key))).scalar():
                    conn.invalidate()
            except SQLAlchemyError:
                conn.invalidate()
            finally:
                conn.close()

    def _holds(self, conn: Connection, key: int, guard: threading.Lock) -> bool:
        hi, lo = key_halves(key)
        with guard:
            try:
                return bool(conn.execute(MY_ADVISORY_LOCK, {"hi": hi, "lo": lo}).scalar())
            except SQLAlchemyError:
                return False

    def _failed(self, exc: SQLAlchemyError) -> StateError:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return StateError(f"state store {self._where}: failed while taking a lease: {detail}")


@dataclass
class _Claim:
    """This process's hold on one SQLite file: its lock file, and the names running."""

    fd: int | None  # None: an in-memory database, which no other process can open
    users: int = 0
    names: set[str] = field(default_factory=set)


# Every store of this process on one file shares its claim (flock locks are per
# open file, so a second open in the same process would refuse itself).
_claims: dict[Path, _Claim] = {}
_claims_lock = threading.Lock()


class SqliteLeases(Leases):
    """One process per file (an flock), one run per name within it."""

    def __init__(
        self,
        database: str | None,
        holder: str,
        clock: Callable[[], float],
        transaction: Transaction,
        where: str,
        sleep: Callable[[float], None],
    ) -> None:
        super().__init__(holder, clock, transaction, where)
        self._sleep = sleep
        self.lock_path = (
            Path(f"{Path(database).resolve()}.lock")
            if database and database != ":memory:"
            else None
        )
        self._claim: _Claim | None = None

    def claim(self) -> None:
        """Take the file for this process, or raise StateError naming the one that has it.

        The first claim in a process also clears lease rows left by processes that
        died: with the file ours, no other process can be running anything.
        """
        with _claims_lock:
            if self._claim is not None:
                return
            if self.lock_path is None:
                self._claim = _Claim(fd=None, users=1)
                return
            claim = _claims.get(self.lock_path)
            if claim is None:
                claim = _Claim(fd=self._lock())
                try:
                    self._transaction(self._clear_rows, "clearing stale leases")
                except BaseException:
                    _unlock_file(claim)
                    raise
                _claims[self.lock_path] = claim
            claim.users += 1
            self._claim = claim

    def take(self, name: str) -> Lease | None:
        self.claim()
        claim = self._claim
        assert claim is not None  # claim() set it or raised
        with _claims_lock:
            if name in claim.names:
                return None
            claim.names.add(name)
        since = self._clock()
        try:
            self._write_row(name, since)
        except BaseException:
            with _claims_lock:
                claim.names.discard(name)
            raise

        def release() -> None:
            self._drop_row(name)
            with _claims_lock:
                claim.names.discard(name)
            self._forget(name)

        def check() -> bool:
            with _claims_lock:
                return name in claim.names

        return self._remember(Lease(name, self.holder, since, release, check))

    def held(self) -> list[LeaseInfo]:
        with _claims_lock:
            claim = self._claim or (_claims.get(self.lock_path) if self.lock_path else None)
            running = set(claim.names) if claim is not None else None
        if running is not None:
            return [r for r in self._rows() if r.name in running]
        owner = self._other_owner()
        if owner is None:
            return []
        return [r for r in self._rows() if r.holder == owner.get("holder")]

    def close(self) -> None:
        super().close()
        with _claims_lock:
            claim, self._claim = self._claim, None
            if claim is None:
                return
            claim.users -= 1
            if claim.users == 0 and self.lock_path is not None:
                _claims.pop(self.lock_path, None)
                _unlock_file(claim)

    def _lock(self) -> int:
        """The lock file, opened and flocked, with who we are written in it."""
        path = self.lock_path
        assert path is not None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(
                f"state store {self._where}: cannot open its lock file {path}: "
                f"{exc.strerror or exc}"
            ) from exc
        for attempt in range(1, CLAIM_TRIES + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == CLAIM_TRIES:
                    other = _owner(fd)
                    os.close(fd)
                    raise StateError(
                        f"state store {self._where}: another process holds {path} "
                        f"({_describe(other)}): a SQLite state store serves one process at "
                        f"a time: stop the other one (e.g. the daemon) first, or use a "
                        f"PostgreSQL state store (state.url: postgresql+psycopg://...) to run "
                        f"several replicas"
                    ) from None
                self._sleep(CLAIM_WAIT)
            except OSError as exc:
                os.close(fd)
                raise StateError(
                    f"state store {self._where}: cannot lock {path}: {exc.strerror or exc}"
                ) from exc
        owner = {
            "holder": self.holder,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": self._clock(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        return fd

    def _other_owner(self) -> dict[str, Any] | None:
        """Who holds the file now, when another process does; None when nobody does."""
        if self.lock_path is None:
            return None
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(
                f"state store {self._where}: cannot read its lock file {self.lock_path}: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _owner(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @staticmethod
    def _clear_rows(conn: Connection) -> None:
        if inspect(conn).has_table(leases.name):
            conn.execute(delete(leases))


def _read_rows(conn: Connection) -> list[LeaseInfo]:
    """Every psync_leases row, stale ones included: the callers sort them out."""
    query = select(leases).order_by(leases.c.job)
    return [LeaseInfo(r.job, r.holder, r.since) for r in conn.execute(query)]


def _unlock_file(claim: _Claim) -> None:
    if claim.fd is not None:
        fcntl.flock(claim.fd, fcntl.LOCK_UN)
        os.close(claim.fd)
        claim.fd = None


def _owner(fd: int) -> dict[str, Any]:
    """What the process holding a lock file wrote in it ({} if it has not yet)."""
    try:
        found = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "one that has not yet said who it is"
    who = f"pid {owner.get('pid')} on {owner.get('host')}"
    since = owner.get("since")
    if isinstance(since, int | float):
        who += f", since {datetime.fromtimestamp(since, UTC).isoformat(timespec='seconds')}"
    return who


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
    return SqliteLeases(engine.url.database, holder, clock, transaction, where, sleep)
