"""What one batch's commit writes: acks, rejections, collisions, deletes, vanished rows and
the checkpoint, all in the caller's one transaction (``StateStore.commit_batch``), so a
checkpoint is never stored without the acknowledgements behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from sync.extract.query import Position
from sync.state.identities import forget
from sync.state.records import BatchOutcome
from sync.state.rejected import record_rejection
from sync.state.schema import (
    checkpoints,
    collisions,
    encode_value,
    pending,
    rejected,
    rows,
    vanished,
)
from sync.state.sql import delete_keys, upsert


def checkpoint_values(job: str, position: Position, now: float) -> dict[str, Any]:
    """A checkpoint's row: the position's cursor and key as stored, typed."""
    cursor_type, cursor_value = encode_value(position.cursor)
    key_type, key_value = encode_value(position.key)
    return {
        "job": job,
        "cursor_type": cursor_type,
        "cursor_value": cursor_value,
        "key_type": key_type,
        "key_value": key_value,
        "updated_at": now,
    }


def write_outcome(
    conn: Connection, job: str, outcome: BatchOutcome, now: float, clock: Callable[[], float]
) -> None:
    """``now``: the time of the rows written; ``clock``: read again for the checkpoint."""
    acked = [a.key for a in outcome.acks]
    if outcome.acks:
        upsert(
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
            delete_keys(conn, table, job, acked)
    for r in outcome.rejected:
        record_rejection(conn, job, r, now)
    if outcome.unsent:
        delete_keys(conn, pending, job, outcome.unsent)
    if outcome.collisions:
        upsert(
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
        forget(conn, job, outcome.deleted)
    if outcome.vanished:
        forget(conn, job, [k for k, _ in outcome.vanished])
        upsert(
            conn,
            vanished,
            [{"job": job, "row_key": k, "user_id": u, "deleted_at": now}
             for k, u in outcome.vanished],
            ["job", "row_key"],
        )  # fmt: skip
    if outcome.checkpoint is not None:
        upsert(conn, checkpoints, [checkpoint_values(job, outcome.checkpoint, clock())], ["job"])
