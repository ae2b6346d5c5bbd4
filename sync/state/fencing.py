"""The two types every module of the state store takes: a run's lease, and a transaction.

Their own module so that the table modules (identities, marks, rejected, shards, history)
can take them without importing ``sync.state.store``, which imports them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy import Connection

T = TypeVar("T")


class Fence(Protocol):
    """A run's lease: ``fence(conn)`` raises LeaseLost unless the run still holds it;
    ``lost`` is set once it is known lost; ``takeover_of`` is the store-clock time the
    previous holder last renewed it, when that holder never released it."""

    lost: threading.Event
    takeover_of: float | None

    def fence(self, conn: Connection) -> None: ...

    def store_now(self) -> float: ...


class Transact(Protocol):
    """The store's ``_run``: ``work`` in one transaction (fenced by ``fence`` if given),
    waited for across a brief outage, its database errors raised as StateError."""

    def __call__(
        self, work: Callable[[Connection], T], doing: str, fence: Fence | None = None
    ) -> T: ...
