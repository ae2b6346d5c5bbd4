"""The exit codes, in one place (the README's table is this one):

    0    success: everything asked for was done
    1    a run failed (the job's error is printed; the other jobs still ran); or what
         the command checks is not in order: rows still rejected after
         ``rejected retry``, drift left by ``verify``, a failed ``validate --connect``
    2    a usage or config error, or a port in use: nothing ran
    3    a dry run found that the real run would stop (``max_deletes_per_run``)
    130  stopped by SIGINT (Ctrl-C), 143 by SIGTERM: what finished is saved, the
         checkpoint stands before the rest; run the command again to resume

When several apply, a stop wins, then 2, then 1, then 3.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

from sync.errors import Stopped, SyncError
from sync.model import RunStats

SUCCESS = 0
FAILED = 1
USAGE = 2
WOULD_STOP = 3
_PRIORITY = (USAGE, FAILED, WOULD_STOP)  # after a stop, which always wins


class _Stop:
    """The signal that asked this process's command to stop, if one did (a signal is
    the process's, so this is too)."""

    signal: str | None = None


def stopped_by(name: str | None) -> None:
    """Remember which signal asked the command to stop (None: forget it)."""
    _Stop.signal = name


def stop_signal() -> str:
    """The signal that stopped the command: the one remembered, else SIGINT."""
    return _Stop.signal or "SIGINT"


def stopped() -> int:
    """128 + the signal's number, as a shell reports a process a signal ended."""
    return 128 + signal.Signals[stop_signal()].value


def exit_code(results: Mapping[str, RunStats | SyncError], *, dry_run: bool = False) -> int:
    """The code a command that ran these jobs ends with."""
    errors = [r for r in results.values() if isinstance(r, SyncError)]
    if any(isinstance(e, Stopped) for e in errors):
        return stopped()
    codes = {e.exit_code for e in errors}
    if dry_run and any(isinstance(r, RunStats) and r.too_many_deletes for r in results.values()):
        codes.add(WOULD_STOP)
    return next((code for code in _PRIORITY if code in codes), max(codes, default=SUCCESS))
