"""What the commands that do not sync do: check a config, show state, fix it.

``validate``, ``status``, ``rejected list|purge``, ``checkpoint reset`` (and
``--reshard``) and ``adopt``, each a function of the wiring's parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sync.adopt import Adopter, AdoptionSummary, Estimate, duration_text
from sync.checks import Check, config_check, connect_checks
from sync.config.jobs import JobSettings
from sync.errors import ConfigError, FatalError
from sync.mapping import Mapper
from sync.model import Position, Shard
from sync.run.parts import check_layout
from sync.state.adoptions import Adoption, Adoptions
from sync.state.audiences import AudienceState, AudienceStatus, audience_status
from sync.state.records import Collision, RunRecord, StoredRejection
from sync.state.shards import shard_target
from sync.wiring import Wiring, layout

# what the commands return, and the CLI renders
__all__ = [
    "Adoption",
    "AdoptionSummary",
    "AudienceStatus",
    "Check",
    "Estimate",
    "JobStatus",
    "RunRecord",
    "StoredRejection",
    "adopt",
    "duration_text",
    "parse_cursor",
    "purge_rejections",
    "rejections",
    "reset_checkpoint",
    "reshard",
    "status",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobStatus:
    name: str
    checkpoint: Position | None
    runs: list[RunRecord]
    rows_known: int
    collisions: list[Collision]
    lag_s: float | None
    rejections: list[StoredRejection]  # with Personyze's (or the mapper's) reasons
    held_by: str | None = None  # the process running it now (host:pid), if any
    held_since: float | None = None
    adoption: Adoption | None = None  # how its identity map was first built (None: by its runs)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)  # key, user, kept
    audience: AudienceStatus | None = None  # an audience job's list, members, waiting rows
    detect: str = "cursor"  # how the job finds changes: "cursor" or "diff"
    last_compared: float | None = None  # detect: diff: when its last pass over every row ended
    object: str = "users"  # what the job feeds: users, products or audience
    shard: Shard | None = None  # which shard of its job this part is (None: not sharded)
    rows_done: int | None = None  # sent, unchanged and rejected by its latest run so far
    rows_per_second: float | None = None  # that run's rate (None: it never ran, or died)

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    @property
    def running(self) -> bool:
        """Its latest run goes on now (in ``held_by``), not one left behind by a death."""
        return bool(self.runs) and self.runs[0].outcome == "running" and self.held_by is not None


def parse_cursor(wiring: Wiring, job: JobSettings, text: str) -> Any:
    """A ``--since`` / ``--to`` value, typed like the job's cursor column."""
    sample = wiring.reader(job).max_cursor()
    try:
        if isinstance(sample, datetime):
            value = datetime.fromisoformat(text)
            if sample.tzinfo is not None and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return value
        if isinstance(sample, date):
            return date.fromisoformat(text)
        if isinstance(sample, bool | int):
            return int(text)
        if isinstance(sample, Decimal | float):
            return Decimal(text)
    except (ValueError, InvalidOperation):
        raise ConfigError(
            f"{text!r} is not a valid value for cursor {job.source.cursor!r} "
            f"(a {type(sample).__name__})"
        ) from None
    return text


def reset_checkpoint(wiring: Wiring, job: JobSettings, to: str | None) -> Position | None:
    if job.object == "audience" and to is not None:
        raise ConfigError(
            f"job {job.name} feeds an audience: it reads its whole query each run and keeps "
            f"no cursor, so --to means nothing. checkpoint reset {job.name} (without --to) "
            "forgets its list and its members"
        )
    position = None if to is None else Position(parse_cursor(wiring, job, to), None)
    wiring.store.claim()  # not while a daemon runs on the same SQLite store
    for name, _shard in wiring.parts(job):
        wiring.store.part(name).set_checkpoint(position)
    if job.object == "audience":  # its list and members: the next run finds or makes the list
        AudienceState(wiring.store, job.name, clock=wiring.wall).forget()
    return position


@dataclass(frozen=True)
class Resharded:
    before: int  # the shards the job's state was kept in (the same as after: nothing done)
    after: int
    moved: int  # synced rows moved to their new shard


