"""The command line: parse, build, call, print. Nothing else lives here.

Exit codes: 0 success, 1 a run failed, 2 usage or config error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from sync.adopt import AdoptionSummary, Estimate, duration_text
from sync.app import App, JobStatus, run_all
from sync.config import load_config
from sync.errors import SyncError
from sync.logs import configure_logging, secrets_of, set_secrets
from sync.processes import LogSetup
from sync.runner import RunOptions, RunStats
from sync.state.adoptions import Adoption
from sync.state.records import StoredRejection
from sync.verify import Finding, VerifyReport

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

LogFormat = Literal["auto", "json", "text"]

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The YAML config file.",
)
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Show what would be sent; send nothing, move no checkpoint."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="Log lines as JSON or text (auto: text on a terminal).",
)
@click.version_option(package_name="personyze-sync")
@click.pass_context
def cli(ctx: click.Context, verbose: int, log_format: str) -> None:
    """Keep Personyze users in step with your customer database."""
    ctx.obj = {"verbose": verbose, "log_format": log_format}
    configure_logging(fmt=cast(LogFormat, log_format), level=logging.WARNING - 10 * min(verbose, 2))


@contextmanager
def open_app(config_path: Path) -> Iterator[App]:
    """The app for a one-shot command; SIGINT/SIGTERM stop it after the batch in flight."""
    config = load_config(config_path)
    set_secrets(secrets_of(config))
    with App(config, config_path=config_path) as app, stop_on_signals(app.stopping):
        yield app


@contextmanager
def stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    """First signal: finish the batch in flight and stop. Second: exit at once."""

    def handle(signum: int, _frame: Any) -> None:
        if stopping.is_set():
            os._exit(1)  # nothing is lost: checkpoints stand before unacknowledged rows
        stopping.set()
        err.print("stopping after the batch in flight (again to stop at once)", markup=False)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- running -----------------------------------------------------------------------


@cli.command()
@config_option
@click.option(
    "--http-port",
    type=int,
    default=None,
    metavar="N",
    help="Serve /healthz, /readyz, /metrics here (default: daemon.http_port, 9108).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default=None,
    help="Log lines as JSON or text (auto: text on a terminal).",
)
@click.pass_context
def run(
    ctx: click.Context, config_path: Path, http_port: int | None, log_format: str | None
) -> None:
    """The daemon: every job on its schedule until SIGTERM or SIGINT (SIGHUP reloads)."""
    from sync.daemon import Daemon

    config = load_config(config_path)
    level = logging.INFO - 10 * min(ctx.obj["verbose"], 1)
    configure_logging(
        fmt=cast(LogFormat, log_format or ctx.obj["log_format"]),
        level=level,
        secrets=secrets_of(config),
    )
    raise click.exceptions.Exit(Daemon(config_path, config, http_port=http_port).serve())


@cli.command()
@config_option
@click.argument("jobs", nargs=-1)
@dry_run_option
@json_option
def once(config_path: Path, jobs: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """One incremental run of each job (or of the JOBS named), then exit."""
    with open_app(config_path) as app:
        started = time.monotonic()
        results = run_all(app, app.jobs(jobs), RunOptions(kind="once", dry_run=dry_run))
        report(results, time.monotonic() - started, as_json=as_json, dry_run=dry_run)


@cli.command()
@config_option
@click.argument("job")
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
@dry_run_option
@json_option
@click.pass_context
def backfill(
    ctx: click.Context,
    config_path: Path,
    job: str,
    since: str | None,
    full: bool,
    processes: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """A one-shot history load of JOB with a progress bar; resumable after a crash."""
    if since and full:
        raise click.UsageError("--since and --full exclude each other")
    if dry_run and processes > 1:
        raise click.UsageError("--dry-run runs in one process: drop --processes")
    with open_app(config_path) as app:
        settings = app.config.job(job)
        start = None
        if since is not None:
            from sync.extract.query import Position

            start = Position(app.parse_cursor(settings, since), None)
        options = RunOptions(kind="backfill", dry_run=dry_run, start=start, full=full)
        started = time.monotonic()
        with progress_bar(enabled=not as_json) as progress:
            try:
                result: RunStats | SyncError = (
                    app.run(settings, options, progress)
                    if processes == 1
                    else app.run_in_processes(
                        settings,
                        options,
                        progress,
                        processes=processes,
                        logs=LogSetup(ctx.obj["log_format"], logging.getLogger().level),
                    )
                )
            except SyncError as exc:
                result = exc
        report({job: result}, time.monotonic() - started, as_json=as_json, dry_run=dry_run)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} rows/s")


@contextmanager
def progress_bar(*, enabled: bool) -> Iterator[Callable[[int], Callable[[int], None]] | None]:
    """A factory: given the rows to read, a callback advancing a rich progress bar."""
    if not enabled:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )

    def start(total: int) -> Callable[[int], None]:
        task = bar.add_task("rows", total=total)
        return lambda n: bar.advance(task, n)

    with bar:
        yield start


def report(
    results: dict[str, RunStats | SyncError], seconds: float, *, as_json: bool, dry_run: bool
) -> None:
    """Print each job's outcome; exit 1 if any failed."""
    failed = {name: r for name, r in results.items() if isinstance(r, SyncError)}
    if as_json:
        doc = {
            name: {"error": str(r)}
            if isinstance(r, SyncError)
            else {
                "read": r.read,
                "sent": r.sent,
                "skipped": r.skipped,
                "rejected": r.rejected,
                "collisions": r.collisions,
                "deleted": r.deleted,
                "missing": r.missing,
                "vanished": r.vanished,
                "unresolved": r.unresolved,
                **(
                    {
                        "would_send": r.would_send,
                        "would_delete": r.would_delete,
                        "too_many_deletes": r.too_many_deletes,
                    }
                    if dry_run
                    else {}
                ),
            }
            for name, r in results.items()
        }
        out.print_json(json.dumps({"jobs": doc, "seconds": round(seconds, 3)}, default=str))
    else:
        for name, r in results.items():
            if isinstance(r, SyncError):
                err.print(
                    f"[red]job {escape(name)} failed:[/red] {escape(str(r))}",
                    markup=True,
                    soft_wrap=True,
                )  # escaped: messages quote names and SQL with [...]
                continue
            if dry_run:
                for payload in r.would_send:  # one JSON document a line: never wrapped
                    out.print(
                        json.dumps(payload, default=str, ensure_ascii=False),
                        markup=False,
                        soft_wrap=True,
                    )
                for doomed in r.would_delete:
                    out.print(
                        f"would delete user {doomed['user_id']} (row {doomed['key']}: "
                        f"{doomed['why']})",
                        markup=False,
                        soft_wrap=True,
                    )
                if r.too_many_deletes:
                    err.print(f"a real run would stop: {r.too_many_deletes}", markup=False)
            verb, count = ("would send", len(r.would_send)) if dry_run else ("sent", r.sent)
            deletes = len(r.would_delete) if dry_run else r.deleted
            out.print(
                f"{name}: read {r.read}, {verb} {count}"
                f", unchanged {r.skipped}, rejected {r.rejected}"
                + (f", {'would delete' if dry_run else 'deleted'} {deletes}" if deletes else "")
                + (f", missing in Personyze {r.missing}" if r.missing else "")
                + (f", vanished from the source {r.vanished}" if r.vanished else "")
                + (
                    f", unresolved {r.unresolved} (sent without a certain answer: the next "
                    "run reconciles them)"
                    if r.unresolved
                    else ""
                )
                + (f", identity collisions {r.collisions}" if r.collisions else "")
                + f" ({seconds:.1f}s)",
                markup=False,
                soft_wrap=True,
            )
    if failed:
        raise click.exceptions.Exit(max(e.exit_code for e in failed.values()))


