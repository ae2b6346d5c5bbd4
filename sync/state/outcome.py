"""What one batch's commit writes: acks, rejections, collisions, deletes, vanished rows and
the checkpoint, all in the caller's one transaction (``PartState.commit``), so a
checkpoint is never stored without the acknowledgements behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, delete, select

from sync.model import Position
from sync.state.identities import forget
from sync.state.records import Ack, BatchOutcome, Collision
from sync.state.rejected import record_rejection
from sync.state.schema import (
    checkpoints,
    collisions,
    decode_value,
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


def read_checkpoint(conn: Connection, job: str) -> Position | None:
    row = conn.execute(select(checkpoints).where(checkpoints.c.job == job)).first()
    if row is None:
        return None
    return Position(
        cursor=decode_value(row.cursor_type, row.cursor_value),
        key=decode_value(row.key_type, row.key_value),
    )


def replace_checkpoint(conn: Connection, job: str, position: Position | None, now: float) -> None:
    """Move a checkpoint deliberately; None forgets it."""
    conn.execute(delete(checkpoints).where(checkpoints.c.job == job))
    if position is not None:
        conn.execute(checkpoints.insert().values(checkpoint_values(job, position, now)))


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


def find_collisions(acks: Sequence[Ack], holders: dict[int, list[str]]) -> list[Collision]:
    """Acks whose user_id another row already holds (``holders``: user_id -> row keys
    before this batch, or an earlier ack of the same batch): two rows, one Personyze user."""
    seen: dict[int, str] = {}
    found = []
    for ack in acks:
        others = [k for k in holders.get(ack.user_id, []) if k != ack.key]
        other = others[0] if others else seen.get(ack.user_id)
        if other is not None and other != ack.key:
            found.append(Collision(ack.key, ack.user_id, other))
        seen.setdefault(ack.user_id, ack.key)
    return found
