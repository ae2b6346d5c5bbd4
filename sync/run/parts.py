"""Running a job: each of its parts (the job itself, or each shard) under its lease.

:func:`run_job` is the whole of one run: check the job's layout (its state is kept in
as many shards as the config says), take each part's lease, build its run
(:class:`sync.run.job.JobRun`) from the wiring's parts, run it, log one summary line.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

from sync.adopt import adopt_or_refuse
from sync.config.jobs import JobSettings
from sync.errors import ConfigError, Stopped, SyncError
from sync.mapping import Mapper
from sync.model import Progress, RunOptions, RunStats, Shard
from sync.run.audience import run_audience
from sync.run.job import JobRun
from sync.state.deliveries import retention_of
from sync.state.leases import Lease
from sync.state.store import StateStore
from sync.wiring import Wiring, part_name

log = logging.getLogger(__name__)

ProgressFor = Callable[[int], Progress]  # told a part's total rows, returns its tick


def check_layout(store: StateStore, job: JobSettings, *, record: bool) -> None:
    """Refuse a number of shards other than the one the job's state is kept in."""
    kept = store.shards_of(job.name)
    if kept is None:  # first run, or state kept before shard counts were recorded
        unsharded = store.part(job.name)
        used = unsharded.checkpoint() is not None or unsharded.row_count()
        kept = 1 if used or job.shards == 1 else job.shards
        if record:
            store.set_shards(job.name, kept)
    if kept != job.shards:
        raise ConfigError(
            f"job {job.name}: its state is kept in {kept} shard(s) but the config says "
            f"shards: {job.shards}; nothing was run. To change it, stop every replica, then "
            f"run: personyze-sync checkpoint reset -c CONFIG {job.name} --reshard "
            "(identities move to the new shards; each reads from the start and sends "
            "only what changed)"
        )


@contextmanager
def job_run(
    wiring: Wiring,
    job: JobSettings,
    *,
    dry_run: bool = False,
    shard: Shard | None = None,
    lease: Lease | None = None,
) -> Iterator[JobRun]:
    """A run of ``job`` (or of one shard) wired to ``wiring``'s parts.

    ``lease``: the run's; every write checks it, and a run that lost it sends no more.
    """
    name = part_name(job, shard)
    history = retention_of(job.history or wiring.config.state.history)
    parts = [n for n, _ in wiring.parts(job)]
    part = wiring.store.part(name, parts=parts, fence=lease, history=history)
    reader, mapper = wiring.reader(job, shard), Mapper(job)

    def adopt() -> None:  # before a row that cannot merge is sent
        adopt_or_refuse(
            job,
            [(name, reader)],
            mapper=mapper,
            store=wiring.store,
            client=wiring.client,
            config_path=str(wiring.config_path or "CONFIG"),
            requests_per_second=wiring.config.personyze.requests_per_second,
            stop=wiring.stopping,
        )

    with nullcontext(None) if dry_run else wiring.writer(job, lease) as writer:
        yield JobRun(
            job,
            reader=reader,
            mapper=mapper,
            part=part,
            writer=writer,
            stop=wiring.stopping,
            observer=wiring.observer,
            adopt=None if dry_run else adopt,
            settle_s=wiring.config.personyze.timeout_s,
        )


def run_job(
    wiring: Wiring,
    job: JobSettings,
    options: RunOptions,
    progress: ProgressFor | None = None,
    *,
    only: Sequence[str] | None = None,
) -> RunStats:
    """One run of one job: of each of its shards this process can lease, in turn.

    A part another process holds (a replica on the same PostgreSQL state store) is
    skipped and named in ``RunStats.held_elsewhere``. ``progress(total)`` may return
    a per-batch callback. ``only``: run just the parts of these names.
    """
    store = wiring.store
    if not options.dry_run:
        store.claim()  # a SQLite state store serves one process
    check_layout(store, job, record=not options.dry_run)
    parts = [p for p in wiring.parts(job) if only is None or p[0] in only]
    first = random.randrange(len(parts)) if parts else 0  # replicas spread over shards
    total = RunStats()
    for name, shard in parts[first:] + parts[:first]:
        lease = None if options.dry_run else store.lease(name)
        if lease is None and not options.dry_run:
            total.held_elsewhere.append(name)
            log.info("run skipped: another process runs it", extra={"job": name})
            continue
        with lease or nullcontext():
            if lease is not None:  # a reshard may have run since the check above
                check_layout(store, job, record=False)
            if job.object == "audience":  # a set sync: no cursor, no row pipeline
                if not options.only_rejected:  # it rejects no row: nothing to retry
                    total.add(run_audience(wiring, job, options, lease))
            else:
                total.add(_run_part(wiring, job, shard, options, progress, lease))
    return total


def run_all(
    wiring: Wiring,
    jobs: Sequence[JobSettings],
    options: RunOptions,
    progress: ProgressFor | None = None,
) -> dict[str, RunStats | SyncError]:
    """Run each job once; one job's failure does not stop the others."""
    results: dict[str, RunStats | SyncError] = {}
    for job in jobs:
        try:
            results[job.name] = run_job(wiring, job, options, progress)
        except SyncError as exc:
            results[job.name] = exc
    return results


def _run_part(
    wiring: Wiring,
    job: JobSettings,
    shard: Shard | None,
    options: RunOptions,
    progress: ProgressFor | None,
    lease: Lease | None,
) -> RunStats:
    """One run of a job or of one of its shards; logs one summary line whatever happens."""
    started, began = False, time.monotonic()
    name = part_name(job, shard)
    try:
        with job_run(wiring, job, dry_run=options.dry_run, shard=shard, lease=lease) as run:
            tick = progress(run.pending_total(options)) if progress else None
            started = True  # from here on the run records its own outcome
            stats = run.run(options, tick)
    except SyncError as exc:
        if not started and not options.dry_run:
            _record_failure(wiring, name, options.kind, exc)
        outcome = "stopped" if isinstance(exc, Stopped) else "failed"
        log.log(
            logging.WARNING if outcome == "stopped" else logging.ERROR,
            "run %s",
            outcome,
            extra={
                "job": job.name,
                "kind": options.kind,
                "outcome": outcome,
                "error": str(exc),
                "seconds": round(time.monotonic() - began, 3),
            },
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
            "rows_sent": stats.sent,
            "rows_unchanged": stats.unchanged,
            "rows_rejected": stats.rejected,
            "rows_deleted": stats.deleted,
            "rows_missing": stats.missing,
            "rows_vanished": stats.vanished,
            "rows_unresolved": stats.unresolved,
            "collisions": stats.collisions,
            "seconds": round(time.monotonic() - began, 3),
        },
    )
    return stats


def _record_failure(wiring: Wiring, name: str, kind: str, error: SyncError) -> None:
    """A run that failed before it began (source unreachable, not as configured)."""
    try:
        part = wiring.store.part(name)
        run_id = part.start_run(kind)
        part.finish_run(run_id, "failed", read=0, sent=0, unchanged=0, rejected=0, error=str(error))
    except SyncError:
        pass  # the state store is what failed: the error being raised says so