# -- looking and fixing ------------------------------------------------------------------


@cli.command()
@config_option
@click.option(
    "--connect", is_flag=True, help="Also reach the source, the state store and Personyze."
)
def validate(config_path: Path, connect: bool) -> None:
    """Check the config (and, with --connect, everything it points at)."""
    with open_app(config_path) as app:
        for line in app.validate(connect=connect):
            out.print(f"ok  {line}", markup=False)


@cli.command()
@config_option
@json_option
def status(config_path: Path, as_json: bool) -> None:
    """Per job: checkpoint, last runs, rows sent and rejected, lag."""
    with open_app(config_path) as app:
        jobs = app.status()
    if as_json:
        out.print_json(json.dumps([status_doc(j) for j in jobs], default=str))
        return
    for job in jobs:
        print_status(job)


def status_doc(job: JobStatus) -> dict[str, Any]:
    return {
        "job": job.name,
        "checkpoint": None
        if job.checkpoint is None
        else {"cursor": job.checkpoint.cursor, "key": job.checkpoint.key},
        "lag_seconds": job.lag_s,
        "held_by": job.held_by,
        "held_since": job.held_since,
        "rows_known": job.rows_known,
        "rejected": job.rejected,
        "rejections": [
            {"key": r.key, "reason": r.reason, "status": r.status, "attempts": r.attempts}
            for r in job.rejections
        ],
        "collisions": [
            {"key": c.key, "user_id": c.user_id, "other_key": c.other_key} for c in job.collisions
        ],
        "runs": [r.__dict__ for r in job.runs],
        "adoption": adoption_doc(job.adoption),
        "duplicates": [
            {"key": k, "user_id": u, "kept_user_id": kept} for k, u, kept in job.duplicates
        ],
    }


