"""Run a command and measure it: wall seconds, CPU seconds (user + system), peak RSS.

    python bench/measure.py [--figures FILE] [--timeout S] -- CMD [ARG...]

prints (or writes to FILE) the figures as one JSON line.

The figures are the process's own, read with ``os.wait4`` when it ends (they include
any children it waited for), so the benchmark can run several processes side by side
and still tell them apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


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
    """Run ``cmd`` through this file's small wrapper process and return its usage.

    Not forked from the caller directly: on Linux a child's peak RSS starts at its
    parent's at fork time (the kernel keeps the larger across exec), so a big caller
    would inflate every figure. The wrapper's own few MB are the floor instead.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as figures:
        wrapper = [sys.executable, __file__, "--figures", figures.name]
        if timeout_s:
            wrapper += ["--timeout", str(timeout_s)]
        done = subprocess.run([*wrapper, "--", *cmd], capture_output=True, env=env)
        text = Path(figures.name).read_text()
    found = json.loads(text) if text else {}
    return Usage(
        returncode=int(found.get("returncode", done.returncode)),
        wall_s=float(found.get("wall_s", 0.0)),
        cpu_s=float(found.get("cpu_s", 0.0)),
        maxrss_mb=float(found.get("maxrss_mb", 0.0)),
        stdout=done.stdout.decode(errors="replace"),
        stderr=done.stderr.decode(errors="replace"),
    )


def measure(cmd: Sequence[str], timeout_s: float | None) -> dict[str, float | int]:
    """Run ``cmd`` (its output passes through), wait with os.wait4; its own figures."""
    began = time.monotonic()
    process = subprocess.Popen(list(cmd))
    timer = threading.Timer(timeout_s, process.kill) if timeout_s else None
    if timer is not None:
        timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        if timer is not None:
            timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": process.returncode,
        "wall_s": time.monotonic() - began,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", help="write the figures here (default: stdout)")
    parser.add_argument("--timeout", type=float, help="kill the command after this long")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    figures = measure(cmd, args.timeout)
    if args.figures:
        Path(args.figures).write_text(json.dumps(figures))
    else:
        print(json.dumps(figures))
    sys.exit(int(figures["returncode"]))


if __name__ == "__main__":
    main()
