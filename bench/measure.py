"""Run a command and measure it: wall seconds, CPU seconds (user + system), peak RSS.

    python bench/measure.py CMD [ARG...]     # prints the figures as one JSON line

The figures are the process's own, read with ``os.wait4`` when it ends (they include
any children it waited for), so the benchmark can run several processes side by side
and still tell them apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Usage:
    """What one measured process cost, and what it printed."""

    returncode: int
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    stdout: str
    stderr: str


def run_measured(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> Usage:
    """Run ``cmd`` to its end (killed after ``timeout_s``) and return its usage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.monotonic()
        process = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env)
        timer = threading.Timer(timeout_s, process.kill) if timeout_s else None
        if timer is not None:
            timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        wall = time.monotonic() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Usage(
            returncode=process.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            maxrss_mb=usage.ru_maxrss / 1024,  # Linux reports kilobytes
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: measure.py CMD [ARG...]")
    usage = run_measured(sys.argv[1:])
    sys.stdout.write(usage.stdout)
    sys.stderr.write(usage.stderr)
    figures = {k: v for k, v in asdict(usage).items() if k not in ("stdout", "stderr")}
    print(json.dumps(figures))
    sys.exit(usage.returncode)


if __name__ == "__main__":
    main()