def adoption_doc(a: Adoption | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {
        "state": a.state,
        "wanted": a.wanted,
        "found": a.found,
        "reads": a.reads,
        "after_user_id": a.after_user_id,
        "highest_user_id": a.highest_user_id,
        "started_at": _iso_utc(a.started_at),
        "ended_at": _iso_utc(a.ended_at),
    }


def adoption_line(a: Adoption | None) -> str:
    """How a part's identity map was built, for ``status``."""
    if a is None:
        return "identity map: built by its own runs"
    if a.state == "skipped":
        return f"identity map: adoption skipped on {_iso_utc(a.ended_at or a.started_at)}"
    if a.state == "running":
        return (
            f"identity map: adoption in progress (read up to user_id {a.after_user_id} "
            f"of {a.highest_user_id})"
        )
    return (
        f"identity map: adopted {a.found} of {a.wanted} rows from Personyze's users on "
        f"{_iso_utc(a.ended_at or a.started_at)} ({a.reads} reads)"
    )


def print_status(job: JobStatus) -> None:
    cp = job.checkpoint
    out.print(f"[bold]{escape(job.name)}[/bold]")
    out.print(
        f"  checkpoint: {'none (never run)' if cp is None else f'{cp.cursor} / key {cp.key}'}"
        + (f", lag {job.lag_s:.0f}s" if job.lag_s is not None else ""),
        markup=False,
    )
    if job.held_by is not None and job.held_since is not None:
        out.print(f"  running now in {job.held_by} since {_utc(job.held_since)}", markup=False)
    out.print(
        f"  users known: {job.rows_known}, rejected rows: {job.rejected}, "
        f"identity collisions: {len(job.collisions)}",
        markup=False,
    )
    out.print(f"  {adoption_line(job.adoption)}", markup=False)
    for rej in job.rejections[:10]:
        out.print(f"    rejected row {rej.key}: {rej.reason}", markup=False, soft_wrap=True)
    for c in job.collisions[:10]:
        out.print(
            f"    row {c.key} and row {c.other_key} are one Personyze user ({c.user_id})",
            markup=False,
        )
    for key, user_id, kept in job.duplicates[:10]:
        out.print(
            f"    row {key} is held by two Personyze users: {kept} (kept) and {user_id} "
            "(a duplicate: delete it in Personyze)",
            markup=False,
        )
    if job.runs:
        table = Table(
            "started",
            "kind",
            "outcome",
            "read",
            "sent",
            "unchanged",
            "rejected",
            "seconds",
            "error",
            box=None,
            pad_edge=False,
        )
        for r in job.runs:
            took = "" if r.ended_at is None else f"{r.ended_at - r.started_at:.1f}"
            table.add_row(
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.started_at)),
                r.kind,
                r.outcome,
                str(r.rows_read),
                str(r.rows_sent),
                str(r.rows_skipped),
                str(r.rows_rejected),
                took,
                Text(r.error or ""),
            )
        out.print(table)


@cli.group()
def checkpoint() -> None:
    """Inspect or move checkpoints."""


