"""The state of adoptions: how a part's identity map was first built from Personyze's users.

Two tables of the state store (``sync.state.schema``): ``psync_adoptions``, one row per
part (job, or shard of one) saying how far its adoption got, and ``psync_adopt_wanted``,
the source rows it looks for while it runs, by the text of their identifier. Every
method is one transaction of the store (:meth:`StateStore.transaction`), so a page of
users read is recorded, with how far the reading got, all or nothing: an adoption that
dies resumes after the last page saved.

When an adoption finishes, the rows it found move into the identity map (``psync_rows``)
in the same transaction that marks it done; a row the identity map already holds is
never overwritten.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from sync.state.schema import adopt_wanted, adoptions, duplicates, rows
from sync.state.sql import in_chunks
from sync.state.store import StateStore

RUNNING, DONE, SKIPPED = "running", "done", "skipped"
INSERT_CHUNK = 500  # wanted rows per INSERT


@dataclass(frozen=True)
class Adoption:
    """A part's adoption as recorded: ``state`` is running, done or skipped."""

    part: str
    state: str
    after_user_id: int  # users read up to this user_id
    highest_user_id: int  # the highest user_id Personyze held when it started (0: none)
    wanted: int
    found: int
    reads: int
    started_at: float
    ended_at: float | None

    @property
    def finished(self) -> bool:
        return self.state in (DONE, SKIPPED)


@dataclass(frozen=True)
class WantedRow:
    """A source row to look for: its key, its identifier's text, what it maps to."""

    key: str
    identifier: str
    payload: Mapping[str, Any]
    fingerprint: str


@dataclass(frozen=True)
class Candidate:
    """A wanted row as stored; ``user_id`` is None until a user is found for it."""

    part: str
    key: str
    identifier: str
    payload: dict[str, Any]
    fingerprint: str
    user_id: int | None


@dataclass(frozen=True)
class Match:
    """A user found for a wanted row; ``in_step``: it holds the row's payload already."""

    part: str
    key: str
    user_id: int
    in_step: bool


@dataclass(frozen=True)
class Duplicate:
    """A second user holding the identifier of a row already adopted (``kept_user_id``)."""

    part: str
    key: str
    user_id: int
    kept_user_id: int


def _adoption(r: Any) -> Adoption:
    return Adoption(
        r.job,
        r.state,
        int(r.after_user_id),
        int(r.highest_user_id),
        int(r.wanted),
        int(r.found),
        int(r.reads),
        float(r.started_at),
        None if r.ended_at is None else float(r.ended_at),
    )


