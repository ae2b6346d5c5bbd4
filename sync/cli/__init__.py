"""The command line: parse, build, call, print. Nothing else lives here.

Exit codes: 0 success, 1 a run failed, 2 usage or config error.

The group and the console script's entry point (``sync.cli:main``) live here; the
commands, grouped by what they do, in ``running``, ``looking``, ``fixing``, ``verifying``
and ``trying``; what they print in ``render`` (with ``render_status`` and
``render_verify``); the progress bars in ``progress``; their shared options and the
app of a one-shot command in ``common``. Nothing below imports this module.
"""

from __future__ import annotations

import logging
import sys
from typing import cast

import click

from sync.cli import fixing, looking, running, trying, verifying
from sync.cli.common import LogFormat
from sync.cli.render import err
from sync.errors import SyncError
from sync.logs import configure_logging

__all__ = ["cli", "main"]


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


for _command in (
    running.run,
    running.once,
    running.backfill,
    looking.validate,
    looking.status,
    fixing.checkpoint,
    fixing.adopt,
    fixing.rejected,
    verifying.verify,
    trying.sandbox,
    trying.demo,
):
    cli.add_command(_command)


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