@checkpoint.command("reset")
@config_option
@click.argument("job")
@click.option(
    "--to",
    "to",
    metavar="VALUE",
    help="Resume from this cursor value (inclusive); without it, from the start.",
)
@click.option(
    "--reshard",
    is_flag=True,
    help="Move the job's state to the number of shards its config now gives.",
)
def checkpoint_reset(config_path: Path, job: str, to: str | None, reshard: bool) -> None:
    """Move JOB's checkpoint deliberately. Rows already sent unchanged are still not resent."""
    with open_app(config_path) as app:
        settings = app.config.job(job)
        if reshard:
            moved = app.reshard(settings)
            out.print(
                f"{job}: {moved} synced row(s) moved to {settings.shards} shard(s)", markup=False
            )
        position = app.reset_checkpoint(settings, to)
    where = "the beginning" if position is None else f"cursor >= {position.cursor}"
    out.print(f"{job}: the next run reads from {where}", markup=False)


# -- adoption ------------------------------------------------------------------------


@cli.command()
@config_option
@click.argument("job")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--skip",
    is_flag=True,
    help="Adopt nothing: record that Personyze holds none of JOB's users (a first sync).",
)
def adopt(config_path: Path, job: str, yes: bool, skip: bool) -> None:
    """Adopt the users Personyze already holds into JOB's identity map.

    For a new, moved or lost state store, before its first run of JOB: rows without an
    email would otherwise become second users. Reads Personyze's users 50 at a time
    (the cost is shown first), stops once every row is found, resumes after a crash.
    """
    with open_app(config_path) as app:
        settings = app.config.job(job)
        rate = app.config.personyze.requests_per_second

        def confirm(estimate: Estimate) -> None:
            if estimate.highest_user_id is None:
                out.print("Personyze holds no users: nothing to read", markup=False)
                if not skip:
                    return
            else:
                seconds = estimate.seconds(rate)
                out.print(
                    f"Personyze holds users up to user_id {estimate.highest_user_id:,}: about "
                    f"{estimate.reads:,} reads of 50 users, "
                    + (
                        "no rate ceiling is set (personyze.requests_per_second)"
                        if seconds is None
                        else f"~{duration_text(seconds)} at the rate ceiling "
                        f"(personyze.requests_per_second {rate:g})"
                    )
                    + (
                        f"; resuming after user_id {estimate.after_user_id:,}"
                        if estimate.after_user_id
                        else ""
                    ),
                    markup=False,
                )
            if yes:
                return
            what = (
                f"record job {job}'s adoption as skipped (its rows are then sent as new users)"
                if skip
                else f"adopt Personyze's users into job {job}'s identity map"
            )
            if not sys.stdin.isatty():
                raise click.UsageError(
                    f"would {what}; not a terminal, so nothing asked: pass --yes to go ahead"
                )
            click.confirm(what[0].upper() + what[1:] + "?", abort=True)

        with AdoptionBar() as bar:
            summary = app.adopt(
                settings, skip=skip, confirm=confirm, progress=bar.read, scanned=bar.scanned
            )
            bar.finished(summary)
    out.print(adoption_summary(summary), markup=False)


