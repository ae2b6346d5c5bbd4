"""What both lease backends share: a take of a lease, the base class, the rows.

Its own module so that ``postgres`` and ``sqlite`` build on it without importing each
other, or the package that picks between them.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Float, literal, select, update
from sqlalchemy.sql import ColumnElement

from sync.errors import LeaseLost, StateError
from sync.state.records import LeaseInfo
from sync.state.schema import leases

log = logging.getLogger("sync.state.leases")  # the package's name, as before the split
T = TypeVar("T")

RELEASED = ""  # the holder in a released lease's row


class Transaction(Protocol):
    """The store's way to run work in one transaction, its errors made StateErrors."""

    def __call__(self, work: Callable[[Connection], T], doing: str) -> T: ...


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
                .where(*this_take(self.name, self.generation, self.holder))
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
                    .where(*this_take(lease.name, lease.generation, self.holder))
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
        return self._transaction(read_rows, "reading the leases")


def this_take(name: str, generation: int, holder: str) -> list[ColumnElement[bool]]:
    """The row of one take of a lease."""
    return [leases.c.job == name, leases.c.generation == generation, leases.c.holder == holder]


def read_rows(conn: Connection) -> list[LeaseInfo]:
    """Every psync_leases row but released ones, stale ones included: callers sort them."""
    query = select(leases).where(leases.c.holder != RELEASED).order_by(leases.c.job)
    return [LeaseInfo(r.job, r.holder, r.since) for r in conn.execute(query)]
