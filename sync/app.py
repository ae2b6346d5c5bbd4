"""Build the parts of a sync from a validated config, and run jobs with them.

This is where the world is wired in: database engines, the HTTP transport, the
thread pool and the clock. The CLI and the scheduler only call :class:`App`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine

from sync.adopt import Adopter, AdoptionSummary, Estimate, adopt_or_refuse
from sync.config.jobs import JobSettings
from sync.config.load import Config
from sync.config.urls import redact_url
from sync.databases import source_engine
from sync.errors import ConfigError, FatalError, Stopped, SyncError
from sync.extract.query import Position, Shard
from sync.extract.reader import SourceReader
from sync.load.client import PersonyzeClient
from sync.load.writer import SenderThreads, Writer
from sync.logs import redact
from sync.mapping import Mapper
from sync.processes import LogSetup, run_in_processes
from sync.processes import check as processes_check
from sync.runner import JobRun, Progress, RunObserver, RunOptions, RunStats
from sync.state.adoptions import Adoption, Adoptions
from sync.state.leases import Lease
from sync.state.records import Collision, RunRecord, StoredRejection
from sync.state.store import StateStore, state_engine
from sync.verify import DRIFT, SAMPLE, Verifier, VerifyReport, combine


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

    @property
    def rejected(self) -> int:
        return len(self.rejections)


log = logging.getLogger(__name__)


def part_name(job: JobSettings, shard: Shard | None) -> str:
    """What the state store knows a job, or one of its shards, by: ``customers#2/3``."""
    return job.name if shard is None else f"{job.name}#{shard.name}"


def layout(job: JobSettings, shards: int) -> list[tuple[str, Shard | None]]:
    """The parts of ``job`` split into ``shards``: its own name alone when 1."""
    if shards == 1:
        return [(job.name, None)]
    return [(part_name(job, s), s) for s in (Shard(i, shards) for i in range(shards))]