class AdoptionBar:
    """A rich progress bar for an adoption, shown from its first report on."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._scan: Any = None
        self._users: Any = None

    def __enter__(self) -> AdoptionBar:
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _started(self) -> Progress:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[shown]}"),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self._bar.start()
        return self._bar

    def scanned(self, rows: int) -> None:
        bar = self._started()
        if self._scan is None:
            self._scan = bar.add_task("source rows", total=None, shown="")
        bar.update(self._scan, completed=rows, shown=f"{rows:,} read")

    def read(self, done: int, highest: int) -> None:
        bar = self._started()
        if self._users is None:
            self._users = bar.add_task("Personyze users", total=highest or 1, shown="")
        bar.update(
            self._users,
            total=highest or 1,
            completed=done if highest else 1,
            shown=f"user_id {done:,} of {highest:,}",
        )

    def finished(self, summary: AdoptionSummary) -> None:
        """Every row found (or every user read): the bar is full."""
        if self._bar is not None and self._users is not None:
            task = next(t for t in self._bar.tasks if t.id == self._users)
            if task.total:
                self._bar.update(
                    self._users,
                    completed=task.total,
                    shown=f"{summary.users_read:,} users read, {summary.found:,} rows found",
                )


def adoption_summary(s: AdoptionSummary) -> str:
    if s.already:
        ended = [a.ended_at for a in (s.parts or {}).values() if a is not None and a.ended_at]
        when = _iso_utc(max(ended)) if ended else "earlier"
        if s.skipped:
            return f"{s.job}: its adoption was skipped on {when}; nothing was read"
        done = f"{s.found} of {s.wanted} rows"
        return f"{s.job}: already adopted on {when} ({done}); nothing was read"
    if s.skipped:
        return f"{s.job}: adoption skipped; the next run sends its rows as new users"
    return (
        f"{s.job}: adopted {s.found} of {s.wanted} rows ({s.in_step} already in step), "
        f"read {s.users_read} users in {s.reads} reads, {s.duplicates} duplicates"
        + (f" (resumed after user_id {s.resumed_after})" if s.resumed_after else "")
    )


@cli.group()
def rejected() -> None:
    """Rows Personyze (or the mapping) refused: list them, retry them now, or drop them."""


def _utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def rejection_doc(r: StoredRejection) -> dict[str, Any]:
    return {
        "key": r.key,
        "reason": r.reason,
        "status": r.status,
        "refused_by": "mapping" if r.status is None else "personyze",
        "attempts": r.attempts,
        "first_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.first_at)),
        "last_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.last_at)),
        "payload": r.payload,
    }


@rejected.command("list")
@config_option
@click.argument("job", required=False)
@json_option
def rejected_list(config_path: Path, job: str | None, as_json: bool) -> None:
    """Each rejected row of each job (or of JOB): key, reason, status, attempts, payload."""
    with open_app(config_path) as app:
        found = {j.name: app.rejections(j) for j in app.jobs([job] if job else ())}
    if as_json:
        doc = [{"job": n, "rejected": [rejection_doc(r) for r in rs]} for n, rs in found.items()]
        out.print_json(json.dumps(doc, default=str))
        return
    for name, rows in found.items():
        out.print(f"[bold]{escape(name)}[/bold]: {len(rows) or 'no'} rejected row(s)")
        for r in rows:
            status = "mapping" if r.status is None else f"HTTP {r.status}"
            out.print(
                f"  key {r.key}  {status}  attempts {r.attempts}  "
                f"first seen {_utc(r.first_at)}  last seen {_utc(r.last_at)}",
                markup=False,
            )
            out.print(f"    reason: {r.reason}", markup=False, soft_wrap=True)
            payload = json.dumps(r.payload, default=str, ensure_ascii=False)
            out.print(f"    payload: {payload}", markup=False, soft_wrap=True)


@rejected.command("retry")
@config_option
@click.argument("job", required=False)
@dry_run_option
@json_option
def rejected_retry(config_path: Path, job: str | None, dry_run: bool, as_json: bool) -> None:
    """Re-read every rejected row from the source and send it again now."""
    with open_app(config_path) as app:
        jobs = app.jobs([job] if job else ())
        before = {j.name: len(app.rejections(j)) for j in jobs}
        results = run_all(app, jobs, RunOptions(kind="retry", dry_run=dry_run, only_rejected=True))
        after = {j.name: len(app.rejections(j)) for j in jobs}
    doc: dict[str, Any] = {}
    for name, r in results.items():
        if isinstance(r, SyncError):
            doc[name] = {"error": str(r)}
            if not as_json:
                err.print(f"job {name} failed: {r}", markup=False, soft_wrap=True)
            continue
        if dry_run:
            doc[name] = {"rejected": before[name], "would_send": r.would_send}
            if not as_json:
                for payload in r.would_send:
                    out.print(json.dumps(payload, default=str, ensure_ascii=False), markup=False)
                out.print(
                    f"{name}: {before[name]} rejected row(s), would send {len(r.would_send)}",
                    markup=False,
                )
            continue
        gone = max(0, before[name] - r.sent - after[name])
        doc[name] = {"retried": before[name], "delivered": r.sent, "still_rejected": after[name]}
        if not as_json:
            out.print(
                f"{name}: retried {before[name]}, delivered {r.sent}, still rejected {after[name]}"
                + (f", no longer in the source {gone}" if gone else ""),
                markup=False,
            )
    if as_json:
        out.print_json(json.dumps({"jobs": doc}, default=str))
    failed = [r for r in results.values() if isinstance(r, SyncError)]
    if failed:
        raise click.exceptions.Exit(max(e.exit_code for e in failed))


@rejected.command("purge")
@config_option
@click.argument("job", required=False)
@click.option("--key", "keys", multiple=True, metavar="K", help="Drop only this row (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rejected_purge(config_path: Path, job: str | None, keys: tuple[str, ...], yes: bool) -> None:
    """Drop rejected rows deliberately: they are not retried again (until their data changes)."""
    with open_app(config_path) as app:
        jobs = app.jobs([job] if job else ())
        if keys and len(jobs) > 1:
            raise click.UsageError("--key needs the JOB it belongs to")
        counts = {j.name: len(keys) or len(app.rejections(j)) for j in jobs}
        if not sum(counts.values()):
            out.print("no rejected rows to drop", markup=False)
            return
        if not yes:
            what = ", ".join(f"{n} rejected row(s) of job {j}" for j, n in counts.items() if n)
            if not sys.stdin.isatty():
                raise click.UsageError(
                    f"would drop {what}; not a terminal, so nothing asked: pass --yes to drop them"
                )
            click.confirm(f"Drop {what}? They will not be retried", abort=True)
        for j in jobs:
            dropped = app.purge_rejections(j, keys)
            out.print(f"{j.name}: dropped {len(dropped)} rejected row(s)", markup=False)


# -- verify --------------------------------------------------------------------------


@cli.command()
@config_option
@click.argument("job")
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Check N rows of the identity map, picked at random (the default, N=100).",
)
@click.option("--all", "everything", is_flag=True, help="Check every source row.")
@click.option("--repair", is_flag=True, help="Resend what drifted, then check it again.")
@click.option(
    "--dry-run", is_flag=True, help="With --repair: say what would be resent; send nothing."
)
@json_option
def verify(
    config_path: Path,
    job: str,
    sample: int | None,
    everything: bool,
    repair: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Read JOB's users back from Personyze and compare them with the source as it is now.

    Without --repair only reads (GETs). Exit 0 when nothing drifted (or all of it was
    repaired), 1 when drift remains.
    """
    if sample is not None and everything:
        raise click.UsageError("--sample and --all exclude each other")
    with open_app(config_path) as app:
        report = app.verify(
            app.config.job(job), sample=sample, everything=everything, repair=repair and not dry_run
        )
    would_resend = report.to_repair if repair and dry_run else None
    if as_json:
        doc = verify_doc(report)
        if would_resend is not None:
            doc["would_resend"] = would_resend
        out.print_json(json.dumps(doc, default=str))
    else:
        print_verify(report, would_resend)
    if report.drift_remaining:
        raise click.exceptions.Exit(1)


