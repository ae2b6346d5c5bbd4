"""What a person at a terminal sees: the demo and a backfill run under a pseudo-terminal.

The real binary writes to a pty (Python's ``pty``); pyte, a terminal emulator, turns
what it wrote into the screen a person would see. The bar must count rows Personyze
acknowledged (it never runs ahead of the users the sandbox holds, and is full only when
the last row is in), end drawn full, and leave no bar line below the summary.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pyte

from sync.sandbox import SandboxServer
from tests.support import API_KEY, config_doc, make_customers, script, write_config

COLUMNS, LINES = 80, 200  # tall: nothing scrolls off the captured screen
BAR = re.compile(r"^rows done .*?(\d+)/(\d+) +[\d,]+ rows/s +(-|\d+):[-\d]+:[-\d]+$")
Screen = list[str]


def run_in_terminal(
    args: list[str], seen: Callable[[Screen], None] = lambda _: None, timeout_s: float = 120
) -> tuple[int, Screen]:
    """Run ``personyze-sync ARGS`` on a pty of 80 columns; its exit code and final screen.

    ``seen`` is shown the screen after each piece of output."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env |= {"TERM": "xterm-256color", "TEST_API_KEY": API_KEY}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    process = subprocess.Popen(
        [script(), *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    screen = pyte.Screen(COLUMNS, LINES)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process ended and closed the pty
                break
            if not chunk:
                break
            stream.feed(chunk)
            seen([line.rstrip() for line in screen.display])
        else:
            process.kill()
            raise AssertionError(f"personyze-sync {' '.join(args)} still ran after {timeout_s}s")
        code = process.wait(30)
    finally:
        os.close(master)
    return code, [line.rstrip() for line in screen.display if line.strip()]


def bars(screen: Screen) -> list[tuple[int, int, int]]:
    """Each bar line on the screen: (its line, rows done, rows in all)."""
    found = [(i, BAR.match(line)) for i, line in enumerate(screen)]
    return [(i, int(m[1]), int(m[2])) for i, m in found if m]


def test_the_demo_shows_one_bar_drawn_full_above_what_it_says_next() -> None:
    code, screen = run_in_terminal(["demo", "--rows", "200"])
    text = "\n".join(screen)
    assert code == 0, text
    drawn = bars(screen)
    assert len(drawn) == 1, f"bar lines left behind:\n{text}"  # one bar, drawn once
    line, done, total = drawn[0]
    assert done == total == 200, text
    sent = re.search(r"sent (\d+), rejected (\d+)", text)
    assert sent and int(sent[1]) + int(sent[2]) == total, text  # full: every row answered
    assert screen[line + 1].startswith("   sent "), text  # and what follows comes below it
    summary = next(i for i, s in enumerate(screen) if re.match(r"\d+\. summary ", s))
    users = re.match(r"\d+\. summary (\d+) Personyze users for 201 customers", screen[summary])
    assert line < summary and users and int(users[1]) == 201, text  # 200 and the newcomer


def test_a_backfill_bar_is_full_only_when_personyze_holds_the_last_row(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    """At a ceiling of 25 requests/s, 125 rows take 5 s: the ceiling is what limits the
    run (not the sandbox, even on a busy machine), and the bar, the line under it and the
    summary say so."""
    make_customers(sqlite_url, range(1, 126))
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        personyze={"requests_per_second": 25, "concurrency": 8},
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    ticks: list[tuple[int, int]] = []  # (rows the bar shows done, users the sandbox holds)

    def seen(screen: Screen) -> None:
        for _, done, _ in bars(screen)[-1:]:
            if not ticks or ticks[-1][0] != done:
                ticks.append((done, len(sandbox.users())))

    code, screen = run_in_terminal(["backfill", "-c", str(config)], seen)
    text = "\n".join(screen)
    assert code == 0, text
    assert all(done <= held for done, held in ticks), ticks  # never rows read, ahead
    assert any(0 < done < 125 for done, _ in ticks), ticks  # it moved as rows were done
    drawn = bars(screen)
    assert len(drawn) == 1, text
    line, done, total = drawn[0]
    assert done == total == len(sandbox.users()) == 125, text
    note = "at the 25/s ceiling: personyze.requests_per_second"
    assert screen[line + 1] == note, text  # under the bar, on a line of its own
    summary = next(i for i, s in enumerate(screen) if s.startswith("customers: read 125"))
    assert line < summary, text  # no bar line below the summary
    said = re.fullmatch(  # (wrapped at 80 columns: compared without its spaces)
        re.escape(note.replace(" ", "")) + r"\(requestswaitedforit(\d+)%oftherun;raiseitifyour"
        r"Personyzeaccountallowsmore\)",
        "".join(screen[summary + 1 :]).replace(" ", ""),
    )
    assert said and int(said[1]) >= 50, text