def reshard(wiring: Wiring, job: JobSettings) -> Resharded:
    """Move the job's state to ``job.shards`` shards, each new shard's checkpoint at the
    start (every row is read again; only changed rows are sent). Nothing when the state
    is already kept in that many."""
    store = wiring.store
    store.claim()
    kept = store.shards_of(job.name) or 1
    if kept == job.shards:
        return Resharded(kept, kept, 0)
    old = [name for name, _ in layout(job, kept)]
    new = wiring.parts(job)
    # as the runs will read them: by the key's number, or its hash (the key column says)
    numeric = len(new) == 1 or wiring.reader(job).key_is_numeric
    target = shard_target(job.name, [name for name, _ in new], numeric=numeric)
    leases = [store.lease(name) for name in old + [n for n, _ in new]]
    try:
        if any(lease is None for lease in leases):
            raise ConfigError(
                f"job {job.name} is running in another process: stop every replica first"
            )
        moved = sum(store.rehome(name, target) for name in old)
        for name, _ in new:  # (one may hold a checkpoint from a layout long gone)
            store.part(name).set_checkpoint(None)
        store.set_shards(job.name, job.shards)
    finally:
        for lease in leases:
            if lease is not None:
                lease.release()
    log.info("job resharded", extra={"job": job.name, "from": kept, "to": job.shards})
    return Resharded(kept, job.shards, moved)


