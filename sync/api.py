"""The Python API: load a config, run its jobs, get a typed result of each.

For programs and orchestrators (Dagster, Airflow, Prefect: see ``examples/``) that run
a sync after their own work; the CLI's ``once`` and ``backfill`` go through it too, so
both are one code path::

    from sync import Sync

    with Sync("personyze-sync.yaml") as sync:
        result = sync.once("customers")
    result.raise_for_failure()
    print(result["customers"].sent)

A :class:`Sync` holds one config's connections (state store, Personyze client, source
engines) for as many runs as it is asked for; each run takes its jobs' leases as any
run does, so it never runs beside a daemon's run of the same job.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from sync.admin import parse_cursor
from sync.config import load_config as read_file
from sync.config.jobs import JobSettings
from sync.config.load import Config, parse_config
from sync.errors import ConfigError, Stopped, SyncError
from sync.logs import secrets_of, set_secrets
from sync.model import Position, RunOptions, RunStats
from sync.run import run_all, run_job
from sync.run.parts import ProgressFor
from sync.run.shard import run_shard
from sync.wiring import Wiring

Outcome = Literal["success", "failed", "stopped"]


def load_config(
    config: str | Path | Mapping[str, Any], *, environ: Mapping[str, str] | None = None
) -> Config:
    """A checked config, from a YAML file or from a dict shaped as the file is (relative
    paths in a dict are taken from the working directory). ``environ`` stands for the
    environment the config's ``${VAR}`` and key settings read (default: ``os.environ``).
    Every problem is raised at once as a :class:`~sync.errors.ConfigError`."""
    env = os.environ if environ is None else environ
    if isinstance(config, Mapping):
        text = yaml.safe_dump(dict(config), sort_keys=False)
        return parse_config(text, source="<dict>", environ=env, base_dir=Path.cwd())
    return read_file(config, env)


@dataclass(frozen=True)
class RejectedRow:
    """A row Personyze (or the mapping) refused in this run, kept and retried later."""

    key: str
    reason: str


@dataclass(frozen=True)
class JobResult:
    """What one run of one job did. A sharded job's counts add up its shards'."""

    job: str
    outcome: Outcome
    read: int = 0  # rows read from the source, retries included
    sent: int = 0  # rows Personyze acknowledged (an audience: members added)
    unchanged: int = 0  # rows as Personyze last acknowledged them: not sent
    rejected: int = 0
    deleted: int = 0  # users or products deleted; an audience: members removed
    unresolved: int = 0  # sent without a certain answer: the next run reconciles them
    waiting: int = 0  # an audience's rows whose users do not exist yet
    rejected_rows: tuple[RejectedRow, ...] = ()
    checkpoints: Mapping[str, Position | None] = field(default_factory=dict)  # by part
    run_ids: Mapping[str, int] = field(default_factory=dict)  # by part: ``runs JOB ID``
    error: SyncError | None = None
    stats: RunStats | None = None  # everything the run counted (None if it failed)

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    @property
    def checkpoint(self) -> Position | None:
        """The checkpoint of a job that is not sharded (see ``checkpoints`` otherwise)."""
        return self.checkpoints.get(self.job)


@dataclass(frozen=True)
class SyncResult:
    """The result of each job a call ran, by name."""

    jobs: Mapping[str, JobResult]
    dry_run: bool = False

    def __getitem__(self, job: str) -> JobResult:
        return self.jobs[job]

    def __iter__(self) -> Iterator[JobResult]:
        return iter(self.jobs.values())

    @property
    def ok(self) -> bool:
        """Every job succeeded (and a dry run found no run that would stop)."""
        would_stop = self.dry_run and any(r.stats and r.stats.too_many_deletes for r in self)
        return all(r.ok for r in self) and not would_stop

    def raise_for_failure(self) -> None:
        """Raise the first failed job's error (an orchestrator's run then fails)."""
        for result in self:
            if result.error is not None:
                raise result.error

    def outcomes(self) -> dict[str, RunStats | SyncError]:
        """Each job's stats or error, as the CLI renders them."""
        return {r.job: r.error or r.stats or RunStats() for r in self}


