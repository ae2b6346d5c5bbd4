"""Rows sent without an answer (marks), what reconciliation found for them, and the
rows a mirror run deleted as vanished: what ``sync.load.reconcile`` reads and settles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, select

from sync.model import PendingRow
from sync.state.fencing import Fence, Transact
from sync.state.identities import key_page
from sync.state.records import Mark
from sync.state.schema import duplicates as duplicates_table
from sync.state.schema import pending, rows, vanished
from sync.state.sql import delete_keys, upsert


class Marks:
    """Marks, adoptions of reconciled users, duplicates, vanished rows; one transaction each."""

    def __init__(self, run: Transact, clock: Callable[[], float]) -> None:
        self._run = run
        self._clock = clock

    def add_pending(self, job: str, marks: Sequence[Mark], fence: Fence | None = None) -> None:
        """Mark first sends before sending them (see :mod:`sync.load.reconcile`)."""
        if not marks:
            return
        now = self._clock()
        values = [
            {
                "job": job,
                "row_key": m.key,
                "internal_id": str(m.payload.get("internal_id", "")),
                "sent_at": now,
                "payload": json.dumps(m.payload, default=str, sort_keys=True),
                "fingerprint": m.fingerprint,
                "watermark": m.watermark,
            }
            for m in marks
        ]
        self._run(
            lambda conn: upsert(conn, pending, values, ["job", "row_key"]),
            "marking rows as sent",
            fence,
        )

    def pending(self, job: str) -> list[PendingRow]:
        def read(conn: Connection) -> list[PendingRow]:
            query = select(pending).where(pending.c.job == job).order_by(pending.c.sent_at)
            return [
                PendingRow(
                    r.row_key,
                    json.loads(r.payload) if r.payload else {"internal_id": r.internal_id},
                    r.fingerprint,
                    r.watermark,
                    r.sent_at,
                )
                for r in conn.execute(query)
            ]

        return self._run(read, "reading rows sent without an answer")

    def adopt(
        self,
        job: str,
        found: dict[str, tuple[int, str]],
        duplicates: Sequence[tuple[str, int, int]] = (),
        fence: Fence | None = None,
    ) -> None:
        """Record users found by reconciliation (key -> user_id, fingerprint sent) and
        the duplicates seen beside them; their marks are done."""

        def write(conn: Connection) -> None:
            now = self._clock()
            values = [
                {"job": job, "row_key": k, "user_id": u, "fingerprint": f, "sent_at": now}
                for k, (u, f) in found.items()
            ]
            if values:
                upsert(conn, rows, values, ["job", "row_key"])
                delete_keys(conn, pending, job, found)
            if duplicates:
                upsert(
                    conn,
                    duplicates_table,
                    [
                        {"job": job, "row_key": k, "user_id": u, "kept_user_id": kept,
                         "seen_at": now}
                        for k, u, kept in duplicates
                    ],
                    ["job", "row_key", "user_id"],
                )  # fmt: skip

        self._run(write, "adopting reconciled users", fence)

    def duplicates(self, job: str) -> list[tuple[str, int, int]]:
        """Rows whose identifiers Personyze holds in two users: (key, user_id, kept)."""

        def read(conn: Connection) -> list[tuple[str, int, int]]:
            t = duplicates_table
            query = select(t).where(t.c.job == job).order_by(t.c.row_key, t.c.user_id)
            return [(r.row_key, r.user_id, r.kept_user_id) for r in conn.execute(query)]

        return self._run(read, "reading duplicate users")

    def clear_pending(self, job: str, keys: Sequence[str], fence: Fence | None = None) -> None:
        if keys:
            self._run(lambda conn: delete_keys(conn, pending, job, keys), "clearing marks", fence)

    def vanished_keys(self, job: str, after: str | None, limit: int) -> list[tuple[str, int]]:
        """One page of rows a mirror run deleted as gone from the source, in key order."""
        return key_page(self._run, vanished, job, after, limit, "reading rows deleted as vanished")