def _iso_utc(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def finding_doc(f: Finding) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "key": f.key,
        "user_id": f.user_id,
        "columns": [{"column": d.column, "want": d.want, "have": d.have} for d in f.columns],
        "cannot_clear": [{"column": d.column, "have": d.have} for d in f.cannot_clear],
        "data_last_modified": _iso_utc(f.modified_at),
        "reason": f.reason,
        "note": f.note,
    }


def verify_doc(report: VerifyReport) -> dict[str, Any]:
    repair = report.repair
    return {
        "job": report.job,
        "mode": report.mode,
        "sample": report.sample,
        "checked": report.checked,
        "in_step": report.in_step,
        **{kind: report.count(kind) for kind in ("different", "missing", "unsynced", "vanished")},
        "cannot_clear": report.cannot_clear,
        "unsendable": report.count("unsendable"),
        "no_user": report.count("no_user"),
        "findings": [finding_doc(f) for f in report.findings],
        "collisions": [
            {"key": c.key, "user_id": c.user_id, "other_key": c.other_key}
            for c in report.collisions
        ],
        "repair": None
        if repair is None
        else {
            "resent": repair.resent,
            "delivered": repair.sent,
            "rejected": repair.rejected,
            "still_drifting": [finding_doc(f) for f in repair.still],
        },
        "drift_remaining": report.drift_remaining,
    }


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 80 else text[:79] + "…"


