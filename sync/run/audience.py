"""One run of an audience job: the rows of its query are the members a Personyze list holds.

A set sync, with neither a cursor nor the row pipeline. Each run:

1. finds the job's list: the id the state store remembers (checked to still exist), or
   else the one list of that name, created if there is none (names are not unique:
   two lists of the name are refused, naming both);
2. reads every row of the query and finds each row's Personyze user: the user_id its
   ``users_job`` recorded for the row's key (in any of that job's shards), else the
   user Personyze holds for the row's email; a row with neither *waits* (counted, and
   looked for again next run: never rejected);
3. compares those users with the members the state store recorded for the job: adds
   the new ones and, with ``sync: mirror``, removes those whose rows left the query
   (never more than ``max_deletes_per_run``: counted before anything is written);
4. reads the list back, a chunk at a time, and records an add or a removal only once
   Personyze shows it. An add whose answer was lost is simply sent again next run
   (one membership per user), so nothing is recorded that Personyze does not hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sync.config.jobs import JobSettings
from sync.errors import (
    ConfigError,
    FatalError,
    LeaseLost,
    RejectedError,
    RetriableError,
    Stopped,
    SyncError,
    TooManyDeletes,
)
from sync.load.audiences import CHUNK, AudienceClient, user_not_found
from sync.model import RunOptions, RunStats
from sync.state.audiences import AudienceState
from sync.state.leases import Lease
from sync.state.schema import key_text
from sync.wiring import Wiring

log = logging.getLogger(__name__)


@dataclass
class Members:
    """The query's rows, each placed with its Personyze user or waiting for one."""

    wanted: dict[int, str] = field(default_factory=dict)  # user_id -> row key
    keys: set[str] = field(default_factory=set)  # every row key the query holds
    waiting: list[str] = field(default_factory=list)  # row keys whose user is not known