def adopt(
    wiring: Wiring,
    job: JobSettings,
    *,
    skip: bool = False,
    confirm: Callable[[Estimate], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    scanned: Callable[[int], None] | None = None,
) -> AdoptionSummary:
    """Adopt the users Personyze already holds into ``job``'s identity map (``adopt``).

    Under every part's lease (FatalError if another process runs the job). A job
    whose adoption is done (or skipped) reads nothing. Otherwise ``confirm`` sees
    the cost first (it raises to refuse); then the adoption runs, or, with ``skip``,
    is recorded as skipped. See :mod:`sync.adopt`.
    """
    if job.object != "users":
        raise ConfigError(
            f"job {job.name} feeds {job.object}: adopt takes over users Personyze holds "
            + (
                "(a product is patched by its internal_id: it needs none)"
                if job.object == "products"
                else "(an audience job finds its list by name and its members by the user_ids "
                "its users job recorded: adopt that job)"
            )
        )
    wiring.store.claim()  # a SQLite state store serves one process
    check_layout(wiring.store, job, record=True)
    parts = wiring.parts(job)
    with ExitStack() as held:
        for name, _ in parts:
            lease = wiring.store.lease(name)
            if lease is None:
                raise FatalError(
                    f"job {name} is being run by another process; nothing was adopted: "
                    "run adopt again when that run has finished"
                )
            held.enter_context(lease)
        adopter = Adopter(
            job,
            [(name, wiring.reader(job, shard)) for name, shard in parts],
            mapper=Mapper(job),
            store=wiring.store,
            client=wiring.client,
            stop=wiring.stopping,
            clock=wiring.wall,
        )
        if not adopter.unfinished():
            return adopter.run()  # reads nothing: says what was done
        estimate = adopter.estimate()
        if confirm is not None:
            confirm(estimate)
        if skip:
            adopter.skip()
            summary = AdoptionSummary(job.name, skipped=True, parts=adopter.states())
        else:
            summary = adopter.run(progress, estimate=estimate, scanned=scanned)
    log.info(
        "adoption finished",
        extra={
            "job": job.name,
            "skipped": skip,
            "rows_wanted": summary.wanted,
            "rows_found": summary.found,
            "rows_in_step": summary.in_step,
            "reads": summary.reads,
            "duplicates": summary.duplicates,
        },
    )
    return summary


def validate(wiring: Wiring, *, connect: bool) -> list[Check]:
    """What was checked, each ok or its problem; with ``connect``, all of
    :func:`sync.checks.connect_checks`, every one whatever the others found."""
    return connect_checks(wiring) if connect else [config_check(wiring)]


def status(wiring: Wiring) -> list[JobStatus]:
    """Per job, or per shard of a sharded job; with the replica running it, if any, and
    the rows its latest run has done (a running run's, as of its last commit)."""
    held = {lease.name: lease for lease in wiring.store.leases()}
    out = []
    for job in wiring.config.jobs:
        for name, shard in wiring.parts(job):
            part = wiring.store.part(name)
            checkpoint = part.checkpoint()
            lease = held.get(name)
            runs = part.runs(PASSES_LOOKED_AT)
            out.append(
                JobStatus(
                    name=name,
                    checkpoint=checkpoint,
                    runs=runs[:RUNS_SHOWN],
                    rows_known=part.row_count(),
                    collisions=part.collisions(),
                    lag_s=_lag(wiring, checkpoint),
                    rejections=part.rejections(),
                    held_by=None if lease is None else lease.holder,
                    held_since=None if lease is None else lease.since,
                    adoption=Adoptions(wiring.store).get(name),
                    duplicates=part.duplicates(),
                    audience=None
                    if job.audience is None
                    else audience_status(wiring.store, name, job.audience),
                    detect=job.source.detect,
                    last_compared=_last_pass(runs) if job.source.detect == "diff" else None,
                    object=job.object,
                    shard=shard,
                    **_rows_done(runs, running=lease is not None, now=wiring.wall()),
                )
            )
    return out


def _rows_done(runs: list[RunRecord], *, running: bool, now: float) -> dict[str, Any]:
    """The latest run's rows done and their rate: a run going on (its lease held) up to
    now, one that ended over its time; a run left "running" by a death has no rate."""
    if not runs:
        return {}
    latest = runs[0]
    done = latest.rows_sent + latest.rows_skipped + latest.rows_rejected
    end = latest.ended_at if latest.ended_at is not None else now if running else None
    if end is None:
        return {"rows_done": done}
    seconds = end - latest.started_at
    return {"rows_done": done, "rows_per_second": done / seconds if seconds > 0 else None}


RUNS_SHOWN = 5  # the latest runs ``status`` shows
PASSES_LOOKED_AT = 50  # the runs searched for a diff job's last finished pass


def _last_pass(runs: list[RunRecord]) -> float | None:
    """When the newest run that read every row (not a retry or a repair) ended well."""
    return next(
        (
            r.ended_at
            for r in runs
            if r.outcome == "success" and r.kind in ("once", "backfill", "scheduled")
        ),
        None,
    )


def _lag(wiring: Wiring, checkpoint: Position | None) -> float | None:
    if checkpoint is None or not isinstance(checkpoint.cursor, datetime):
        return None
    cursor = checkpoint.cursor
    if cursor.tzinfo is None:
        cursor = cursor.replace(tzinfo=UTC)
    return max(0.0, wiring.wall() - cursor.timestamp())


def rejections(wiring: Wiring, job: JobSettings) -> list[StoredRejection]:
    """``job``'s rejected rows (of every shard), with the reasons they were refused."""
    found = [r for name, _ in wiring.parts(job) for r in wiring.store.part(name).rejections()]
    return sorted(found, key=lambda r: r.first_at)


def purge_rejections(wiring: Wiring, job: JobSettings, keys: Sequence[str] = ()) -> list[str]:
    """Drop ``job``'s rejected rows (those with ``keys``, or all): never retried again.

    Returns the keys dropped. A key that is not a rejected row of the job is a
    usage error, and then nothing is dropped.
    """
    stored = [r.key for r in rejections(wiring, job)]
    if keys:
        unknown = [k for k in dict.fromkeys(keys) if k not in stored]
        if unknown:
            raise ConfigError(
                f"job {job.name}: no rejected row with key "
                + ", ".join(repr(k) for k in unknown)
                + "; nothing was dropped (see: rejected list)"
            )
        stored = [k for k in stored if k in set(keys)]
    wiring.store.claim()
    for name, _shard in wiring.parts(job):
        wiring.store.part(name).drop_rejections(stored)
    log.info("rejected rows dropped", extra={"job": job.name, "rows": len(stored)})
    return stored