class Sync:
    """One config's connections, for as many runs as asked; close it (or use ``with``).

    ``transport``: an httpx transport for the Personyze client (tests, proxies).
    """

    def __init__(
        self,
        config: Config | str | Path | Mapping[str, Any],
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        path = Path(config) if isinstance(config, str | Path) else None
        checked = config if isinstance(config, Config) else load_config(config)
        set_secrets(secrets_of(checked))  # masked in every log line of ours
        self._wiring = Wiring(checked, transport=transport, config_path=path)
        self._owned = True

    @classmethod
    def on(cls, wiring: Wiring) -> Sync:
        """On wiring made elsewhere (the CLI's), which its maker closes."""
        sync = cls.__new__(cls)
        sync._wiring, sync._owned = wiring, False
        return sync

    @property
    def config(self) -> Config:
        return self._wiring.config

    def once(self, *jobs: str, dry_run: bool = False) -> SyncResult:
        """One incremental run of each job named (default: every job of the config)."""
        chosen = self._wiring.jobs(jobs)
        results = run_all(self._wiring, chosen, RunOptions(kind="once", dry_run=dry_run))
        return self._result(results, dry_run=dry_run)

    def dry_run(self, *jobs: str) -> SyncResult:
        """What :meth:`once` would send and delete (``stats.would_send``...): nothing is."""
        return self.once(*jobs, dry_run=True)

    def backfill(
        self,
        job: str | None = None,
        *,
        since: str | None = None,
        full: bool = False,
        dry_run: bool = False,
        shard: int | None = None,
        progress: ProgressFor | None = None,
    ) -> SyncResult:
        """A history load of ``job`` (default: the config's only job): from its checkpoint,
        from the cursor value ``since`` (text, as the CLI takes it), or (``full``) from
        the start, sending only what changed. ``shard``: that shard of a sharded job
        only (one pod of a Kubernetes Indexed Job). ``progress`` is told each part's
        total rows and returns its tick (the CLI's bar)."""
        if since is not None and full:
            raise ConfigError("since and full exclude each other")
        settings = self._the_job(job)
        start = None
        if since is not None:
            start = Position(parse_cursor(self._wiring, settings, since), None)
        options = RunOptions(kind="backfill", dry_run=dry_run, start=start, full=full)
        result: RunStats | SyncError
        try:
            if shard is None:
                result = run_job(self._wiring, settings, options, progress)
            else:
                result = run_shard(self._wiring, settings, options, progress, shard=shard)
        except SyncError as exc:
            result = exc
        return self._result({settings.name: result}, dry_run=dry_run)

    def stop(self) -> None:
        """Ask the runs going on to stop after their batch in flight (from any thread)."""
        self._wiring.stopping.set()

    def close(self) -> None:
        if self._owned:
            self._wiring.close()

    def __enter__(self) -> Sync:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the results -----------------------------------------------------------------

    def _the_job(self, name: str | None) -> JobSettings:
        if name is not None:
            return self.config.job(name)
        if len(self.config.jobs) == 1:
            return self.config.jobs[0]
        names = ", ".join(j.name for j in self.config.jobs)
        raise ConfigError(f"name the job: the config has {len(self.config.jobs)} ({names})")

    def _result(self, results: Mapping[str, RunStats | SyncError], *, dry_run: bool) -> SyncResult:
        return SyncResult(
            {name: self._job_result(name, r, dry_run) for name, r in results.items()},
            dry_run=dry_run,
        )

    def _job_result(self, name: str, result: RunStats | SyncError, dry_run: bool) -> JobResult:
        checkpoints: dict[str, Position | None] = {}
        run_ids: dict[str, int] = {}
        try:
            for part, _shard in self._wiring.parts(self.config.job(name)):
                state = self._wiring.store.part(part)
                checkpoints[part] = state.checkpoint()
                runs = [] if dry_run else state.runs(limit=1)
                if runs:
                    run_ids[part] = runs[0].id
        except SyncError:  # the state store is what failed: the run's error says so
            checkpoints, run_ids = {}, {}
        if isinstance(result, SyncError):
            outcome: Outcome = "stopped" if isinstance(result, Stopped) else "failed"
            return JobResult(name, outcome, checkpoints=checkpoints, run_ids=run_ids, error=result)
        return JobResult(
            name,
            "success",
            read=result.read,
            sent=result.sent,
            unchanged=result.unchanged,
            rejected=result.rejected,
            deleted=result.deleted,
            unresolved=result.unresolved,
            waiting=result.waiting,
            rejected_rows=tuple(
                RejectedRow(str(r.get("key")), str(r.get("reason"))) for r in result.rejected_rows
            ),
            checkpoints=checkpoints,
            run_ids=run_ids,
            stats=result,
        )
