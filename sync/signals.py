"""One stop logic for every process (a one-shot command, the daemon, a backfill's children).

The first SIGINT or SIGTERM asks for a clean stop: the batch in flight finishes and its
checkpoint is saved. A second exits at once, and loses nothing: checkpoints stand
before every row Personyze did not acknowledge.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOPS = (signal.SIGINT, signal.SIGTERM)
AT_ONCE_EXIT = 1  # the exit code of a second signal


@contextmanager
def stop_on_signals(
    stop: Callable[[str], None], *, at_once: Callable[[str], None] = lambda _name: None
) -> Iterator[None]:
    """While inside: the first signal calls ``stop(name)``, a second ``at_once(name)``
    and exits. The previous handlers come back on the way out."""
    count = 0

    def handle(signum: int, _frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            stop(name)
            return
        at_once(name)
        logging.shutdown()
        os._exit(AT_ONCE_EXIT)

    previous = {sig: signal.signal(sig, handle) for sig in STOPS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def child_stops(stopping: threading.Event) -> None:
    """A child process of ``backfill --processes``: the parent forwards a stop as SIGTERM;
    a terminal's ^C reaches the parent too, so the child ignores SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