def findings_table(findings: list[Finding]) -> Table:
    table = Table("finding", "key", "user_id", "last modified", "detail", box=None, pad_edge=False)
    for f in findings:
        lines = [f"{d.column}: want {_shown(d.want)}, have {_shown(d.have)}" for d in f.columns]
        lines += [
            f"{d.column}: empty in the source, Personyze keeps {_shown(d.have)} (cannot clear)"
            for d in f.cannot_clear
        ]
        lines += [line for line in (f.reason, f.note) if line]
        table.add_row(
            f.kind.replace("_", " "),
            Text(f.key),
            "" if f.user_id is None else str(f.user_id),
            "" if f.modified_at is None else _utc(f.modified_at),
            Text("\n".join(lines)),
        )
    return table


def print_verify(report: VerifyReport, would_resend: int | None) -> None:
    what = (
        "every source row"
        if report.mode == "all"
        else f"up to {report.sample} rows of the identity map, picked at random"
    )
    out.print(f"[bold]{escape(report.job)}[/bold]: verify of {what}")
    if report.findings:
        out.print(findings_table(report.findings))
    extra = [
        f"{label} {n}"
        for label, n in (
            ("vanished from the source", report.count("vanished")),
            ("cannot clear", report.cannot_clear),
            ("unsendable", report.count("unsendable")),
            ("without a user (sync: update)", report.count("no_user")),
            ("identity collisions", len(report.collisions)),
        )
        if n
    ]
    out.print(
        f"{report.job}: checked {report.checked}, in step {report.in_step}, "
        f"different {report.count('different')}, missing {report.count('missing')}, "
        f"unsynced {report.count('unsynced')}" + "".join(f", {e}" for e in extra),
        markup=False,
    )
    for c in report.collisions[:10]:
        out.print(
            f"  note: row {c.key} and row {c.other_key} are one Personyze user ({c.user_id})",
            markup=False,
        )
    if would_resend is not None:
        out.print(f"dry run: would resend {would_resend} row(s); nothing was sent", markup=False)
    repair = report.repair
    if repair is not None:
        out.print(
            f"{report.job}: repair resent {repair.resent}, delivered {repair.sent}, "
            f"rejected {repair.rejected}, still drifting {len(repair.still)}",
            markup=False,
        )
        if repair.still:
            out.print(findings_table(repair.still))


# -- trying things out ------------------------------------------------------------------


