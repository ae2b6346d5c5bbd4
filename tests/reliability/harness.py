"""The fault matrix's shared parts: a 6,000-row PostgreSQL source full of cursor ties,
the sync as a real subprocess, a watcher that checks the checkpoint against what
Personyze acknowledged while the sync runs, and the final row-by-row comparison.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Self

from sqlalchemy import create_engine, text

from sync.mapping import format_datetime
from sync.run.feed import WINDOW_BATCHES
from sync.sandbox import SandboxServer
from tests.support import API_KEY, config_doc, script, wait_until, write_config

ROWS = 6_000
BATCH = 200
WINDOW = WINDOW_BATCHES * BATCH  # rows read but not yet recorded: what a crash may resend
T0 = datetime(2025, 1, 1, 8, 0, 0)
MAPPING = {
    "id": "internal_id",
    "email": "email",
    "first_name": "first_name",
    "score": "custom_f_1",
    "deleted_at": "custom_d_1",
}


def make_people(url: str, rows: int = ROWS) -> None:
    """``rows`` people; every 500 share one updated_at; every 50th has no email."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE people (id int PRIMARY KEY, email text, first_name text NOT NULL, "
                "score numeric(12,2) NOT NULL, updated_at timestamp NOT NULL, deleted_at timestamp)"
            )
        )
        conn.execute(text("CREATE INDEX people_cursor ON people (updated_at, id)"))
        conn.execute(
            text(
                "INSERT INTO people SELECT i, CASE WHEN i % 50 = 0 THEN NULL "
                "ELSE 'Person' || i || '@Example.com' END, 'First' || i, i * 1.25, "
                ":t0 + (i / 500) * interval '1 minute', NULL FROM generate_series(1, :n) i"
            ),
            {"t0": T0, "n": rows},
        )
    engine.dispose()


