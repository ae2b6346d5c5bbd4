"""Build the parts of a sync from a validated config, and run jobs with them.

This is where the world is wired in: database engines, the HTTP transport, the
thread pool and the clock. The CLI and the scheduler only call :class:`App`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from sqlalchemy import Engine

from sync.config import Config, JobSettings, redact_url
from sync.databases import source_engine
from sync.errors import ConfigError, Stopped, SyncError
from sync.extract.query import Position
from sync.extract.reader import SourceReader
from sync.load.client import PersonyzeClient
from sync.load.writer import Writer
from sync.mapping import Mapper
from sync.runner import JobRun, Progress, RunObserver, RunOptions, RunStats
from sync.state.records import Collision, RunRecord, StoredRejection
from sync.state.store import StateStore, state_engine


@dataclass(frozen=True)
class JobStatus:
    name: str
    checkpoint: Position | None
    runs: list[RunRecord]
    rows_known: int
    collisions: list[Collision]
    lag_s: float | None
    rejections: list[StoredRejection]  # with Personyze's (or the mapper's) reasons

    @property
    def rejected(self) -> int:
        return len(self.rejections)


log = logging.getLogger(__name__)


class App:
    """One config's jobs, state store and Personyze client."""

    def __init__(
        self,
        config: Config,
        *,
        transport: httpx.BaseTransport | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        observer: RunObserver | None = None,
        on_response: Callable[[int | None, float], None] | None = None,
    ) -> None:
        self.config = config
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
                    wall=self._wall,
                    on_response=self._on_response,
                )
            return self._client

    def _backoff(self, attempt: int) -> float:
        settings = self.config.personyze
        return float(min(settings.backoff_initial_s * 2 ** (attempt - 1), settings.backoff_max_s))

    def engine(self, job: JobSettings) -> Engine:
        url = job.source.url.get_secret_value()
        with self._lock:
            if url not in self._engines:
                self._engines[url] = source_engine(url)
            return self._engines[url]

    def reader(self, job: JobSettings) -> SourceReader:
        """The job's reader, its table reflected once for the life of this app."""
        with self._lock:
            reader = self._readers.get(job.name)
        if reader is None:
            reader = SourceReader(self.engine(job), job.source, Mapper(job).source_columns)
            with self._lock:
                self._readers[job.name] = reader
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

    @contextmanager
    def job_run(self, job: JobSettings, *, dry_run: bool = False) -> Iterator[JobRun]:
        """A run of ``job`` wired to this app's parts; its sending threads end with it."""
        concurrency = self.config.personyze.concurrency
        with ThreadPoolExecutor(concurrency, thread_name_prefix=f"send-{job.name}") as pool:
            writer = (
                None
                if dry_run
                else Writer(
                    self.client,
                    pool,
                    max_rounds=self.config.personyze.max_attempts,
                    wall=self._wall,
                    sleep=self._sleep,
                    stop=self.stopping,
                    backoff=self._backoff,
                )
            )
            yield JobRun(
                job,
                reader=self.reader(job),
                mapper=Mapper(job),
                store=self.store,
                writer=writer,
                stop=self.stopping,
                observer=self._observer,
            )

    def run(
        self,
        job: JobSettings,
        options: RunOptions,
        progress: Callable[[int], Progress] | None = None,
    ) -> RunStats:
        """One run of one job; ``progress(total)`` may return a per-batch callback.

        Logs one summary line whatever happens.
        """
        started, began = False, time.monotonic()
        try:
            with self.job_run(job, dry_run=options.dry_run) as run:
                tick = progress(run.pending_total(options)) if progress else None
                started = True  # from here on the run records its own outcome
                stats = run.run(options, tick)
        except SyncError as exc:
            if not started and not options.dry_run:
                self._record_failure(job, options.kind, exc)
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
                "collisions": stats.collisions,
                "seconds": round(time.monotonic() - began, 3),
            },
        )
        return stats

    def _record_failure(self, job: JobSettings, kind: str, error: SyncError) -> None:
        """A run that failed before it began (source unreachable, not as configured)."""
        try:
            run_id = self.store.start_run(job.name, kind)
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
        self.store.set_checkpoint(job.name, position)
        return position

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
        self.client.check_key()
        lines.append("personyze: API key accepted")
        return lines

    def status(self) -> list[JobStatus]:
        out = []
        for job in self.config.jobs:
            checkpoint = self.store.checkpoint(job.name)
            out.append(
                JobStatus(
                    name=job.name,
                    checkpoint=checkpoint,
                    runs=self.store.runs(job.name),
                    rows_known=self.store.row_count(job.name),
                    collisions=self.store.collisions(job.name),
                    lag_s=self._lag(checkpoint),
                    rejections=self.store.rejections(job.name),
                )
            )
        return out

    # -- rejected rows -----------------------------------------------------------

    def rejections(self, job: JobSettings) -> list[StoredRejection]:
        """``job``'s rejected rows, oldest first, with the reasons they were refused."""
        return self.store.rejections(job.name)

    def purge_rejections(self, job: JobSettings, keys: Sequence[str] = ()) -> list[str]:
        """Drop ``job``'s rejected rows (those with ``keys``, or all): never retried again.

        Returns the keys dropped. A key that is not a rejected row of the job is a
        usage error, and then nothing is dropped.
        """
        stored = [r.key for r in self.store.rejections(job.name)]
        if keys:
            unknown = [k for k in dict.fromkeys(keys) if k not in stored]
            if unknown:
                raise ConfigError(
                    f"job {job.name}: no rejected row with key "
                    + ", ".join(repr(k) for k in unknown)
                    + "; nothing was dropped (see: rejected list)"
                )
            stored = [k for k in stored if k in set(keys)]
        self.store.drop_rejections(job.name, stored)
        log.info("rejected rows dropped", extra={"job": job.name, "rows": len(stored)})
        return stored

    def _lag(self, checkpoint: Position | None) -> float | None:
        if checkpoint is None or not isinstance(checkpoint.cursor, datetime):
            return None
        cursor = checkpoint.cursor
        if cursor.tzinfo is None:
            cursor = cursor.replace(tzinfo=UTC)
        return max(0.0, self._wall() - cursor.timestamp())


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
