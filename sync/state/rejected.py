"""Rejected rows (what Personyze refused, with why and how often) and identity collisions.

:func:`record_rejection` is shared with a batch's commit, which records the batch's
rejections in its one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection, select, update

from sync.state.fencing import Fence, Transact
from sync.state.records import Collision, RejectedRow, StoredRejection
from sync.state.schema import collisions, rejected
from sync.state.sql import delete_keys, in_chunks


def record_rejection(conn: Connection, job: str, r: RejectedRow, now: float) -> None:
    """A new rejection, or one more attempt of a row already rejected."""
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


def read_rejected_fingerprints(
    conn: Connection, job: str, keys: Sequence[str]
) -> dict[str, str | None]:
    """The fingerprint each of these rows was rejected with, for those rejected."""
    found = {}
    for chunk in in_chunks(keys):
        query = select(rejected.c.row_key, rejected.c.fingerprint).where(
            rejected.c.job == job, rejected.c.row_key.in_(chunk)
        )
        found.update({r.row_key: r.fingerprint for r in conn.execute(query)})
    return found


class Rejections:
    """Reads and drops of rejected rows and collisions, each one transaction of ``run``."""

    def __init__(self, run: Transact) -> None:
        self._run = run

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
                lambda conn: delete_keys(conn, rejected, job, keys),
                "dropping rejections",
                fence,
            )

    def collisions(self, job: str) -> list[Collision]:
        def read(conn: Connection) -> list[Collision]:
            query = select(collisions).where(collisions.c.job == job).order_by(collisions.c.row_key)
            return [
                Collision(r.row_key, r.user_id, r.other_key, r.seen_at) for r in conn.execute(query)
            ]

        return self._run(read, "reading identity collisions")
