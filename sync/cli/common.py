"""What the commands share: their common options and the app of a one-shot command."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import click

from sync.cli.render import err
from sync.config import load_config
from sync.logs import secrets_of, set_secrets
from sync.signals import stop_on_signals
from sync.wiring import Wiring

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


@contextmanager
def open_app(config_path: Path) -> Iterator[Wiring]:
    """The app for a one-shot command; SIGINT/SIGTERM stop it after the batch in flight."""
    config = load_config(config_path)
    set_secrets(secrets_of(config))
    with Wiring(config, config_path=config_path) as app, stop_on_signals(_stop(app.stopping)):
        yield app


def _stop(stopping: threading.Event) -> Callable[[str], None]:
    def stop(_signal: str) -> None:
        stopping.set()
        err.print("stopping after the batch in flight (again to stop at once)", markup=False)

    return stop