def people(url: str) -> dict[int, dict[str, Any]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = {r["id"]: dict(r) for r in conn.execute(text("SELECT * FROM people")).mappings()}
    engine.dispose()
    return found


def expected_user(row: dict[str, Any]) -> dict[str, Any]:
    """What Personyze must hold for a source row, computed without the mapper."""
    user: dict[str, Any] = {
        "internal_id": row["id"],
        "first_name": row["first_name"],
        "custom_f_1": float(Decimal(row["score"])),
    }
    if row["email"]:
        user["email"] = row["email"].strip().lower()
    if row["deleted_at"] is not None:
        user["custom_d_1"] = format_datetime(row["deleted_at"])
    return user


def sync_config(
    tmp: Path,
    source_url: str,
    sandbox: SandboxServer,
    *,
    state_url: str | None = None,
    lookback: str | int = 0,
    personyze: dict[str, Any] | None = None,
) -> Path:
    doc = config_doc(
        source_url=source_url,
        api_url=sandbox.url,
        state_url=state_url or f"sqlite:///{tmp}/state.db",
        source={"table": "people", "batch_size": BATCH, "lookback": lookback},
        job={"name": "people", "mapping": MAPPING},
        personyze={
            "concurrency": 16,
            "max_attempts": 20,
            "backoff_initial_s": 0.002,
            "backoff_max_s": 0.05,
            "timeout_s": 2,
            **(personyze or {}),
        },
    )
    return write_config(tmp / "sync.yaml", doc)


SKEWED_CLOCK = """
import os, time
_offset = float(os.environ["PSYNC_TEST_CLOCK_OFFSET"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _offset
time.time_ns = lambda: _time_ns() + int(_offset * 1e9)
"""


def start(
    config: Path, command: str = "backfill", *, clock_offset: float = 0.0, job: str = "people"
) -> subprocess.Popen[bytes]:
    """The sync as a real process (a backfill of ``job``); ``clock_offset``: its host clock
    that many seconds off (a ``sitecustomize`` shifts ``time.time`` in that process only)."""
    args = [script(), command, "-c", str(config)] + ([job] if command == "backfill" else [])
    env = {**os.environ, "TEST_API_KEY": API_KEY}
    if clock_offset:
        shim = config.parent / f"clock{clock_offset:+.0f}"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(SKEWED_CLOCK)
        env |= {"PSYNC_TEST_CLOCK_OFFSET": str(clock_offset), "PYTHONPATH": str(shim)}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes], timeout: float = 240) -> tuple[int, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, (out + err).decode(errors="replace")


def run_to_end(config: Path, command: str = "backfill", job: str = "people") -> str:
    code, output = finish(start(config, command, job=job))
    assert code == 0, output
    return output


def settle(config: Path, runs: int = 4) -> int:
    """Incremental runs until no row is left unresolved (each reconciles what the one
    before left: writes without an email whose answer was lost); how many it took."""
    for done in range(1, runs + 1):
        if "unresolved" not in run_to_end(config, "once"):
            return done
    raise AssertionError(f"rows still unresolved after {runs} runs")


class Polling:
    """Calls ``_check`` every ``EVERY_S`` seconds in a thread while the ``with`` block
    runs, and once more at its end: the watchers of the fault matrix."""

    EVERY_S = 0.25

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._check()  # once more, at the end

    def _watch(self) -> None:
        while not self._stop.wait(self.EVERY_S):
            self._check()

    def _check(self) -> None:
        raise NotImplementedError


@dataclass
class Watcher(Polling):
    """Reads the checkpoint while the sync runs; every row at or before it must already
    be in the sandbox (acknowledged), checked against the source's (cursor, key) order."""

    state_file: Path
    sandbox: SandboxServer
    order: list[tuple[datetime, int]]
    seen: list[tuple[str, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def _check(self) -> None:
        checkpoint = self._checkpoint()
        if checkpoint is None:
            return
        cursor, key = checkpoint
        passed = [k for c, k in self.order if (c, k) <= (cursor, key)]
        acked = {int(u["internal_id"]) for u in self.sandbox.users()}
        missing = [k for k in passed if k not in acked]
        self.seen.append((cursor.isoformat(), key))
        if missing:
            self.violations.append(
                f"checkpoint {cursor} / {key} is past {len(missing)} row(s) "
                f"Personyze never acknowledged, e.g. {missing[:5]}"
            )

    def _checkpoint(self) -> tuple[datetime, int] | None:
        if not self.state_file.exists():
            return None
        try:
            with sqlite3.connect(f"file:{self.state_file}?mode=ro", uri=True, timeout=5) as db:
                row = db.execute(
                    "SELECT cursor_value, key_value FROM psync_checkpoints WHERE job = 'people'"
                ).fetchone()
        except sqlite3.OperationalError:
            return None  # tables not made yet
        if row is None:
            return None
        return datetime.fromisoformat(row[0]), int(row[1])


def cursor_order(url: str) -> list[tuple[datetime, int]]:
    return sorted((r["updated_at"], r["id"]) for r in people(url).values())


@dataclass
class Outcome:
    """What the sandbox ended with, compared with the source."""

    rows: int
    posts: int
    acked_posts: int
    extra_acks: int
    faults: Counter[str]


def assert_sandbox_equals_source(url: str, sandbox: SandboxServer) -> Outcome:
    """No row missing, no value wrong, no duplicate user: row by row, column by column."""
    source = people(url)
    users: dict[int, list[dict[str, Any]]] = {}
    for user in sandbox.users():
        users.setdefault(int(user["internal_id"]), []).append(user)
    missing = sorted(set(source) - set(users))
    assert not missing, f"{len(missing)} row(s) lost, e.g. {missing[:10]}"
    unknown = sorted(set(users) - set(source))
    assert not unknown, f"users for rows that do not exist: {unknown[:10]}"
    doubled = {k: len(v) for k, v in users.items() if len(v) > 1}
    assert not doubled, f"{len(doubled)} row(s) became several users, e.g. {list(doubled)[:10]}"
    wrong = []
    for key, row in source.items():
        want = expected_user(row)
        have = {k: users[key][0].get(k) for k in [*MAPPING.values()] if k in users[key][0]}
        if have != want:
            wrong.append((key, want, have))
    assert not wrong, f"{len(wrong)} row(s) hold wrong values, e.g. {wrong[:3]}"
    posts = [r for r in sandbox.requests if r.method == "POST"]
    acked = Counter(
        int(r.body["internal_id"]) for r in posts if r.status == 200 and r.fault is None
    )
    return Outcome(
        rows=len(source),
        posts=len(posts),
        acked_posts=sum(acked.values()),
        extra_acks=sum(n - 1 for n in acked.values()),
        faults=Counter(r.fault for r in sandbox.requests if r.fault),
    )


def run_history(state_file: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(state_file) as db:
        return [
            (o, e)
            for o, e in db.execute(
                "SELECT outcome, error FROM psync_runs WHERE job = 'people' ORDER BY id"
            )
        ]


def utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC)


def wait_for_posts(
    sandbox: SandboxServer, count: int, process: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    """Until the sandbox has answered ``count`` requests, the sync still running."""

    def answered() -> bool:
        assert process.poll() is None, "the sync ended before the fault could be injected"
        return len(sandbox.requests) >= count

    wait_until(answered, timeout=timeout, what=f"{count} requests (the sync made no progress)")


def report(name: str, outcome: object, **more: object) -> None:
    """The figures the closing note quotes (pytest -s shows them)."""
    print(f"\nFAULT-MATRIX {name}: {outcome} {more}")


__all__ = ["time", "timedelta"]
