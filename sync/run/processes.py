"""One backfill of a sharded job, spread over several processes of this machine.

On a fast network a Python process sends some hundreds of rows a second whatever
its ``concurrency``: httpx's CPU per request and the GIL bound it. A sharded job's parts
are independent (each has its checkpoint and its lease), so ``backfill --processes N``
starts N fresh processes (spawned, not forked: no engine or socket is shared) and
gives each its own share of the parts. This process only starts them, forwards a
stop, shows their progress and adds up what they did.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import queue
import signal
from dataclasses import dataclass
from typing import Any, Literal

from sync.config.jobs import JobSettings
from sync.config.load import Config
from sync.errors import ConfigError, FatalError, Stopped, SyncError
from sync.logs import configure_logging, job_outcome_line, secrets_of
from sync.model import Progress, RunOptions, RunStats
from sync.run.parts import ProgressFor, check_layout, run_job
from sync.signals import child_stops
from sync.wiring import Wiring

POLL_S = 0.2  # how often the parent looks at its children when none has spoken


@dataclass(frozen=True)
class LogSetup:
    """How the parent logs, so its children log the same way (secrets masked too)."""

    fmt: Literal["auto", "json", "text"]
    level: int
    outcomes_by_parent: bool = True  # a part's failure is the parent's to print, once


def check(config: Config, job: JobSettings, processes: int) -> None:
    """Refuse a layout several processes cannot share; say what to change."""
    if config.state.url.get_secret_value().startswith("sqlite"):
        raise ConfigError(
            f"--processes {processes}: a SQLite state store serves one process; "
            "use a PostgreSQL state store (state.url: postgresql+psycopg://...)"
        )
    if job.shards < processes:
        raise ConfigError(
            f"--processes {processes}: job {job.name} has {job.shards} shard(s), and each "
            f"process needs one of its own; set shards: {processes} (or more) in the job "
            f"and run personyze-sync checkpoint reset -c CONFIG {job.name} --reshard"
        )


def share(config: Config, processes: int) -> Config:
    """The config each process runs with: the concurrency divided. The rate ceiling is
    not: it is the account's budget, which the processes share through the state store
    (:mod:`sync.load.budget`), as many as send at the time."""
    personyze = config.personyze
    return config.model_copy(
        update={
            "personyze": personyze.model_copy(
                update={"concurrency": math.ceil(personyze.concurrency / processes)}
            )
        }
    )


def run_in_processes(
    wiring: Wiring,
    job: JobSettings,
    options: RunOptions,
    progress: ProgressFor | None = None,
    *,
    processes: int,
    logs: LogSetup,
) -> RunStats:
    """:func:`run_job` with the job's shards spread over ``processes`` new processes.

    Each child runs every ``processes``-th part. A stop (``stopping``) is passed on
    as SIGTERM: each child finishes its batch in flight and saves its checkpoint. A
    child that fails or dies does not stop the others; the first failure is raised
    once all have ended.
    """
    check(wiring.config, job, processes)
    check_layout(wiring.store, job, record=True)
    config, stopping = wiring.config, wiring.stopping
    parts = [name for name, _ in wiring.parts(job)]
    context = multiprocessing.get_context("spawn")
    messages: multiprocessing.Queue[tuple[int, str, Any]] = context.Queue()
    children = [
        context.Process(
            target=_child,
            args=(number, share(config, processes), job.name, parts[number::processes]),
            kwargs={"options": options, "messages": messages, "logs": logs},
            name=f"personyze-sync {job.name} {number + 1}/{processes}",
        )
        for number in range(processes)
    ]
    for child in children:
        child.start()
    ticks: dict[int, Progress] = {}
    results: dict[int, RunStats | SyncError] = {}
    forwarded = False
    silent: set[int] = set()  # children seen ended, given one more poll to speak
    while len(results) < len(children):
        if stopping.is_set() and not forwarded:
            forwarded = True
            for child in children:
                if child.is_alive():
                    child.terminate()  # SIGTERM: finish the batch in flight, then stop
        try:
            number, what, value = messages.get(timeout=POLL_S)
        except queue.Empty:
            for number, child in enumerate(children):
                if number not in results and child.exitcode is not None:
                    if number in silent:
                        results[number] = _died(child, stopped=forwarded)
                    silent.add(number)
            continue
        if what == "total":
            ticks[number] = progress(value) if progress else _ignore
        elif what == "rows":
            ticks.get(number, _ignore)(value)
        else:
            results[number] = value
    for child in children:
        child.join()
    failures = [r for r in results.values() if isinstance(r, SyncError)]
    if failures:
        raise failures[0]
    total = RunStats()
    for stats in results.values():
        assert isinstance(stats, RunStats)
        total.add(stats)
    return total


def _child(
    number: int,
    config: Config,
    job_name: str,
    parts: list[str],
    *,
    options: RunOptions,
    messages: multiprocessing.Queue[tuple[int, str, Any]],
    logs: LogSetup,
) -> None:
    """A child process: run its parts and send back what became of them."""
    configure_logging(
        fmt=logs.fmt,
        level=logs.level,
        secrets=secrets_of(config),
        shown_elsewhere=job_outcome_line if logs.outcomes_by_parent else None,
    )
    result: RunStats | SyncError
    with Wiring(config) as wiring:
        child_stops(wiring.stopping)

        def progress(total: int) -> Progress:
            messages.put((number, "total", total))
            return lambda rows: messages.put((number, "rows", rows))

        try:
            result = run_job(wiring, config.job(job_name), options, progress, only=parts)
        except SyncError as exc:
            result = exc
        except Exception as exc:  # reported to the parent as a failure, not lost
            logging.getLogger(__name__).exception("worker process failed")
            result = FatalError(f"a worker process failed: {type(exc).__name__}: {exc}")
    messages.put((number, "done", result))


def _died(child: multiprocessing.process.BaseProcess, *, stopped: bool) -> SyncError:
    if stopped and child.exitcode == -signal.SIGTERM:  # stopped before it could listen
        return Stopped(f"{child.name} stopped before it began")
    return FatalError(
        f"{child.name} ended without a result (exit code {child.exitcode}); the "
        "checkpoints of its shards stand before every row it had not finished: "
        "run the backfill again to go on"
    )


def _ignore(_rows: int) -> None:
    """Progress nobody shows."""
