"""What the commands share: their common options and the app of a one-shot command."""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import click

from sync.cli.exits import stopped_by
from sync.cli.render import err, print_json
from sync.config import JobSettings, load_config
from sync.errors import AuthError, ConfigError, SourceError, StateError, Stopped
from sync.logs import configure_logging, job_outcome_line, secrets_of, set_secrets
from sync.signals import stop_on_signals
from sync.wiring import Wiring

LogFormat = Literal["auto", "json", "text"]

CONFIG_VARIABLE = "PERSONYZE_SYNC_CONFIG"
CONFIG_HERE = "personyze-sync.yaml"


def find_config(_ctx: click.Context, _param: click.Parameter, given: Path | None) -> Path:
    """The config file: ``-c FILE``, else the one ``PERSONYZE_SYNC_CONFIG`` names, else
    ``./personyze-sync.yaml`` (as dlt, Meltano and drt find their project's file)."""
    if given is not None:
        return given
    named = os.environ.get(CONFIG_VARIABLE)
    if named:
        if not Path(named).is_file():
            raise ConfigError(f"config file not found: {named} (named by {CONFIG_VARIABLE})")
        return Path(named)
    here = Path(CONFIG_HERE)
    if here.is_file():
        return here
    raise ConfigError(
        f"no config file: pass -c FILE, set {CONFIG_VARIABLE}=FILE, or create "
        f"{Path.cwd() / CONFIG_HERE}"
    )


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=find_config,
    help=f"The YAML config file (else ${CONFIG_VARIABLE}, else ./{CONFIG_HERE}).",
)
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Show what would be sent; send nothing, move no checkpoint."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")

F = TypeVar("F", bound=Callable[..., Any])

verbose_option = click.option(
    "-v", "--verbose", count=True, help="Say what a run does (-vv: each batch, too)."
)
quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="Print nothing on success (errors still are)."
)
log_format_option = click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default=None,
    help="Log lines as JSON or text (auto: text on a terminal).  [default: auto]",
)


def log_options(*, level: int = logging.WARNING, quiet: bool = False) -> Callable[[F], F]:
    """``-v``, ``--log-format`` (and, with ``quiet``, ``-q``) on a command, so they work
    after its name as before it; logging is set up from both before the command runs.

    ``level``: the command's own (the daemon logs at INFO); each -v goes one lower, -q
    one higher. A command with ``quiet`` is called with ``quiet=`` (either place's).
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def command(*args: Any, verbose: int, log_format: str | None, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            given = ctx.find_root().obj or {}
            verbose += given.get("verbose", 0)
            fmt = log_format or given.get("log_format") or "auto"
            silent = given.get("quiet", False) or (kwargs.get("quiet", False) if quiet else False)
            if silent and verbose:
                raise click.UsageError("--quiet and --verbose exclude each other")
            effective = max(logging.DEBUG, level - 10 * verbose + (10 if silent else 0))
            ctx.obj = {"verbose": verbose, "log_format": fmt, "quiet": silent, "level": effective}
            shown = None if level <= logging.INFO else job_outcome_line
            configure_logging(fmt=cast(LogFormat, fmt), level=effective, shown_elsewhere=shown)
            if quiet:
                kwargs["quiet"] = silent
            return fn(*args, **kwargs)

        decorated = log_format_option(verbose_option(command))
        return cast(F, quiet_option(decorated) if quiet else decorated)

    return decorate


def the_job(app: Wiring, name: str | None, command: str) -> JobSettings:
    """The job called ``name``; without a name, the config's only job."""
    if name is not None:
        return app.config.job(name)
    jobs = app.config.jobs
    if len(jobs) == 1:
        return jobs[0]
    raise click.UsageError(
        f"name the JOB to {command}: the config has {len(jobs)} jobs "
        f"({', '.join(j.name for j in jobs)})"
    )


@contextmanager
def open_app(config_path: Path, *, needs_key: bool = True) -> Iterator[Wiring]:
    """The app for a one-shot command; SIGINT/SIGTERM stop it after the batch in flight.

    ``needs_key=False``: the command never reaches Personyze, so runs without its API key.
    """
    config = load_config(config_path, need_key=needs_key)
    set_secrets(secrets_of(config))
    stopped_by(None)
    with Wiring(config, config_path=config_path) as app, stop_on_signals(_stop(app.stopping)):
        yield app


def _stop(stopping: threading.Event) -> Callable[[str], None]:
    def stop(name: str) -> None:
        stopping.set()
        stopped_by(name)
        err.print("stopping after the batch in flight (again to stop at once)", markup=False)

    return stop


def asks_for_json(group: click.Group, args: Sequence[str]) -> bool:
    """Whether ``args`` give ``--json`` to a command that takes it: then an error found
    before the command could print anything (the config, the command line) is JSON too."""
    command: click.Command = group
    for arg in args:
        if arg == "--":
            break
        if isinstance(command, click.Group) and arg in command.commands:
            command = command.commands[arg]
    return "--json" in args and any("--json" in p.opts for p in command.params)


KINDS: tuple[tuple[type[Exception], str], ...] = (
    (click.UsageError, "usage"),
    (ConfigError, "config"),
    (AuthError, "auth"),
    (SourceError, "source"),
    (StateError, "state"),
    (Stopped, "stopped"),
)
WHERE = re.compile(r"(\S+:\d+): ")  # a config problem's FILE:LINE, as its text begins


def print_error_json(error: Exception) -> None:
    """``{"error": {"kind", "message", "where"}}`` on stdout: what stopped a command asked
    for ``--json`` (kind: usage, config, auth, source, state, stopped or error; where:
    the first problem's FILE:LINE, when the config names it). The exit code is unchanged."""
    message = error.format_message() if isinstance(error, click.ClickException) else str(error)
    kind = next((name for cls, name in KINDS if isinstance(error, cls)), "error")
    doc: dict[str, str] = {"kind": kind, "message": message}
    if kind == "config" and (at := WHERE.match(message)):
        doc["where"] = at.group(1)
    print_json({"error": doc})