class App:
    """One config's jobs, state store and Personyze client."""

    def __init__(
        self,
        config: Config,
        *,
        transport: httpx.BaseTransport | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        observer: RunObserver | None = None,
        on_response: Callable[[int | None, float], None] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # named in messages that give a command to run
        self.stopping = threading.Event()  # set by a signal: runs end after their batch
        self._transport = transport
        self._wall = wall
        self._sleep = sleep
        self._observer = observer
        self._on_response = on_response
        self._lock = threading.Lock()  # the daemon runs jobs in several threads
        self._engines: dict[str, Engine] = {}
        self._readers: dict[str, SourceReader] = {}
        self._store: StateStore | None = None
        self._client: PersonyzeClient | None = None

    # -- the parts, built on first use ------------------------------------------

    @property
    def store(self) -> StateStore:
        with self._lock:
            if self._store is None:
                url = self.config.state.url.get_secret_value()
                store = StateStore(state_engine(url), self._wall)
                store.create_schema()
                self._store = store
            return self._store

    @property
    def client(self) -> PersonyzeClient:
        with self._lock:
            if self._client is None:
                self._client = PersonyzeClient(
                    self.config.personyze,
                    transport=self._transport,
                    sleep=self._sleep,
                    on_response=self._on_response,
                    mask=redact,
                    stop=self.stopping,
                )
            return self._client

    def engine(self, job: JobSettings) -> Engine:
        url = job.source.url.get_secret_value()
        with self._lock:
            if url not in self._engines:
                self._engines[url] = source_engine(url)
            return self._engines[url]

    def reader(self, job: JobSettings, shard: Shard | None = None) -> SourceReader:
        """The job's (or shard's) reader, its table reflected once for the life of this app."""
        name = part_name(job, shard)
        with self._lock:
            reader = self._readers.get(name)
        if reader is None:
            reader = SourceReader(
                self.engine(job),
                job.source,
                Mapper(job).source_columns,
                delete_when=job.delete_when,
                shard=shard,
            )
            with self._lock:
                self._readers[name] = reader
        return reader

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._store is not None:
            self._store.close()
        for engine in self._engines.values():
            engine.dispose()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- running ---------------------------------------------------------------

    def jobs(self, names: Sequence[str] = ()) -> list[JobSettings]:
        return [self.config.job(n) for n in names] if names else list(self.config.jobs)

    def parts(self, job: JobSettings) -> list[tuple[str, Shard | None]]:
        """The names the state store knows a job by: the job's, or one per shard."""
        return layout(job, job.shards)

    @contextmanager
    def job_run(
        self,
        job: JobSettings,
        *,
        dry_run: bool = False,
        shard: Shard | None = None,
        lease: Lease | None = None,
    ) -> Iterator[JobRun]:
        """A run of ``job`` wired to this app's parts; its sending threads end with it.

        ``lease``: the run's; every write checks it, and a run that lost it sends no more.
        """
        concurrency = self.config.personyze.concurrency

        def stop() -> bool:
            return self.stopping.is_set() or (lease is not None and lease.lost.is_set())

        with SenderThreads(concurrency, name=f"send-{job.name}", stop=stop) as pool:
            writer = None if dry_run else Writer(self.client, pool, stop=stop, clock=time.monotonic)
            yield JobRun(
                job,
                reader=self.reader(job, shard),
                mapper=Mapper(job),
                store=self.store,
                writer=writer,
                stop=self.stopping,
                observer=self._observer,
                name=part_name(job, shard),
                parts=[name for name, _ in self.parts(job)],
                fence=lease,
                settle_s=self.config.personyze.timeout_s,
            )

    def run(
        self,
        job: JobSettings,
        options: RunOptions,
        progress: Callable[[int], Progress] | None = None,
        *,
        only: Sequence[str] | None = None,
    ) -> RunStats:
        """One run of one job: of each of its shards this process can lease, in turn.

        A part another process holds (a replica on the same PostgreSQL state store) is
        skipped and named in ``RunStats.held_elsewhere``. ``progress(total)`` may return
        a per-batch callback. ``only``: run just the parts of these names.
        """
        if not options.dry_run:
            self.store.claim()  # a SQLite state store serves one process
        self.check_layout(job, record=not options.dry_run)
        parts = [p for p in self.parts(job) if only is None or p[0] in only]
        first = random.randrange(len(parts)) if parts else 0  # replicas spread over shards
        total = RunStats()
        for name, shard in parts[first:] + parts[:first]:
            lease = None if options.dry_run else self.store.lease(name)
            if lease is None and not options.dry_run:
                total.held_elsewhere.append(name)
                log.info("run skipped: another process runs it", extra={"job": name})
                continue
            with lease or nullcontext():
                if lease is not None:  # a reshard may have run since the check above
                    self.check_layout(job, record=False)
                total.add(self._run_part(job, shard, options, progress, lease))
        return total

    def run_in_processes(
        self,
        job: JobSettings,
        options: RunOptions,
        progress: Callable[[int], Progress] | None = None,
        *,
        processes: int,
        logs: LogSetup,
    ) -> RunStats:
        """:meth:`run` with the job's shards spread over ``processes`` new processes."""
        processes_check(self.config, job, processes)
        self.check_layout(job, record=True)
        parts = [name for name, _ in self.parts(job)]
        return run_in_processes(
            self.config,
            job,
            parts,
            options,
            processes=processes,
            stopping=self.stopping,
            logs=logs,
            progress=progress,
        )

    def check_layout(self, job: JobSettings, *, record: bool) -> None:
        """Refuse a number of shards other than the one the job's state is kept in."""
        kept = self.store.shards_of(job.name)
        if kept is None:  # first run, or state kept before shard counts were recorded
            used = self.store.checkpoint(job.name) is not None or self.store.row_count(job.name)
            kept = 1 if used or job.shards == 1 else job.shards
            if record:
                self.store.set_shards(job.name, kept)
        if kept != job.shards:
            raise ConfigError(
                f"job {job.name}: its state is kept in {kept} shard(s) but the config says "
                f"shards: {job.shards}; nothing was run. To change it, stop every replica, then "
                f"run: personyze-sync checkpoint reset -c CONFIG {job.name} --reshard "
                "(identities move to the new shards; each reads from the start and sends "
                "only what changed)"
            )

    def reshard(self, job: JobSettings) -> int:
        """Move the job's state to ``job.shards`` shards; the rows moved."""
        self.store.claim()
        kept = self.store.shards_of(job.name) or 1
        if kept == job.shards:
            return 0
        old = [name for name, _ in layout(job, kept)]
        new = self.parts(job)

        def target(key: str) -> str:
            if len(new) == 1:
                return job.name
            try:
                number = int(Decimal(key))
            except InvalidOperation:
                raise ConfigError(
                    f"job {job.name}: key {key!r} is not a number: shards need a numeric key"
                ) from None
            return new[abs(number) % len(new)][0]

        leases = [self.store.lease(name) for name in old + [n for n, _ in new]]
        try:
            if any(lease is None for lease in leases):
                raise ConfigError(
                    f"job {job.name} is running in another process: stop every replica first"
                )
            moved = sum(self.store.rehome(name, target) for name in old)
            self.store.set_shards(job.name, job.shards)
        finally:
            for lease in leases:
                if lease is not None:
                    lease.release()
        log.info("job resharded", extra={"job": job.name, "from": kept, "to": job.shards})
        return moved

    def _run_part(
        self,
        job: JobSettings,
        shard: Shard | None,
        options: RunOptions,
        progress: Callable[[int], Progress] | None,
        lease: Lease | None = None,
    ) -> RunStats:
        """One run of a job or of one of its shards; logs one summary line whatever happens."""
        started, began = False, time.monotonic()
        name = part_name(job, shard)
        try:
            with self.job_run(job, dry_run=options.dry_run, shard=shard, lease=lease) as run:
                if not options.dry_run:  # before a row that cannot merge is sent

                    def adopt(
                        reader: SourceReader = run.reader, mapper: Mapper = run.mapper
                    ) -> None:
                        adopt_or_refuse(
                            job,
                            [(name, reader)],
                            mapper=mapper,
                            store=self.store,
                            client=self.client,
                            config_path=str(self.config_path or "CONFIG"),
                            requests_per_second=self.config.personyze.requests_per_second,
                            stop=self.stopping,
                        )

                    run.adopt = adopt
                tick = progress(run.pending_total(options)) if progress else None
                started = True  # from here on the run records its own outcome
                stats = run.run(options, tick)
        except SyncError as exc:
            if not started and not options.dry_run:
                self._record_failure(name, options.kind, exc)
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
                "rows_unchanged": stats.skipped,
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

    def _record_failure(self, name: str, kind: str, error: SyncError) -> None:
        """A run that failed before it began (source unreachable, not as configured)."""
        try:
            run_id = self.store.start_run(name, kind)
            self.store.finish_run(
                run_id, "failed", read=0, sent=0, skipped=0, rejected_count=0, error=str(error)
            )
        except SyncError:
            pass  # the state store is what failed: the error being raised says so

    def parse_cursor(self, job: JobSettings, text: str) -> Any:
        """A ``--since`` / ``--to`` value, typed like the job's cursor column."""
        sample = self.reader(job).max_cursor()
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

    def reset_checkpoint(self, job: JobSettings, to: str | None) -> Position | None:
        position = None if to is None else Position(self.parse_cursor(job, to), None)
        self.store.claim()  # not while a daemon runs on the same SQLite store
        for name, _shard in self.parts(job):
            self.store.set_checkpoint(name, position)
        return position

    def adopt(
        self,
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
        self.store.claim()  # a SQLite state store serves one process
        self.check_layout(job, record=True)
        parts = self.parts(job)
        with ExitStack() as held:
            for name, _ in parts:
                lease = self.store.lease(name)
                if lease is None:
                    raise FatalError(
                        f"job {name} is being run by another process; nothing was adopted: "
                        "run adopt again when that run has finished"
                    )
                held.enter_context(lease)
            adopter = Adopter(
                job,
                [(name, self.reader(job, shard)) for name, shard in parts],
                mapper=Mapper(job),
                store=self.store,
                client=self.client,
                stop=self.stopping,
                clock=self._wall,
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

    # -- looking -----------------------------------------------------------------

    def validate(self, *, connect: bool) -> list[str]:
        """What was checked, line by line; raises on the first thing that is wrong."""
        lines = [
            f"config: {len(self.config.jobs)} job(s): "
            + ", ".join(j.name for j in self.config.jobs)
        ]
        if not connect:
            return lines
        self.store.checkpoint(self.config.jobs[0].name)
        state_url = redact_url(self.config.state.url.get_secret_value())
        lines.append(f"state store: reachable ({state_url})")
        for job in self.config.jobs:
            reader = self.reader(job)
            nulls = reader.null_cursor_count()
            lines.append(
                f"job {job.name}: source reachable, columns " + ", ".join(reader.columns) + " exist"
            )
            if nulls:
                lines.append(
                    f"job {job.name}: WARNING {nulls} row(s) have a NULL "
                    f"{job.source.cursor!r} and will never be synced"
                )
        self.client.check_key(once=True)  # a check: one attempt, no retries
        lines.append("personyze: API key accepted")
        return lines

    def status(self) -> list[JobStatus]:
        """Per job, or per shard of a sharded job; with the replica running it, if any."""
        held = {lease.name: lease for lease in self.store.leases()}
        out = []
        for job in self.config.jobs:
            for name, _shard in self.parts(job):
                checkpoint = self.store.checkpoint(name)
                lease = held.get(name)
                out.append(
                    JobStatus(
                        name=name,
                        checkpoint=checkpoint,
                        runs=self.store.runs(name),
                        rows_known=self.store.row_count(name),
                        collisions=self.store.collisions(name),
                        lag_s=self._lag(checkpoint),
                        rejections=self.store.rejections(name),
                        held_by=None if lease is None else lease.holder,
                        held_since=None if lease is None else lease.since,
                        adoption=Adoptions(self.store).get(name),
                        duplicates=self.store.duplicates(name),
                    )
                )
        return out

    # -- rejected rows -----------------------------------------------------------

    def rejections(self, job: JobSettings) -> list[StoredRejection]:
        """``job``'s rejected rows (of every shard), with the reasons they were refused."""
        found = [r for name, _ in self.parts(job) for r in self.store.rejections(name)]
        return sorted(found, key=lambda r: r.first_at)

    def purge_rejections(self, job: JobSettings, keys: Sequence[str] = ()) -> list[str]:
        """Drop ``job``'s rejected rows (those with ``keys``, or all): never retried again.

        Returns the keys dropped. A key that is not a rejected row of the job is a
        usage error, and then nothing is dropped.
        """
        stored = [r.key for r in self.rejections(job)]
        if keys:
            unknown = [k for k in dict.fromkeys(keys) if k not in stored]
            if unknown:
                raise ConfigError(
                    f"job {job.name}: no rejected row with key "
                    + ", ".join(repr(k) for k in unknown)
                    + "; nothing was dropped (see: rejected list)"
                )
            stored = [k for k in stored if k in set(keys)]
        self.store.claim()
        for name, _shard in self.parts(job):
            self.store.drop_rejections(name, stored)
        log.info("rejected rows dropped", extra={"job": job.name, "rows": len(stored)})
        return stored

    def _lag(self, checkpoint: Position | None) -> float | None:
        if checkpoint is None or not isinstance(checkpoint.cursor, datetime):
            return None
        cursor = checkpoint.cursor
        if cursor.tzinfo is None:
            cursor = cursor.replace(tzinfo=UTC)
        return max(0.0, self._wall() - cursor.timestamp())

    # -- verify ------------------------------------------------------------------------

    def verify(
        self, job: JobSettings, *, sample: int | None, everything: bool, repair: bool
    ) -> VerifyReport:
        """Read ``job``'s users back from Personyze and compare them with the source now.

        ``sample`` rows of the identity map picked at random (default 100, shared out
        among the job's shards), or ``everything``: every source row, a batch at a time.
        Only GETs are sent unless ``repair``: then the rows found drifting are resent
        (users gone from Personyze are created anew) and checked again, under the
        job's leases, so never while a run of the job goes on elsewhere.
        """
        if everything and sample is not None:
            raise ConfigError("--sample and --all exclude each other")
        if sample is not None and sample < 1:
            raise ConfigError(f"--sample must be at least 1, got {sample}")
        count = None if everything else sample or SAMPLE
        parts = self.parts(job)
        reports: list[VerifyReport] = []
        with ExitStack() as held:
            if repair:
                self.store.claim()  # a SQLite state store serves one process
                for name, _ in parts:
                    lease = self.store.lease(name)
                    if lease is None:
                        raise FatalError(
                            f"job {name} is being run by another process; nothing was "
                            "resent: try verify --repair again when that run has finished"
                        )
                    held.enter_context(lease)
            for i, (name, shard) in enumerate(parts):
                share = None if count is None else count // len(parts) + (i < count % len(parts))
                if share == 0:
                    continue
                verifier = Verifier(
                    job,
                    name=name,
                    reader=self.reader(job, shard),
                    store=self.store,
                    client=self.client,
                    stop=self.stopping,
                )
                report = verifier.everything() if share is None else verifier.sample(share)
                if repair:

                    def resend(
                        rows: list[dict[str, Any]], forget: list[str], shard: Shard | None = shard
                    ) -> RunStats:
                        with self.job_run(job, shard=shard) as run:
                            return run.resend(rows, forget=forget)

                    report = verifier.repair(report, resend)
                reports.append(report)
        whole = combine(job.name, reports, sample=count)
        log.info(
            "verify finished",
            extra={
                "job": job.name,
                "mode": whole.mode,
                "rows_checked": whole.checked,
                "rows_in_step": whole.in_step,
                **{f"rows_{kind}": whole.count(kind) for kind in DRIFT},
                "rows_resent": whole.repair.resent if whole.repair else 0,
                "drift_remaining": whole.drift_remaining,
            },
        )
        return whole


def run_all(
    app: App,
    jobs: Sequence[JobSettings],
    options: RunOptions,
    progress: Callable[[int], Progress] | None = None,
) -> dict[str, RunStats | SyncError]:
    """Run each job once; one job's failure does not stop the others."""
    results: dict[str, RunStats | SyncError] = {}
    for job in jobs:
        try:
            results[job.name] = app.run(job, options, progress)
        except SyncError as exc:
            results[job.name] = exc
    return results
