"""Fixing: move a checkpoint, adopt Personyze's users, list, retry or drop rejected rows."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sync import admin
from sync.admin import Estimate, duration_text
from sync.cli.common import config_option, dry_run_option, json_option, log_options, open_app
from sync.cli.progress import AdoptionBar
from sync.cli.render import adoption_summary, out, print_rejections, retry_report
from sync.model import RunOptions
from sync.run import run_all


@click.group()
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
@log_options()
def checkpoint_reset(config_path: Path, job: str, to: str | None, reshard: bool) -> None:
    """Move JOB's checkpoint deliberately. Rows already sent unchanged are still not resent.

    With --reshard, only the move to the config's shard count (and the checkpoint only
    if --to is given too); nothing at all when the state already has that many.

    \b
    Examples:
      personyze-sync checkpoint reset customers                  # from the beginning
      personyze-sync checkpoint reset customers --to '2024-06-01 00:00:00'
      personyze-sync checkpoint reset customers --reshard        # after shards: N changed
    """
    with open_app(config_path, needs_key=False) as app:
        settings = app.config.job(job)
        if reshard:
            done = admin.reshard(app, settings)
            if done.before == done.after:
                out.print(
                    f"{job}: its state is already kept in {done.after} shard(s), as the "
                    "config says: nothing to move"
                    + ("" if to else "; the checkpoint is unchanged"),
                    markup=False,
                )
            else:
                out.print(
                    f"{job}: {done.moved} synced row(s) moved to {done.after} shard(s) "
                    f"(from {done.before}); each reads from the beginning and sends only "
                    "what changed",
                    markup=False,
                )
            if to is None:
                return
        position = admin.reset_checkpoint(app, settings, to)
    where = "the beginning" if position is None else f"cursor >= {position.cursor}"
    out.print(f"{job}: the next run reads from {where}", markup=False)


@click.command()
@config_option
@click.argument("job")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--skip",
    is_flag=True,
    help="Adopt nothing: record that Personyze holds none of JOB's users (a first sync).",
)
@log_options()
def adopt(config_path: Path, job: str, yes: bool, skip: bool) -> None:
    """Adopt the users Personyze already holds into JOB's identity map.

    For a new, moved or lost state store, before its first run of JOB: rows without an
    email would otherwise become second users. Reads Personyze's users 50 at a time
    (the cost is shown first), stops once every row is found, resumes after a crash.

    \b
    Examples:
      personyze-sync adopt customers
      personyze-sync adopt customers --skip --yes    # Personyze holds none of them
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
            summary = admin.adopt(
                app, settings, skip=skip, confirm=confirm, progress=bar.read, scanned=bar.scanned
            )
            bar.finished(summary)
    out.print(adoption_summary(summary), markup=False)


@click.group()
def rejected() -> None:
    """Rows Personyze (or the mapping) refused: list them, retry them now, or drop them."""


@rejected.command("list")
@config_option
@click.argument("job", required=False)
@json_option
@log_options()
def rejected_list(config_path: Path, job: str | None, as_json: bool) -> None:
    """Each rejected row of each job (or of JOB): key, reason, status, attempts, payload.

    \b
    Examples:
      personyze-sync rejected list
      personyze-sync rejected list customers --json
    """
    with open_app(config_path, needs_key=False) as app:
        found = {j.name: admin.rejections(app, j) for j in app.jobs([job] if job else ())}
    print_rejections(found, as_json=as_json)


@rejected.command("retry")
@config_option
@click.argument("job", required=False)
@dry_run_option
@json_option
@log_options(quiet=True)
def rejected_retry(
    config_path: Path, job: str | None, dry_run: bool, as_json: bool, quiet: bool
) -> None:
    """Re-read every rejected row from the source and send it again now.

    Exits 1 while rows are still rejected (not with --dry-run: nothing is tried).

    \b
    Examples:
      personyze-sync rejected retry --dry-run
      personyze-sync rejected retry customers
    """
    with open_app(config_path) as app:
        jobs = app.jobs([job] if job else ())
        before = {j.name: len(admin.rejections(app, j)) for j in jobs}
        results = run_all(app, jobs, RunOptions(kind="retry", dry_run=dry_run, only_rejected=True))
        after = {j.name: len(admin.rejections(app, j)) for j in jobs}
    retry_report(results, before, after, dry_run=dry_run, as_json=as_json, quiet=quiet)


@rejected.command("purge")
@config_option
@click.argument("job", required=False)
@click.option("--key", "keys", multiple=True, metavar="K", help="Drop only this row (repeatable).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@log_options()
def rejected_purge(config_path: Path, job: str | None, keys: tuple[str, ...], yes: bool) -> None:
    """Drop rejected rows deliberately: they are not retried again (until their data changes).

    \b
    Examples:
      personyze-sync rejected purge customers --key 42 --yes
      personyze-sync rejected purge              # every job's; asks first
    """
    with open_app(config_path, needs_key=False) as app:
        jobs = app.jobs([job] if job else ())
        if keys and len(jobs) > 1:
            raise click.UsageError("--key needs the JOB it belongs to")
        counts = {j.name: len(keys) or len(admin.rejections(app, j)) for j in jobs}
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
            dropped = admin.purge_rejections(app, j, keys)
            out.print(f"{j.name}: dropped {len(dropped)} rejected row(s)", markup=False)
