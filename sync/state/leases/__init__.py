"""Run leases: one run of a job (or of a shard of one) at a time, across processes.

PostgreSQL (``postgres``): a session-level advisory lock, held on a connection of its
own for as long as the lease is. A process that dies loses its connection and with it
the lock: nothing to clean up, no timeout to wait out. A heartbeat renews each lease
every RENEW_S on its connection (which keeps that from idling out) and sets ``lost`` on
one whose connection or lock is gone. SQLite: ``sync.state.leases.sqlite``.

The ``psync_leases`` row says who holds a lease, for ``status`` (on PostgreSQL it
counts only while its lock is held). Every take bumps its ``generation`` in the
transaction that writes it, and every write of the run checks it first
(:meth:`Lease.fence`): a run whose lease another process took over writes nothing
more. A released lease empties its row (holder "") but keeps the generation. What both
backends share is in ``interface``.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from sync.state.leases.interface import RELEASED, Lease, Leases, Transaction
from sync.state.leases.postgres import (
    ADVISORY_LOCKS,
    KEEPALIVE,
    MY_ADVISORY_LOCK,
    RENEW_LOCK_WAIT,
    RENEW_S,
    PostgresLeases,
    key_halves,
    lease_key,
)
from sync.state.leases.sqlite import SqliteLeases

__all__ = [
    "ADVISORY_LOCKS",
    "KEEPALIVE",
    "MY_ADVISORY_LOCK",
    "RELEASED",
    "RENEW_LOCK_WAIT",
    "RENEW_S",
    "Lease",
    "Leases",
    "PostgresLeases",
    "SqliteLeases",
    "Transaction",
    "key_halves",
    "lease_key",
    "leases_for",
]


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
