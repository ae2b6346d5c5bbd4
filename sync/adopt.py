"""Adoption: a new, moved or lost state store takes over the users Personyze already holds.

A row without an email cannot be merged by Personyze: the live service does not merge
on internal_id (nor on fb_id), so a state store that never synced a job would make a
second user of every such row the first time it sends it. Before that, an adoption
reads the users Personyze holds, in user_id order, 50 at a time (``user_id>N`` is a
range read, refused past 50 rows), and gives each source row the user whose identifier
(internal_id, else fb_id) it carries:

- the scan: each part's source rows (rows ``delete_when`` marks and rows the mapping
  refuses are left out) are recorded in ``psync_adopt_wanted`` with their identifier,
  payload and fingerprint, and the adoption starts;
- the pass: pages of users from where it stopped (it resumes after a crash); a user
  that a row of any job already holds, or that this adoption already gave a row, is
  never given again; the lowest user_id wins, a later user with the same identifier
  is recorded as a duplicate. A user holding the row's payload already is "in step"
  and keeps the row's fingerprint (the next run skips it); others are resent, with
  their user_id. Each page is saved in one transaction. Reading stops once every row
  looked for is found, at a short page, or past the highest user_id there was;
- the finish: found rows move into the identity map (never over a row it has).

One pass serves every part of a job (its shards). Personyze also holds every tracked
visitor, so an account may hold millions of users: :meth:`Adopter.estimate` says what a
pass costs before it starts.

A run that finds a part never synced calls :func:`adopt_or_refuse`: it adopts inline
when that is cheap (``INLINE_READS``) and otherwise stops with :class:`AdoptionNeeded`,
naming the ``adopt`` command.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sync.compare import compare
from sync.config.jobs import JobSettings
from sync.errors import AdoptionNeeded, FatalError, Stopped
from sync.extract.query import DELETED
from sync.extract.reader import SourceReader
from sync.load.client import RANGE_PAGE, PersonyzeClient
from sync.load.writer import merges
from sync.mapping import Mapper, Record
from sync.state.adoptions import (
    Adoption,
    Adoptions,
    Candidate,
    Duplicate,
    Match,
    WantedRow,
)
from sync.state.schema import key_text
from sync.state.store import StateStore

INLINE_READS = 20  # a run adopts by itself when the pass costs at most this many reads
IDENTIFIER_ORDER = ("internal_id", "fb_id")  # what a row is looked for by, in Personyze

Progress = Callable[[int, int], None]  # (user_id read up to, highest user_id)


@dataclass(frozen=True)
class Estimate:
    """What a pass over Personyze's users costs: ``reads`` pages of 50 users."""

    highest_user_id: int | None  # None: Personyze holds no user
    reads: int
    after_user_id: int = 0  # a pass already under way resumes after this user

    def seconds(self, requests_per_second: float | None) -> float | None:
        """The time the reads take at the client's rate ceiling (None: no ceiling)."""
        if not requests_per_second:
            return None
        return self.reads / requests_per_second


@dataclass
class AdoptionSummary:
    """What an adoption did (``already``: it was done before; nothing was read)."""

    job: str
    wanted: int = 0
    found: int = 0
    in_step: int = 0
    reads: int = 0  # pages of users read, over the whole adoption (also before a crash)
    users_read: int = 0  # users read by this process
    duplicates: int = 0
    resumed_after: int | None = None  # the pass resumed after this user_id
    already: bool = False
    skipped: bool = False
    parts: dict[str, Adoption | None] | None = None  # each part's record, at the end


def identifier_of(job: JobSettings) -> str | None:
    """The column a job's rows are looked for by: internal_id, else fb_id (None: neither
    is mapped, so every row merges by email or carries its user_id)."""
    targets = set(job.mapping.values()) | set(job.transforms)
    return next((c for c in IDENTIFIER_ORDER if c in targets), None)


def mapped_columns(job: JobSettings) -> tuple[str, ...]:
    """Every Personyze column the job maps (the columns an adoption reads and compares)."""
    return tuple(dict.fromkeys([*job.mapping.values(), *job.transforms]))


