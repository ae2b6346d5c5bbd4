"""The run history: one row per run of a job, for ``status`` and the health checks."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select, update

from sync.errors import StateError
from sync.state.fencing import Transact
from sync.state.records import RunCounts, RunRecord
from sync.state.schema import DIED, runs


class History:
    """Runs started, finished and read; ``holder`` names this process in the runs it starts."""

    def __init__(self, run: Transact, clock: Callable[[], float], holder: str) -> None:
        self._run = run
        self._clock = clock
        self._holder = holder

    def start_run(self, job: str, kind: str) -> int:
        """A new run in the history; runs of the job still marked running never ended.

        One run of a job goes at a time, so a "running" one left behind belongs to a
        process that died (killed, crashed): it is marked so, for ``status``.
        """

        def write(conn: Connection) -> int:
            conn.execute(
                update(runs)
                .where(runs.c.job == job, runs.c.outcome == "running")
                .values(outcome="died", error=DIED)
            )
            result = conn.execute(
                runs.insert().values(
                    job=job,
                    kind=kind,
                    holder=self._holder,
                    started_at=self._clock(),
                    outcome="running",
                    rows_read=0,
                    rows_sent=0,
                    rows_skipped=0,
                    rows_rejected=0,
                )
            )
            inserted = result.inserted_primary_key
            if inserted is None:  # pragma: no cover - both backends report the new id
                raise StateError("state store: a new run got no id")
            return int(inserted[0])

        return self._run(write, "starting a run")

    def finish_run(
        self,
        run_id: int,
        outcome: str,
        *,
        read: int,
        sent: int,
        unchanged: int,
        rejected: int,
        error: str | None,
    ) -> None:
        self._run(
            lambda conn: conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    ended_at=self._clock(),
                    outcome=outcome,
                    rows_read=read,
                    rows_sent=sent,
                    rows_skipped=unchanged,
                    rows_rejected=rejected,
                    error=error,
                )
            ),
            "finishing a run",
        )

    def runs(self, job: str, limit: int = 5) -> list[RunRecord]:
        def read(conn: Connection) -> list[RunRecord]:
            query = select(runs).where(runs.c.job == job).order_by(runs.c.id.desc()).limit(limit)
            return [RunRecord(**r._mapping) for r in conn.execute(query)]

        return self._run(read, "reading the run history")


def write_counts(conn: Connection, run_id: int, counts: RunCounts) -> None:
    """A running run's rows so far, in the transaction of the batch that did them."""
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id, runs.c.outcome == "running")
        .values(
            rows_read=counts.read,
            rows_sent=counts.sent,
            rows_skipped=counts.unchanged,
            rows_rejected=counts.rejected,
        )
    )