class AudienceRun:
    """One run of one audience job; ``lease`` None only for a dry run."""

    def __init__(self, wiring: Wiring, job: JobSettings, lease: Lease | None) -> None:
        assert job.audience is not None  # checked with the config
        self.job = job
        self.name = job.audience
        self.wiring = wiring
        self.lease = lease
        self.client = AudienceClient(wiring.client, wiring.config.personyze.concurrency)
        self.state = AudienceState(wiring.store, job.name, fence=lease, clock=wiring.wall)
        self.stats = RunStats()
        self._stop: threading.Event = wiring.stopping

    def run(self, options: RunOptions) -> RunStats:
        """Run once; the run history records the outcome whatever happens."""
        if options.dry_run:
            self._sync(dry_run=True)
            return self.stats
        part = self.wiring.store.part(self.job.name, fence=self.lease)
        run_id = part.start_run(options.kind)
        outcome, error = "failed", None
        try:
            self._sync(dry_run=False)
            outcome = "success"
        except Stopped as exc:
            outcome, error = "stopped", str(exc)
            raise
        except SyncError as exc:
            error = str(exc)
            raise
        except BaseException as exc:
            outcome, error = "interrupted", type(exc).__name__
            raise
        finally:
            s = self.stats
            part.finish_run(
                run_id, outcome, read=s.read, sent=s.sent + s.deleted, unchanged=s.unchanged,
                rejected=0, error=error,
            )  # fmt: skip
        return self.stats

    # -- the phases --------------------------------------------------------------------

    def _sync(self, *, dry_run: bool) -> None:
        list_id = self.find_list(create=not dry_run)
        members = self.members()
        recorded = self.state.members()
        to_add = [u for u in members.wanted if u not in recorded]
        to_remove: list[int] = []
        if self.job.sync == "mirror":  # a recorded row still in the query stays
            to_remove = [u for u, k in recorded.items() if u not in members.wanted]
            to_remove = [u for u in to_remove if recorded[u] not in members.keys]
        s = self.stats
        s.read, s.unchanged = len(members.keys), len(members.wanted) - len(to_add)
        s.waiting = len(members.waiting)
        self._check_removals(to_remove, list_id, len(recorded), dry_run=dry_run)
        if dry_run:
            s.would_send = [{"user_list_id": list_id, "user_id": u} for u in to_add]
            s.would_delete += [
                {"key": recorded[u], "user_id": u, "why": f"left the query of {self.name!r}"}
                for u in to_remove
            ]
            return
        assert list_id is not None
        self.add(list_id, to_add, members.wanted)
        self._write(list_id, to_remove, recorded, adding=False)
        self.state.set_waiting(s.waiting)

    def find_list(self, *, create: bool) -> int | None:
        """The id of the job's list (None: a dry run of a job whose list is not made yet)."""
        record, name = self.state.record(), self.name
        if record is not None and record.name != name:
            raise ConfigError(
                f"job {self.job.name} fed audience {record.name!r} (list {record.list_id}); "
                f"the config now names {name!r}: nothing was written. To feed the new one "
                f"(the old list keeps its members), run: personyze-sync checkpoint reset "
                f"-c CONFIG {self.job.name}"
            )
        if record is not None and record.list_id is not None:
            if not self.client.list_exists(record.list_id):
                raise FatalError(
                    f"audience {name!r} (list {record.list_id}, which job {self.job.name} "
                    "created or found) no longer exists in Personyze: nothing was written. "
                    f"To make it anew, run: personyze-sync checkpoint reset -c CONFIG "
                    f"{self.job.name}"
                )
            return record.list_id
        found = self._only_one(self.client.lists_named(name))
        if found is not None or not create:
            if found is not None and create:
                self.state.set_list(name, found)
            return found
        self.state.creating(name)  # a lost answer: the next run looks before it creates
        list_id = self._create(name)
        self.state.set_list(name, list_id)
        log.info("audience created", extra={"job": self.job.name, "list_id": list_id})
        return list_id

    def _create(self, name: str) -> int:
        """Create the list; after a failure that may have made it, wait out a request's
        deadline and look for it by name before creating it again."""
        settings = self.wiring.config.personyze
        for attempt in range(1, settings.max_attempts + 1):
            try:
                return self.client.create_list(name)
            except RetriableError:
                if attempt == settings.max_attempts:
                    raise  # the next run looks by name first
                if self._stop.wait(settings.timeout_s):
                    raise Stopped("stopped while creating an audience") from None
                found = self._only_one(self.client.lists_named(name))
                if found is not None:
                    return found
        raise AssertionError("unreachable")  # pragma: no cover

    def _only_one(self, ids: Sequence[int]) -> int | None:
        if len(ids) > 1:
            raise ConfigError(
                f"job {self.job.name}: Personyze holds {len(ids)} audiences named "
                f"{self.name!r} (ids {', '.join(map(str, ids))}) and names are not unique, "
                "so which one to feed is not known: nothing was written. Rename or delete "
                "all but one in Personyze, or name another audience"
            )
        return ids[0] if ids else None

    def members(self) -> Members:
        """Every row of the query, placed by the users job's identity map, else by email."""
        job, members = self.job, Members()
        email_of = next((c for c, t in job.mapping.items() if t == "email"), None)
        emails: dict[str, str] = {}
        for batch in self.wiring.reader(job).batches_after(None):
            for row in batch:
                if row[job.source.key] is None:
                    continue
                key = key_text(row[job.source.key])
                members.keys.add(key)
                email = row.get(email_of) if email_of else None
                if isinstance(email, str) and email.strip():
                    emails[key] = email.strip().lower()
        found = self._known(sorted(members.keys))
        unplaced = [k for k in members.keys if k not in found]
        by_email = self.client.users_by_email(sorted({emails[k] for k in unplaced if k in emails}))
        for key in sorted(members.keys):
            user_id = found.get(key) or by_email.get(emails.get(key, ""))
            if user_id is None:
                members.waiting.append(key)
            else:
                members.wanted.setdefault(user_id, key)
        return members

    def _known(self, keys: list[str]) -> dict[str, int]:
        """The user_ids the users job recorded for these keys (in any of its shards)."""
        if self.job.users_job is None or not keys:
            return {}
        users = self.wiring.config.job(self.job.users_job)
        found: dict[str, int] = {}
        for name, _shard in self.wiring.parts(users):
            known = self.wiring.store.part(name).lookup(keys, refused=False).known
            found.update({k: row.user_id for k, row in known.items()})
        return found

    def _check_removals(
        self, to_remove: list[int], list_id: int | None, known: int, *, dry_run: bool
    ) -> None:
        """Stop before writing anything when the removals are more than allowed."""
        limit = self.job.max_deletes_per_run
        allowed = limit.allowed(known)
        if len(to_remove) <= allowed:
            return
        reason = (
            f"job {self.job.name!r} would remove {len(to_remove)} members from audience "
            f"{self.name!r} (list {list_id}), more than max_deletes_per_run allows "
            f"({allowed}: {limit} of the {known} members this job has added); nothing was "
            "removed and nothing added. Check the query (run with --dry-run to list them), "
            "then raise max_deletes_per_run if the removals are meant"
        )
        if dry_run:
            self.stats.too_many_deletes = reason
        else:
            raise TooManyDeletes(reason)

    def add(self, list_id: int, user_ids: list[int], keys: dict[int, str]) -> None:
        """Add these members (user_id -> row key), each recorded once a read shows it."""
        self._write(list_id, user_ids, keys, adding=True)

    def _write(
        self, list_id: int, user_ids: list[int], keys: dict[int, str], *, adding: bool
    ) -> None:
        """Add (or remove) these members, ``concurrency`` at a time; every ``CHUNK`` done
        is read back and recorded as Personyze shows it while the next ones are sent."""
        call: Callable[[int, int], object] = (
            self.client.add_member if adding else self.client.remove_member
        )
        self._go_on()
        answered: dict[int, SyncError | None] = {}
        for user_id, error in self.client.each(call, list_id, user_ids):
            answered[user_id] = error
            self._held()  # a lost lease stops the chunk too: what is not started never is
            if len(answered) == CHUNK:
                self._confirm(list_id, answered, keys, adding=adding)
                answered = {}
                self._go_on()
        if answered:
            self._confirm(list_id, answered, keys, adding=adding)

    def _confirm(
        self,
        list_id: int,
        answered: dict[int, SyncError | None],
        keys: dict[int, str],
        *,
        adding: bool,
    ) -> None:
        """Read these members back; record what the list shows, stop on what it lacks."""
        present = self.client.members_among(list_id, list(answered))
        done = [u for u in answered if (u in present) == adding]
        if adding:
            self.state.added({u: keys[u] for u in done})
            self.stats.sent += len(done)
        else:
            self.state.removed(done)
            self.stats.deleted += len(done)
        self._observe("sent" if adding else "deleted", len(done))
        failure: SyncError | None = None
        kept: list[int] = []  # removals Personyze answered 2xx for, yet still holds
        for u, error in answered.items():
            if u in done:
                continue
            if adding and user_not_found(error):
                self.stats.waiting += 1  # deleted in Personyze since the users job ran
                continue
            self.stats.unresolved += 1  # not shown yet: the next run sends it again
            failure = failure or error
            if not adding and error is None:
                kept.append(u)
        if failure is not None:
            self._fail(list_id, failure)
        if kept:
            raise FatalError(
                f"Personyze answered the removal of {len(kept)} members of audience "
                f"{self.name!r} (list {list_id}) but still holds them (user_id "
                f"{', '.join(map(str, kept[:5]))}): removing a member is not documented "
                "and this service does not do it as personyze-sync infers; use sync: add"
            )

    def _fail(self, list_id: int, error: SyncError) -> None:
        if isinstance(error, RejectedError):
            if not self.client.list_exists(list_id):
                raise FatalError(
                    f"audience {self.name!r} (list {list_id}) was deleted in Personyze while "
                    f"job {self.job.name} ran: run personyze-sync checkpoint reset -c CONFIG "
                    f"{self.job.name} to make it anew"
                )
            raise FatalError(f"Personyze refused a member of audience {self.name!r}: {error}")
        raise error

    def _go_on(self) -> None:
        if self._stop.is_set():
            raise Stopped("stopped; members confirmed so far are recorded")
        self._held()

    def _held(self) -> None:
        if self.lease is not None and self.lease.lost.is_set():
            raise LeaseLost(f"job {self.job.name}: its lease was lost; another process runs it")

    def _observe(self, outcome: str, count: int) -> None:
        observer = self.wiring.observer
        if observer is not None and count:
            observer.rows_done(self.job.name, outcome, count)


def run_audience(
    wiring: Wiring, job: JobSettings, options: RunOptions, lease: Lease | None
) -> RunStats:
    """One run of an audience job under its lease; logs one summary line."""
    began = time.monotonic()
    try:
        stats = AudienceRun(wiring, job, lease).run(options)
    except SyncError as exc:
        outcome = "stopped" if isinstance(exc, Stopped) else "failed"
        log.log(
            logging.WARNING if outcome == "stopped" else logging.ERROR,
            "run %s",
            outcome,
            extra={"job": job.name, "kind": options.kind, "outcome": outcome, "error": str(exc)},
        )
        raise
    log.info(
        "run finished",
        extra={
            "job": job.name,
            "kind": options.kind,
            "outcome": "success",
            "dry_run": options.dry_run,
            "rows_read": stats.read,
            "members_added": stats.sent,
            "members_unchanged": stats.unchanged,
            "members_removed": stats.deleted,
            "rows_waiting": stats.waiting,
            "rows_unresolved": stats.unresolved,
            "seconds": round(time.monotonic() - began, 3),
        },
    )
    return stats
