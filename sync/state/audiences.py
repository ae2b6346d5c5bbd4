"""The state of audience jobs: the Personyze list each one feeds, and its members.

Two tables of the state store (``sync.state.schema``): ``psync_audiences``, one row per
audience job (the list's name, its id once known, how many rows the last run could not
place), and ``psync_audience_members``, the members the job added, each recorded only
after a read of the list showed it there. Every method is one transaction of the store
(:meth:`StateStore.transaction`); a run's writes are checked against its lease first.

Names of Personyze lists are not unique, so the id is what a job holds on to: a row
with a NULL ``list_id`` says a create was sent whose answer was never recorded (the
next run looks for the list by name before it creates one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select, update

from sync.state.fencing import Fence
from sync.state.schema import audience_members, audiences
from sync.state.sql import in_chunks, upsert
from sync.state.store import StateStore


@dataclass(frozen=True)
class AudienceRecord:
    """An audience job's list as recorded; ``list_id`` None: a create's answer was lost."""

    job: str
    name: str
    list_id: int | None
    since: float
    waiting: int


class AudienceState:
    """One audience job's list and members; ``fence``: the run's lease, checked by writes."""

    def __init__(
        self,
        store: StateStore,
        job: str,
        *,
        fence: Fence | None = None,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self.job = job
        self._fence = fence
        self._clock = clock

    # -- the list --------------------------------------------------------------------

    def record(self) -> AudienceRecord | None:
        def read(conn: Connection) -> AudienceRecord | None:
            row = conn.execute(select(audiences).where(audiences.c.job == self.job)).first()
            return None if row is None else AudienceRecord(**row._mapping)

        return self._store.transaction(read, "reading an audience's list")

    def creating(self, name: str) -> None:
        """Before a list is created: a create is under way (its answer may be lost)."""
        self._set_list(name, None)

    def set_list(self, name: str, list_id: int) -> None:
        """The list this job feeds from now on."""
        self._set_list(name, list_id)

    def _set_list(self, name: str, list_id: int | None) -> None:
        values = {"job": self.job, "name": name, "list_id": list_id, "since": self._clock()}
        self._write(
            lambda conn: upsert(conn, audiences, [{**values, "waiting": 0}], ["job"]),
            "recording an audience's list",
        )

    def set_waiting(self, waiting: int) -> None:
        """How many rows the last run could not place (their users are not known yet)."""
        self._write(
            lambda conn: conn.execute(
                update(audiences).where(audiences.c.job == self.job).values(waiting=waiting)
            ),
            "recording an audience's waiting rows",
        )

    # -- members ---------------------------------------------------------------------

    def members(self) -> dict[int, str]:
        """Every member recorded: user_id -> the row key it was added for."""

        def read(conn: Connection) -> dict[int, str]:
            query = select(audience_members.c.user_id, audience_members.c.row_key).where(
                audience_members.c.job == self.job
            )
            return {int(r.user_id): r.row_key for r in conn.execute(query)}

        return self._store.transaction(read, "reading an audience's members")

    def count(self) -> int:
        def read(conn: Connection) -> int:
            query = select(func.count()).where(audience_members.c.job == self.job)
            return int(conn.execute(query).scalar() or 0)

        return self._store.transaction(read, "counting an audience's members")

    def added(self, members: Mapping[int, str]) -> None:
        """Record members a read of the list showed there (user_id -> row key)."""
        if not members:
            return
        now = self._clock()
        values = [
            {"job": self.job, "user_id": u, "row_key": k, "added_at": now}
            for u, k in members.items()
        ]
        self._write(
            lambda conn: upsert(conn, audience_members, values, ["job", "user_id"]),
            "recording an audience's members",
        )

    def removed(self, user_ids: Iterable[int]) -> None:
        """Forget members a read of the list showed gone."""
        ids = list(user_ids)
        if not ids:
            return

        def write(conn: Connection) -> None:
            for chunk in in_chunks(ids):
                conn.execute(
                    delete(audience_members).where(
                        audience_members.c.job == self.job, audience_members.c.user_id.in_(chunk)
                    )
                )

        self._write(write, "forgetting an audience's members")

    def forget(self) -> None:
        """Drop the list and every member recorded (a full reset of the job)."""

        def write(conn: Connection) -> None:
            for table in (audiences, audience_members):
                conn.execute(delete(table).where(table.c.job == self.job))

        self._write(write, "forgetting an audience")

    def _write(self, work: Callable[[Connection], object], doing: str) -> None:
        fence = self._fence

        def fenced(conn: Connection) -> None:
            if fence is not None:
                fence.fence(conn)  # LeaseLost: another process runs the job now
            work(conn)

        self._store.transaction(fenced, doing)


@dataclass(frozen=True)
class AudienceStatus:
    """What ``status`` shows of an audience job: its list, members and waiting rows."""

    name: str
    list_id: int | None  # None: not found or created yet
    members: int
    waiting: int


def audience_status(store: StateStore, job: str, name: str) -> AudienceStatus:
    """The audience job ``job`` feeds (``name``, the config's, until a run records one)."""
    state = AudienceState(store, job, clock=lambda: 0.0)  # reads only
    record = state.record()
    if record is None:
        return AudienceStatus(name, None, 0, 0)
    return AudienceStatus(record.name, record.list_id, state.count(), record.waiting)