class Adoptions:
    """The adoption tables of one state store."""

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    # -- reading -----------------------------------------------------------------

    def get(self, part: str) -> Adoption | None:
        """The part's adoption, or None: its identity map was built by its own runs."""
        return self.states([part]).get(part)

    def states(self, parts: Sequence[str]) -> dict[str, Adoption]:
        if not parts:
            return {}

        def read(conn: Connection) -> dict[str, Adoption]:
            query = select(adoptions).where(adoptions.c.job.in_(list(parts)))
            return {r.job: _adoption(r) for r in conn.execute(query)}

        return self._store.transaction(read, "reading adoptions")

    def count_unfound(self, parts: Sequence[str]) -> int:
        """Wanted rows of these parts no user was found for yet."""
        return self._count(parts, adopt_wanted.c.user_id.is_(None))

    def count_in_step(self, parts: Sequence[str]) -> int:
        """Found rows whose users held their payload already."""
        return self._count(
            parts, and_(adopt_wanted.c.user_id.is_not(None), adopt_wanted.c.in_step == 1)
        )

    def _count(self, parts: Sequence[str], condition: Any) -> int:
        if not parts:
            return 0

        def read(conn: Connection) -> int:
            query = (
                select(func.count())
                .select_from(adopt_wanted)
                .where(adopt_wanted.c.job.in_(list(parts)), condition)
            )
            return int(conn.execute(query).scalar() or 0)

        return self._store.transaction(read, "counting rows to adopt")

    def candidates(self, parts: Sequence[str], identifiers: Iterable[str]) -> list[Candidate]:
        """The wanted rows of these parts (found or not) with these identifiers."""
        wanted = list(dict.fromkeys(identifiers))
        if not parts or not wanted:
            return []

        def read(conn: Connection) -> list[Candidate]:
            found: dict[tuple[str, str], Candidate] = {}
            for chunk in in_chunks(wanted):
                query = select(adopt_wanted).where(
                    adopt_wanted.c.job.in_(list(parts)), adopt_wanted.c.identifier.in_(chunk)
                )
                for r in conn.execute(query):
                    found[(r.job, r.row_key)] = Candidate(
                        r.job,
                        r.row_key,
                        r.identifier,
                        json.loads(r.payload),
                        r.fingerprint,
                        None if r.user_id is None else int(r.user_id),
                    )
            return list(found.values())

        return self._store.transaction(read, "looking up rows to adopt")

    def adopted_users(self, parts: Sequence[str], user_ids: Iterable[int]) -> set[int]:
        """Which of these users this adoption has already given to one of its rows."""
        ids = list(set(user_ids))
        if not parts or not ids:
            return set()

        def read(conn: Connection) -> set[int]:
            found: set[int] = set()
            for chunk in in_chunks(ids):
                query = select(adopt_wanted.c.user_id).where(
                    adopt_wanted.c.job.in_(list(parts)), adopt_wanted.c.user_id.in_(chunk)
                )
                found.update(int(u) for u in conn.execute(query).scalars())
            return found

        return self._store.transaction(read, "reading adopted users")

    def duplicates_since(self, parts: Sequence[str], since: float) -> int:
        """Duplicates recorded for these parts since ``since`` (an adoption's start)."""
        if not parts:
            return 0

        def read(conn: Connection) -> int:
            query = (
                select(func.count())
                .select_from(duplicates)
                .where(duplicates.c.job.in_(list(parts)), duplicates.c.seen_at >= since)
            )
            return int(conn.execute(query).scalar() or 0)

        return self._store.transaction(read, "counting duplicates")

    # -- writing -----------------------------------------------------------------

    def clear_wanted(self, part: str) -> None:
        """Forget the rows a scan of the part left (a scan that died before it started)."""
        self._store.transaction(
            lambda conn: conn.execute(delete(adopt_wanted).where(adopt_wanted.c.job == part)),
            "clearing rows to adopt",
        )

    def add_wanted(self, part: str, wanted: Sequence[WantedRow]) -> None:
        """Record source rows to look for (again: a row already recorded is replaced)."""
        if not wanted:
            return
        values = [
            {
                "job": part,
                "row_key": w.key,
                "identifier": w.identifier,
                "payload": json.dumps(dict(w.payload), default=str, ensure_ascii=False),
                "fingerprint": w.fingerprint,
                "user_id": None,
                "in_step": None,
            }
            for w in wanted
        ]

        def write(conn: Connection) -> None:
            insert = _insert(conn)
            for at in range(0, len(values), INSERT_CHUNK):
                statement = insert(adopt_wanted)
                updates = {
                    c: statement.excluded[c]
                    for c in ("identifier", "payload", "fingerprint", "user_id", "in_step")
                }
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["job", "row_key"], set_=updates
                    ),
                    values[at : at + INSERT_CHUNK],
                )

        self._store.transaction(write, "recording rows to adopt")

    def start(self, part: str, highest_user_id: int, wanted: int) -> None:
        """The part's adoption is running, from the first user on."""
        values = {
            "job": part,
            "state": RUNNING,
            "after_user_id": 0,
            "highest_user_id": highest_user_id,
            "wanted": wanted,
            "found": 0,
            "reads": 0,
            "started_at": self._clock(),
            "ended_at": None,
        }
        self._store.transaction(lambda conn: _upsert(conn, values), "starting an adoption")

    def save_page(
        self,
        parts: Sequence[str],
        after_user_id: int,
        matches: Sequence[Match],
        found_duplicates: Sequence[Duplicate],
    ) -> None:
        """One page of users read: the rows found, the duplicates seen and how far the
        reading got, for every part it served, in one transaction."""
        now = self._clock()

        def write(conn: Connection) -> None:
            for m in matches:
                conn.execute(
                    update(adopt_wanted)
                    .where(adopt_wanted.c.job == m.part, adopt_wanted.c.row_key == m.key)
                    .values(user_id=m.user_id, in_step=1 if m.in_step else 0)
                )
            if found_duplicates:
                statement = _insert(conn)(duplicates)
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["job", "row_key", "user_id"],
                        set_={
                            "kept_user_id": statement.excluded.kept_user_id,
                            "seen_at": statement.excluded.seen_at,
                        },
                    ),
                    [
                        {
                            "job": d.part,
                            "row_key": d.key,
                            "user_id": d.user_id,
                            "kept_user_id": d.kept_user_id,
                            "seen_at": now,
                        }
                        for d in found_duplicates
                    ],
                )
            for part in parts:
                found = sum(1 for m in matches if m.part == part)
                conn.execute(
                    update(adoptions)
                    .where(adoptions.c.job == part, adoptions.c.state == RUNNING)
                    .values(
                        after_user_id=case(
                            (adoptions.c.after_user_id < after_user_id, literal(after_user_id)),
                            else_=adoptions.c.after_user_id,
                        ),
                        reads=adoptions.c.reads + 1,
                        found=adoptions.c.found + found,
                    )
                )

        self._store.transaction(write, "saving an adoption's progress")

    def finish(self, part: str) -> int:
        """Move the rows found into the identity map and mark the adoption done.

        A row found whose user held its payload keeps its fingerprint (the next run
        skips it); any other gets an empty one, so the next run sends it again, carrying
        its user_id. A row the identity map already has is left as it is. Returns the
        rows moved.
        """
        now = self._clock()

        def write(conn: Connection) -> int:
            w = adopt_wanted.c
            found = select(
                w.job,
                w.row_key,
                w.user_id,
                case((w.in_step == 1, w.fingerprint), else_=literal("")),
                literal(now),
            ).where(w.job == part, w.user_id.is_not(None))
            statement = (
                _insert(conn)(rows)
                .from_select(["job", "row_key", "user_id", "fingerprint", "sent_at"], found)
                .on_conflict_do_nothing(index_elements=["job", "row_key"])
            )
            moved = conn.execute(statement).rowcount
            conn.execute(delete(adopt_wanted).where(w.job == part))
            conn.execute(
                update(adoptions).where(adoptions.c.job == part).values(state=DONE, ended_at=now)
            )
            return int(moved or 0)

        return self._store.transaction(write, "finishing an adoption")

    def skip(self, part: str) -> None:
        """Record the part's adoption as skipped (Personyze holds none of its users)."""
        now = self._clock()
        existing = self.get(part)

        def write(conn: Connection) -> None:
            conn.execute(delete(adopt_wanted).where(adopt_wanted.c.job == part))
            _upsert(
                conn,
                {
                    "job": part,
                    "state": SKIPPED,
                    "after_user_id": 0 if existing is None else existing.after_user_id,
                    "highest_user_id": 0 if existing is None else existing.highest_user_id,
                    "wanted": 0 if existing is None else existing.wanted,
                    "found": 0,
                    "reads": 0 if existing is None else existing.reads,
                    "started_at": now if existing is None else existing.started_at,
                    "ended_at": now,
                },
            )

        self._store.transaction(write, "skipping an adoption")


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _upsert(conn: Connection, values: dict[str, Any]) -> None:
    statement = _insert(conn)(adoptions)
    updates = {c: statement.excluded[c] for c in values if c != "job"}
    conn.execute(statement.on_conflict_do_update(index_elements=["job"], set_=updates), [values])
