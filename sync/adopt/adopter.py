"""The pass of an adoption: scan the source rows, read Personyze's users page by page,
match them, finish; and :func:`adopt_or_refuse`, what a run calls before it sends."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sync.adopt.plan import (
    INLINE_READS,
    AdoptionSummary,
    Estimate,
    adoption_needed,
    identifier_of,
    identifier_text,
    mapped_columns,
    refusal,
)
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

Progress = Callable[[int, int], None]  # (user_id read up to, highest user_id)


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
                known = self.store.part(name).lookup([w.key for w in found], refused=False).known
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
