"""The command line: parse, build, call, print. Nothing else lives here.

Exit codes: see ``exits`` (0 success, 1 a run failed, 2 usage or config error, 3 a dry
run the real run would stop, 130/143 stopped by a signal).

The group and the console script's entry point (``sync.cli:main``) live here; the
commands, grouped by what they do, in ``running``, ``looking``, ``history``, ``fixing``,
``verifying`` and ``trying``; what they print in ``render`` (with ``render_status`` and
``render_verify``); the progress bars in ``progress``; their shared options and the
app of a one-shot command in ``common``. Nothing below imports this module.
"""

from __future__ import annotations

import sys

import click

from sync.cli import fixing, history, looking, running, trying, verifying
from sync.cli.common import asks_for_json, print_error_json, quiet_option, verbose_option
from sync.cli.exits import stop_signal, stopped
from sync.cli.render import err
from sync.errors import Stopped, SyncError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@verbose_option
@quiet_option
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="Log lines as JSON or text (auto: text on a terminal).",
)
@click.version_option(package_name="personyze-sync")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, log_format: str) -> None:
    """Keep Personyze users in step with your customer database.

    Each command finds its config in -c FILE, else in $PERSONYZE_SYNC_CONFIG, else in
    ./personyze-sync.yaml. -v, -q and --log-format work before the command's name and
    after it alike.

    \b
    Examples:
      personyze-sync demo                 # the whole thing on this machine, no setup
      personyze-sync validate --connect -c personyze-sync.yaml
      personyze-sync once -v              # one run of each job, saying what it does
    """
    ctx.obj = {"verbose": verbose, "quiet": quiet, "log_format": log_format}


for _command in (
    running.run,
    running.once,
    running.backfill,
    looking.validate,
    looking.status,
    history.history,
    history.runs,
    fixing.checkpoint,
    fixing.adopt,
    fixing.rejected,
    verifying.verify,
    trying.sandbox,
    trying.demo,
):
    cli.add_command(_command)


def main() -> None:
    as_json = asks_for_json(cli, sys.argv[1:])
    try:
        # Without standalone mode click *returns* the code of an Exit raised inside a
        # command (report() raises one when a job failed) instead of raising it.
        code = cli.main(prog_name="personyze-sync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C where nothing caught it
            err.print("stopped (SIGINT)", markup=False)
            sys.exit(stopped())
        err.print("aborted")  # a question answered no
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        if as_json:
            print_error_json(exc)
        sys.exit(2 if isinstance(exc, click.UsageError) else 1)
    except Stopped as exc:  # outside a job's run (verify, adopt): as within one
        err.print(f"stopped ({stop_signal()}): {exc}", markup=False, soft_wrap=True)
        if as_json:
            print_error_json(exc)
        sys.exit(stopped())
    except SyncError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        if as_json:
            print_error_json(exc)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
