"""Verify: read a job's users back from Personyze and compare them with the source."""

from __future__ import annotations

from pathlib import Path

import click

from sync import verify as verifying
from sync.cli.common import config_option, json_option, log_options, open_app, the_job
from sync.cli.render import print_json
from sync.cli.render_verify import print_verify, verify_doc


@click.command()
@config_option
@click.argument("job", required=False)
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
@log_options(quiet=True)
def verify(
    config_path: Path,
    job: str | None,
    sample: int | None,
    everything: bool,
    repair: bool,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Read JOB's users (or products) back from Personyze and compare them with the source.

    An audience job: its recorded members are read back from the list (--all also
    places every row of the query), and --repair adds the missing ones again.

    Without --repair only reads (GETs). Exit 0 when nothing drifted (or all of it was
    repaired), 1 when drift remains. Rows sharing one Personyze user (identity
    collisions) are reported apart: not drift, never resent. --repair --dry-run names
    the rows --repair would resend. JOB may be left out when the config has only one.

    \b
    Examples:
      personyze-sync verify customers
      personyze-sync verify customers --all --repair --dry-run
    """
    if sample is not None and everything:
        raise click.UsageError("--sample and --all exclude each other")
    with open_app(config_path) as app:
        report = verifying.verify(
            app,
            the_job(app, job, "verify"),
            sample=sample,
            everything=everything,
            repair=repair and not dry_run,
        )
    would_resend = report.queued if repair and dry_run else None
    if quiet and not report.drift_remaining:
        return
    if as_json:
        doc = verify_doc(report)
        if would_resend is not None:
            doc["would_resend"] = len(would_resend)
            doc["would_resend_keys"] = would_resend
        print_json(doc)
    else:
        print_verify(report, would_resend)
    if report.drift_remaining:
        raise click.exceptions.Exit(1)
