"""Running: the daemon, one incremental run, a backfill."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from sync import admin
from sync.api import Sync
from sync.cli.common import (
    LogFormat,
    config_option,
    dry_run_option,
    json_option,
    log_options,
    open_app,
    the_job,
)
from sync.cli.progress import ceiling_note, progress_bar
from sync.cli.render import out, report
from sync.config import load_config
from sync.config.jobs import JobSettings
from sync.errors import ConfigError, PortUnavailable, SyncError
from sync.logs import configure_logging, secrets_of
from sync.model import Position, RunOptions, RunStats
from sync.run import run_in_processes
from sync.run.parts import ProgressFor
from sync.run.processes import LogSetup
from sync.wiring import Wiring

if TYPE_CHECKING:
    from sync.load.pacing import CeilingWatch


@click.command()
@config_option
@click.option(
    "--http-port",
    type=int,
    default=None,
    metavar="N",
    help="Serve /healthz, /readyz, /metrics here (default: daemon.http_port, 9108).",
)
@log_options(level=logging.INFO)
@click.pass_context
def run(ctx: click.Context, config_path: Path, http_port: int | None) -> None:
    """The daemon: every job on its schedule until SIGTERM or SIGINT (SIGHUP reloads).

    Serves /healthz, /readyz and /metrics on --http-port (daemon.http_port, 9108).

    \b
    Examples:
      personyze-sync run -c /config/personyze-sync.yaml
      personyze-sync run --http-port 9200 --log-format json
    """
    from sync.daemon import Daemon

    config = load_config(config_path)
    configure_logging(
        fmt=cast(LogFormat, ctx.obj["log_format"]),
        level=ctx.obj["level"],
        secrets=secrets_of(config),
    )
    try:
        daemon = Daemon(config_path, config, http_port=http_port)
    except PortUnavailable as exc:
        where = "" if http_port is not None else f" (daemon.http_port in {config_path})"
        raise ConfigError(f"{exc}{where}; choose another with --http-port N") from None
    raise click.exceptions.Exit(daemon.serve())


@click.command()
@config_option
@click.argument("jobs", nargs=-1)
@dry_run_option
@json_option
@log_options(quiet=True)
def once(
    config_path: Path, jobs: tuple[str, ...], dry_run: bool, as_json: bool, quiet: bool
) -> None:
    """One incremental run of each job (or of the JOBS named), then exit.

    For cron and Kubernetes CronJobs; the exit code says how it went (see the README).

    \b
    Examples:
      personyze-sync once                        # every job of ./personyze-sync.yaml
      personyze-sync once customers --dry-run    # what would be sent; nothing is
      personyze-sync once -q -c /etc/personyze-sync.yaml    # cron: quiet on success
    """
    with open_app(config_path) as app:
        started = time.monotonic()
        watch = _ceiling_watch(app, dry_run=dry_run)
        results = Sync.on(app).once(*jobs, dry_run=dry_run).outcomes()
        with _ceiling_summary(watch, shown=not (as_json or quiet)):
            report(
                results, time.monotonic() - started, as_json=as_json, dry_run=dry_run, quiet=quiet
            )


@click.command()
@config_option
@click.argument("job", required=False)
@click.option("--since", metavar="VALUE", help="Start at this cursor value (inclusive).")
@click.option("--full", is_flag=True, help="Read every row again; unchanged rows are not sent.")
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    metavar="N",
    help="Spread the job's shards over N processes (needs shards >= N and a "
    "PostgreSQL state store).",
)
@click.option(
    "--shard",
    type=click.IntRange(min=0),
    default=None,
    metavar="I",
    help="Run only shard I (0 to shards-1) of a sharded job, under its lease, from its "
    "checkpoint: one pod of a Kubernetes Indexed Job (--shard $(JOB_COMPLETION_INDEX)).",
)
@dry_run_option
@json_option
@log_options(quiet=True)
@click.pass_context
def backfill(
    ctx: click.Context,
    config_path: Path,
    job: str | None,
    since: str | None,
    full: bool,
    processes: int,
    shard: int | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """A one-shot history load of JOB with a progress bar; resumable after a crash.

    JOB may be left out when the config has only one.

    \b
    Examples:
      personyze-sync backfill                    # the config's only job
      personyze-sync backfill customers --since '2024-01-01 00:00:00'
      personyze-sync backfill customers --full --processes 4
      personyze-sync backfill customers --shard 2   # shard 2 only (an Indexed Job's pod)
    """
    if since and full:
        raise click.UsageError("--since and --full exclude each other")
    if dry_run and processes > 1:
        raise click.UsageError("--dry-run runs in one process: drop --processes")
    if shard is not None and processes > 1:
        raise click.UsageError("--shard runs one shard in this process: drop --processes")
    with open_app(config_path) as app:
        settings = the_job(app, job, "backfill")
        started = time.monotonic()
        watch = None if processes > 1 else _ceiling_watch(app, dry_run=dry_run)
        with progress_bar(enabled=not (as_json or quiet), watch=watch) as progress:
            if processes == 1:
                results = Sync.on(app).backfill(
                    settings.name,
                    since=since,
                    full=full,
                    dry_run=dry_run,
                    shard=shard,
                    progress=progress,
                )
                outcomes = results.outcomes()
            else:
                logs = LogSetup(ctx.obj["log_format"], logging.getLogger().level)
                run = _in_processes(app, settings, since, full, progress, processes, logs)
                outcomes = {settings.name: run}
        seconds = time.monotonic() - started
        with _ceiling_summary(watch, shown=not (as_json or quiet)):
            report(outcomes, seconds, as_json=as_json, dry_run=dry_run, quiet=quiet)


def _in_processes(
    app: Wiring,
    job: JobSettings,
    since: str | None,
    full: bool,
    progress: ProgressFor | None,
    processes: int,
    logs: LogSetup,
) -> RunStats | SyncError:
    """``backfill --processes N``: the job's shards spread over N fresh processes."""
    start = None if since is None else Position(admin.parse_cursor(app, job, since), None)
    options = RunOptions(kind="backfill", start=start, full=full)
    try:
        return run_in_processes(app, job, options, progress, processes=processes, logs=logs)
    except SyncError as exc:
        return exc


def _ceiling_watch(app: Wiring, *, dry_run: bool) -> CeilingWatch | None:
    """Whether personyze.requests_per_second holds the run back, from the pacing's waits.

    (Not for a dry run, which sends nothing, nor without a ceiling.)"""
    if dry_run or app.config.personyze.requests_per_second is None:
        return None
    try:
        return app.client.pacing.watch()
    except SyncError:
        return None  # a client that cannot be made: the run says why


@contextmanager
def _ceiling_summary(watch: CeilingWatch | None, *, shown: bool) -> Iterator[None]:
    """After the summary (which exits with the run's code), the ceiling's note if it
    held the run back."""
    note = ceiling_note(watch) if shown else None
    try:
        yield
    finally:
        if note and watch is not None:
            out.print(
                f"{note} (requests waited for it {watch.share():.0%} of the run; "
                "raise it if your Personyze account allows more)",
                markup=False,
                soft_wrap=True,
            )