def _sandbox_retry_after(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """``--retry-after``: seconds (>= 0), or ``none`` to send 429s without the header."""
    if value.strip().lower() == "none":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither seconds nor 'none'") from None
    if not 0 <= seconds < float("inf"):
        raise click.BadParameter("must be 0 or more seconds")
    return seconds


_SANDBOX_RATE = click.FloatRange(0, 1)
_SANDBOX_SECONDS = click.FloatRange(min=0)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--api-key", default="sandbox-key", show_default=True)
@click.option(
    "--internal-id-merges",
    is_flag=True,
    help="Behave as the wiki says (merge on internal_id), not as the live service.",
)
@click.option(
    "--latency-ms",
    type=_SANDBOX_SECONDS,
    default=0,
    show_default=True,
    help="Milliseconds added to each request in the fault scope.",
)
@click.option(
    "--jitter-ms",
    type=_SANDBOX_SECONDS,
    default=0,
    show_default=True,
    help="Plus up to this many milliseconds, at random.",
)
@click.option("--error-rate", type=_SANDBOX_RATE, default=0, help="Fraction answered 500 or 503.")
@click.option(
    "--rate-limit-rate", type=_SANDBOX_RATE, default=0, help="Fraction answered 429, at random."
)
@click.option(
    "--retry-after",
    default="1",
    show_default=True,
    metavar="S|none",
    callback=_sandbox_retry_after,
    help="Retry-After of the --rate-limit-rate 429s (none: no header).",
)
@click.option(
    "--drop-rate", type=_SANDBOX_RATE, default=0, help="Fraction whose connection is dropped."
)
@click.option(
    "--lost-answer-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction applied, then answered 500 or dropped (the answer is lost).",
)
@click.option(
    "--wrong-shape-rate",
    type=_SANDBOX_RATE,
    default=0,
    help='Fraction of user reads answered {"result": "ok"} instead of a list.',
)
@click.option(
    "--late-apply-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction of user writes left unanswered, applied after --late-apply-s.",
)
@click.option(
    "--late-apply-s",
    type=_SANDBOX_SECONDS,
    default=3.0,
    show_default=True,
    help="Seconds a late write waits, unanswered, before it is applied.",
)
@click.option(
    "--trickle-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction served normally but answered one byte at a time.",
)
@click.option(
    "--trickle-s",
    type=_SANDBOX_SECONDS,
    default=0.5,
    show_default=True,
    help="Seconds between the bytes of a trickled answer.",
)
@click.option(
    "--endless-rate",
    type=_SANDBOX_RATE,
    default=0,
    help="Fraction not applied, answered 200 with a chunked body that never ends.",
)
@click.option(
    "--limit-rps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="A real rate limit (token bucket): requests beyond it get 429 with Retry-After.",
)
@click.option(
    "--limit-burst",
    type=click.FloatRange(min=1),
    default=None,
    help="The bucket's size [default: one second's worth, at least 1].",
)
@click.option("--include-account", is_flag=True, help="Faults hit /rest/account too.")
@click.option("--writes-only", is_flag=True, help="Faults hit POST, PUT and DELETE only.")
@click.option("--seed", type=int, default=None, help="Seed the draw: the same faults every run.")
def sandbox(
    host: str,
    port: int,
    api_key: str,
    internal_id_merges: bool,
    latency_ms: float,
    jitter_ms: float,
    error_rate: float,
    rate_limit_rate: float,
    retry_after: float | None,
    drop_rate: float,
    lost_answer_rate: float,
    wrong_shape_rate: float,
    late_apply_rate: float,
    late_apply_s: float,
    trickle_rate: float,
    trickle_s: float,
    endless_rate: float,
    limit_rps: float | None,
    limit_burst: float | None,
    include_account: bool,
    writes_only: bool,
    seed: int | None,
) -> None:
    """Serve a local Personyze-compatible Users API until Ctrl-C.

    Faults hit /rest/users (and /rest/account with --include-account). The rates are
    fractions of requests (0..1), exclusive per request (one seeded draw picks at most
    one kind), so together at most 1. --limit-rps is a gate apart, applied first: a
    request it refuses gets 429 at once and takes no part in the draw.
    """
    from dataclasses import asdict

    from sync.sandbox import Faults, SandboxServer

    try:
        faults = Faults(
            latency_s=latency_ms / 1000,
            latency_jitter_s=jitter_ms / 1000,
            error_rate=error_rate,
            rate_limit_rate=rate_limit_rate,
            retry_after_s=retry_after,
            drop_rate=drop_rate,
            lost_answer_rate=lost_answer_rate,
            wrong_shape_rate=wrong_shape_rate,
            late_apply_rate=late_apply_rate,
            late_apply_s=late_apply_s,
            trickle_rate=trickle_rate,
            trickle_s=trickle_s,
            endless_rate=endless_rate,
            limit_rps=limit_rps,
            limit_burst=limit_burst,
            include_account=include_account,
            writes_only=writes_only,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    server = SandboxServer(
        api_key, host=host, port=port, internal_id_merges=internal_id_merges, faults=faults
    )
    server.start()
    err.print(f"sandbox Personyze API at {server.url} (Ctrl-C stops)", markup=False)
    defaults = asdict(Faults())
    changed = {k: v for k, v in asdict(faults).items() if v != defaults[k]}
    if changed:
        err.print("faults: " + ", ".join(f"{k}={v}" for k, v in changed.items()), markup=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@cli.command()
@click.option("--rows", default=1000, show_default=True, help="Sample customers to make.")
def demo(rows: int) -> None:
    """A complete sync on this machine: SQLite source, local sandbox, backfill, change, sync."""
    from sync.demo import run_demo

    with progress_bar(enabled=True) as progress:
        run_demo(out, rows=rows, progress=progress)


def main() -> None:
    try:
        # Without standalone mode click *returns* the code of an Exit raised inside a
        # command (report() raises one when a job failed) instead of raising it.
        code = cli.main(prog_name="personyze-sync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else 1)
    except SyncError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