def identifier_text(value: Any) -> str | None:
    """An identifier's value as the text rows and users are matched by (None: empty)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        value = int(value)
    text = str(value).strip()
    return text or None


def adoption_needed(store: StateStore, part: str) -> bool:
    """Whether a run of ``part`` must adopt first: the store never synced it (no row in
    the identity map, no checkpoint) and no adoption of it was ever recorded."""
    return (
        Adoptions(store).get(part) is None
        and store.row_count(part) == 0
        and store.checkpoint(part) is None
    )


class Adopter:
    """The adoption of one job: all its parts, under the leases the caller holds."""

    def __init__(
        self,
        job: JobSettings,
        parts: Sequence[tuple[str, SourceReader]],
        *,
        mapper: Mapper,
        store: StateStore,
        client: PersonyzeClient,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.parts = list(parts)
        self.mapper = mapper
        self.store = store
        self.client = client
        self.stop = stop or threading.Event()
        self.adoptions = Adoptions(store, clock)
        self.identifier = identifier_of(job)
        self.columns = mapped_columns(job)
        self._names = [name for name, _ in self.parts]

    # -- looking -----------------------------------------------------------------

    def states(self) -> dict[str, Adoption | None]:
        found = self.adoptions.states(self._names)
        return {name: found.get(name) for name in self._names}

    def unfinished(self) -> list[str]:
        """The parts whose adoption is not done nor skipped."""
        return [n for n, a in self.states().items() if a is None or not a.finished]

    def estimate(self) -> Estimate:
        """The highest user_id Personyze holds (one read) and the reads a pass needs."""
        highest = self.client.highest_user_id()
        states = list(self.states().values())
        running = [a for a in states if a is not None and not a.finished]
        fresh = any(a is None for a in states)
        after = 0 if fresh or not running else min(a.after_user_id for a in running)
        if highest is None:
            return Estimate(None, 0, after)
        return Estimate(highest, math.ceil(max(0, highest - after) / RANGE_PAGE), after)

    def has_unmergeable_rows(self) -> bool:
        """Whether any source row would be sent without an email or a user_id (so that
        Personyze could not merge it); reads the source until the first such row."""
        for _name, reader in self.parts:
            for batch in reader.batches_after(None):
                for row in batch:
                    if row.pop(DELETED, 0) == 1:
                        continue
                    mapped = self.mapper.map(row)
                    if isinstance(mapped, Record) and not merges(mapped.payload):
                        return True
        return False

    # -- adopting ----------------------------------------------------------------

    def skip(self) -> list[str]:
        """Record every unfinished part's adoption as skipped; the parts skipped."""
        names = self.unfinished()
        for name in names:
            self.adoptions.skip(name)
        return names

    def run(
        self,
        progress: Progress | None = None,
        *,
        estimate: Estimate | None = None,
        scanned: Callable[[int], None] | None = None,
    ) -> AdoptionSummary:
        """Adopt every unfinished part: scan, read Personyze's users, finish.

        ``progress(user_id read up to, highest)`` after each page; ``scanned(rows)``
        after each batch of source rows scanned; ``estimate``: one made already (saves
        a read).
        """
        summary = AdoptionSummary(self.job.name)
        states = self.states()
        todo = [n for n, a in states.items() if a is None or not a.finished]
        if not todo:
            summary.already = True
            return self._summed(summary, states)
        readers = dict(self.parts)
        fresh = [n for n in todo if states[n] is None]
        if fresh:
            highest = 0
            if self.identifier is not None:
                estimate = estimate or self.estimate()
                highest = estimate.highest_user_id or 0
            for name in fresh:
                self._scan(name, readers[name], highest, scanned)
        records = self.adoptions.states(todo)
        highest = max(a.highest_user_id for a in records.values())
        after = min(a.after_user_id for a in records.values())
        summary.resumed_after = after or None
        unfound = self.adoptions.count_unfound(todo)
        if progress is not None:
            progress(min(after, highest), highest)
        while unfound > 0 and after < highest:
            if self.stop.is_set():
                raise Stopped(
                    f"adoption of job {self.job.name} stopped after user_id {after}; what was "
                    "read is saved: run adopt again to resume"
                )
            columns = [self.identifier or "internal_id", *self.columns]
            page = self.client.users_after(after, columns)
            users = _by_user_id(page)
            summary.users_read += len(users)
            matches, found_duplicates = self._match(todo, users)
            last = max([after, *users])
            self.adoptions.save_page(todo, last, matches, found_duplicates)
            unfound -= len(matches)
            after = last
            if progress is not None:
                progress(min(after, highest), highest)
            if len(page) < RANGE_PAGE:
                break
        for name in todo:
            record = records[name]
            summary.in_step += self.adoptions.count_in_step([name])
            summary.duplicates += self.adoptions.duplicates_since([name], record.started_at)
            self.adoptions.finish(name)
        final = self.states()
        summary.wanted = sum(a.wanted for a in final.values() if a is not None)
        summary.found = sum(a.found for a in final.values() if a is not None)
        summary.reads = max((a.reads for a in final.values() if a is not None), default=0)
        summary.parts = final
        return summary

    def _summed(
        self, summary: AdoptionSummary, states: Mapping[str, Adoption | None]
    ) -> AdoptionSummary:
        records = [a for a in states.values() if a is not None]
        summary.wanted = sum(a.wanted for a in records)
        summary.found = sum(a.found for a in records)
        summary.reads = max((a.reads for a in records), default=0)
        summary.skipped = bool(records) and all(a.state == "skipped" for a in records)
        summary.parts = dict(states)
        return summary

    def _scan(
        self,
        name: str,
        reader: SourceReader,
        highest: int,
        scanned: Callable[[int], None] | None,
    ) -> None:
        """Record the part's source rows to look for, then start its adoption."""
        self.adoptions.clear_wanted(name)  # what a scan that died left
        wanted, seen = 0, 0
        if self.identifier is not None and highest > 0:  # an empty account holds no one
            for batch in reader.batches_after(None):
                if self.stop.is_set():
                    raise Stopped(
                        f"adoption of job {self.job.name} stopped while reading the source; "
                        "nothing was adopted yet: run adopt again"
                    )
                seen += len(batch)
                rows = [row for row in batch if row.pop(DELETED, 0) != 1]
                found = list(self._wanted(rows))
                known = self.store.known_rows(name, [w.key for w in found])
                found = [w for w in found if w.key not in known]
                self.adoptions.add_wanted(name, found)
                wanted += len(found)
                if scanned is not None:
                    scanned(seen)
        self.adoptions.start(name, highest, wanted)

    def _wanted(self, rows: Iterable[dict[str, Any]]) -> Iterable[WantedRow]:
        assert self.identifier is not None
        for row in rows:
            mapped = self.mapper.map(row)
            if not isinstance(mapped, Record):
                continue  # the mapping refuses it: a run records it, never sends it
            identifier = identifier_text(mapped.payload.get(self.identifier))
            if identifier is not None:
                yield WantedRow(
                    key_text(mapped.key), identifier, mapped.payload, mapped.fingerprint
                )

    def _match(
        self, parts: Sequence[str], users: Mapping[int, dict[str, Any]]
    ) -> tuple[list[Match], list[Duplicate]]:
        """The rows one page of users is for, and the duplicates it holds."""
        assert self.identifier is not None
        carrying = {
            uid: text
            for uid, user in users.items()
            if (text := identifier_text(user.get(self.identifier))) is not None
        }
        if not carrying:
            return [], []
        held = self.store.holders_anywhere(carrying)
        adopted = self.adoptions.adopted_users(parts, carrying)
        order = {name: i for i, name in enumerate(parts)}
        by_identifier: dict[str, list[Candidate]] = {}
        for c in sorted(
            self.adoptions.candidates(parts, carrying.values()),
            key=lambda c: (order[c.part], c.key),
        ):
            by_identifier.setdefault(c.identifier, []).append(c)
        given: dict[tuple[str, str], int] = {}  # (part, key) -> user_id, this page
        matches: list[Match] = []
        found_duplicates: list[Duplicate] = []
        for uid in sorted(carrying):  # the lowest user_id wins
            if uid in held or uid in adopted:
                continue
            rows = by_identifier.get(carrying[uid], [])
            if not rows:
                continue
            owner = {(c.part, c.key): c.user_id or given.get((c.part, c.key)) for c in rows}
            free = [c for c in rows if owner[(c.part, c.key)] is None]
            if free:
                row = free[0]
                in_step = not compare(row.payload, users[uid], self.columns).different
                given[(row.part, row.key)] = uid
                matches.append(Match(row.part, row.key, uid, in_step))
                continue
            kept_uid, kept = min(
                ((u, c) for c in rows if (u := owner[(c.part, c.key)]) is not None),
                key=lambda pair: pair[0],
            )
            found_duplicates.append(Duplicate(kept.part, kept.key, uid, kept_uid))
        return matches, found_duplicates


