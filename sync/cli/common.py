"""What the commands share: their common options and the app of a one-shot command."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import click

from sync.cli.render import err
from sync.config import load_config
from sync.logs import secrets_of, set_secrets
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
    with Wiring(config, config_path=config_path) as app, stop_on_signals(app.stopping):
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
