"""The processes that send to Personyze on this store now: the rate budget's census.

One ``psync_senders`` row per sending process (its holder name, as in leases and runs):
renewed by each of its beats while it sends, deleted when it stops. A row not renewed
for :data:`LIVE_S` (its process was killed) no longer counts, and is deleted after
:data:`STALE_S`. A row also keeps the account's rate after the last cut its process
made after 429s, and when. Times are the store's clock (PostgreSQL's, so replicas on
several hosts agree; SQLite: the injected one). :mod:`sync.load.budget` uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Float, delete, extract, func, insert, literal, select, update
from sqlalchemy.sql import ColumnElement

from sync.state.leases import Transaction
from sync.state.schema import senders

LIVE_S = 3.0  # a sender whose row is older than this is gone (it beats every 0.5 s)
STALE_S = 60.0  # ... and its row is deleted after this
# pg_advisory_xact_lock key of the beats: "psync-se" as a big-endian integer. Beats take
# turns, so of two processes starting at once the second sees the first.
BEATS_LOCK = 0x7073796E632D7365


@dataclass(frozen=True)
class Census:
    """The other senders as the store has them: how many, and the newest cut of theirs."""

    others: int
    cut_rate: float | None = None
    cut_at: float | None = None
    cut_age_s: float = 0.0


class Senders:
    """This process's row among the senders; ``run`` transacts, ``clock`` is SQLite's."""

    def __init__(self, run: Transaction, holder: str, clock: Callable[[], float]) -> None:
        self._run = run
        self.holder = holder
        self._clock = clock

    def beat(self, sending: bool, cut: float | None) -> Census:
        """Renew this process's row (``sending``) or delete it; keep ``cut``, the account's
        rate after a cut it just made; the others as they stand, in the same transaction."""

        def work(conn: Connection) -> Census:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(BEATS_LOCK)))
            now = float(conn.execute(select(self._now_sql(conn))).scalar_one())
            mine = senders.c.holder == self.holder
            if sending:
                values: dict[str, Any] = {"seen_at": now}
                if cut is not None:
                    values.update(cut_rate=cut, cut_at=now)
                if not conn.execute(update(senders).where(mine).values(values)).rowcount:
                    conn.execute(insert(senders).values(holder=self.holder, **values))
            else:
                conn.execute(delete(senders).where(mine))
            conn.execute(delete(senders).where(senders.c.seen_at < now - STALE_S))
            others = conn.execute(select(senders).where(senders.c.holder != self.holder)).all()
            live = [r for r in others if r.seen_at >= now - LIVE_S]
            cuts = [r for r in others if r.cut_at is not None and r.cut_rate is not None]
            if not cuts:
                return Census(len(live))
            newest = max(cuts, key=lambda r: float(r.cut_at))
            at = float(newest.cut_at)
            return Census(len(live), float(newest.cut_rate), at, now - at)

        return self._run(work, "counting the senders")

    def leave(self) -> None:
        self._run(
            lambda conn: conn.execute(delete(senders).where(senders.c.holder == self.holder)),
            "leaving the senders",
        )

    def _now_sql(self, conn: Connection) -> ColumnElement[Any]:
        if conn.dialect.name == "postgresql":
            return extract("epoch", func.clock_timestamp())
        return literal(self._clock(), Float)