def _by_user_id(page: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    users: dict[int, dict[str, Any]] = {}
    for user in page:
        raw = user.get("user_id")
        try:
            uid = int(str(raw))
        except ValueError:
            raise FatalError(
                f"Personyze answered a read of users with a user_id of {str(raw)[:40]!r}"
            ) from None
        users[uid] = dict(user)
    return users


# -- what a run calls ---------------------------------------------------------------


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def cost_text(estimate: Estimate, requests_per_second: float | None) -> str:
    """``about 24,692 reads, ~8 min at personyze.requests_per_second 50``."""
    seconds = estimate.seconds(requests_per_second)
    if seconds is None:
        return f"about {estimate.reads:,} reads; no personyze.requests_per_second ceiling is set"
    return (
        f"about {estimate.reads:,} reads, ~{duration_text(seconds)} at "
        f"personyze.requests_per_second {requests_per_second:g}"
    )


def refusal(
    job: str, estimate: Estimate, *, requests_per_second: float | None, config_path: str
) -> str:
    """What a run says when it will not send before an adoption."""
    return (
        f"job {job}: this state store has never synced the job, and Personyze already holds "
        f"users (highest user_id {estimate.highest_user_id}): rows without an email could "
        f"become second users. Adopt them first: personyze-sync adopt -c {config_path} {job} "
        f"({cost_text(estimate, requests_per_second)}), or, if Personyze holds none of this "
        f"job's users, personyze-sync adopt -c {config_path} {job} --skip"
    )


def adopt_or_refuse(
    job: JobSettings,
    parts: Sequence[tuple[str, SourceReader]],
    *,
    mapper: Mapper,
    store: StateStore,
    client: PersonyzeClient,
    config_path: str = "CONFIG",
    requests_per_second: float | None = None,
    stop: threading.Event | None = None,
) -> AdoptionSummary | None:
    """Before a run sends anything: adopt the parts that need it, or refuse.

    ``parts``: (part name, its reader) of the parts the caller holds the leases of.
    Returns None when no part needs an adoption (each was synced before, or adopted,
    or the job never creates users, or every row merges by email); the summary when
    it adopted inline (a pass of at most ``INLINE_READS`` reads; an empty account
    costs one); raises :class:`AdoptionNeeded` naming the command otherwise.
    """
    if job.sync == "update":
        return None  # never creates a user: nothing to duplicate
    needed = [(name, reader) for name, reader in parts if adoption_needed(store, name)]
    if not needed or identifier_of(job) is None:
        return None
    adopter = Adopter(job, needed, mapper=mapper, store=store, client=client, stop=stop)
    estimate = adopter.estimate()
    if estimate.reads <= INLINE_READS:
        return adopter.run(estimate=estimate)
    if "email" in mapped_columns(job) and not adopter.has_unmergeable_rows():
        return None  # every row carries an email: Personyze merges them
    raise AdoptionNeeded(
        refusal(
            job.name, estimate, requests_per_second=requests_per_second, config_path=config_path
        )
    )
