"""Looking: validate the config, the status of each job."""

from __future__ import annotations

from pathlib import Path

import click

from sync import admin
from sync.cli.common import config_option, json_option, log_options, open_app
from sync.cli.exits import FAILED
from sync.cli.render import print_json
from sync.cli.render_checks import check_doc, print_checks
from sync.cli.render_status import print_status, status_doc


@click.command()
@config_option
@click.option(
    "--connect",
    is_flag=True,
    help="Also reach the source, the state store and Personyze: every check, each ok or "
    "its problem; exit 1 if any failed.",
)
@json_option
@log_options()
def validate(config_path: Path, connect: bool, as_json: bool) -> None:
    """Check the config (and, with --connect, everything it points at).

    \b
    Examples:
      personyze-sync validate -c personyze-sync.yaml
      personyze-sync validate --connect
      personyze-sync validate --connect --json | jq '.[] | select(.ok | not)'
    """
    with open_app(config_path) as app:
        checks = admin.validate(app, connect=connect)
    if as_json:
        print_json([check_doc(c) for c in checks])
    else:
        print_checks(checks)
    if not all(c.ok for c in checks):
        raise click.exceptions.Exit(FAILED)


@click.command()
@config_option
@json_option
@log_options()
def status(config_path: Path, as_json: bool) -> None:
    """Per job: checkpoint, last runs, rows sent and rejected, lag.

    \b
    Examples:
      personyze-sync status
      personyze-sync status --json | jq '.[] | {job, lag_seconds}'
    """
    with open_app(config_path, needs_key=False) as app:
        jobs = admin.status(app)
    if as_json:
        print_json([status_doc(j) for j in jobs])
        return
    for job in jobs:
        print_status(job)
