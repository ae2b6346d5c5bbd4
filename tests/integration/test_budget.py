"""The account's rate budget, held by real processes on a PostgreSQL state store.

``personyze.requests_per_second`` is the account's: processes sending on one state
store share it (sync/load/budget.py). What is counted is what the sandbox received,
second by second (its request log), never a time measured on the sync's side.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sync.sandbox import Faults, RecordedRequest, SandboxServer
from tests.support import (
    API_KEY,
    config_doc,
    make_customers,
    script,
    wait_until,
    with_password,
    write_config,
)

pytestmark = pytest.mark.postgres

LIMIT = 120.0  # requests/s the account takes, and each process's requests_per_second


class Processes:
    """``personyze-sync backfill`` processes, ended (and their logs kept) by the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, config: Path, job: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{job}.log"
        with log.open("wb") as out:  # the child has its own copy
            process = subprocess.Popen(
                [script(), "--log-format", "json", "backfill", "-c", str(config), job],
                env={**os.environ, "TEST_API_KEY": API_KEY},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.running.append((process, log))
        return process

    def wait(self, timeout: float = 30) -> list[int]:
        return [p.wait(timeout) for p, _ in self.running]

    def logs(self) -> str:
        return "\n".join(log.read_text(errors="replace") for _, log in self.running)

    def end(self) -> None:
        for process, _ in self.running:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.end()


def jobs_config(path: Path, pg_url: str, sandbox: SandboxServer, jobs: dict[str, str]) -> Path:
    """One job per name, each reading the customers ``jobs[name]`` selects."""
    doc: dict[str, Any] = config_doc(
        source_url=with_password(pg_url),
        api_url=sandbox.url,
        state_url=with_password(pg_url),
        personyze={"concurrency": 4, "requests_per_second": LIMIT, "max_attempts": 8},
    )
    template = doc["jobs"][0]
    doc["jobs"] = [
        {
            **template,
            "name": name,
            "source": {
                **{k: v for k, v in template["source"].items() if k != "table"},
                "query": f"SELECT * FROM customers WHERE {where}",
            },
        }
        for name, where in jobs.items()
    ]
    return write_config(path, doc)


def row_of(request: RecordedRequest) -> int:
    """The customer a POST sent (by its email)."""
    return int(str(request.body["email"]).removeprefix("user").split("@")[0])


def per_second(requests: list[RecordedRequest], start: float, end: float) -> list[int]:
    """Requests received in each whole second from ``start`` up to ``end``."""
    counts = [0] * int(end - start)
    for r in requests:
        if start <= r.start < start + len(counts):
            counts[int(r.start - start)] += 1
    return counts


def test_three_processes_share_the_account_ceiling_and_few_requests_are_429(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, processes: Processes
) -> None:
    rows = 600  # 5 s at the ceiling
    make_customers(pg_url, range(1, rows + 1))
    sandbox.faults = Faults(limit_rps=LIMIT)  # the account's real limit
    parts = {f"part{i}": f"id % 3 = {i}" for i in range(3)}
    config = jobs_config(tmp_path / "sync.yaml", pg_url, sandbox, parts)
    for job in parts:
        processes.start(config, job)
    assert processes.wait() == [0, 0, 0], processes.logs()

    log = [r for r in sandbox.requests if r.method == "POST"]
    seconds = per_second(log, log[0].start, log[-1].start)  # every whole second of it
    assert len(seconds) >= 3, seconds
    mean = sum(seconds) / len(seconds)
    assert 0.8 * LIMIT <= mean <= 1.1 * LIMIT, seconds  # before: up to 3 × LIMIT
    assert max(seconds) <= 1.2 * LIMIT, seconds
    by_part = {i: [r.start for r in log if row_of(r) % 3 == i] for i in range(3)}
    together = (max(min(s) for s in by_part.values()), min(max(s) for s in by_part.values()))
    shared = per_second(log, *together)  # while all three were sending: a third each
    assert shared, (together, by_part)
    for starts in by_part.values():
        mine = sum(1 for s in starts if together[0] <= s < together[0] + len(shared))
        assert 0.5 * LIMIT / 3 <= mine / len(shared) <= 1.5 * LIMIT / 3, (mine, shared)
    limited = sum(1 for r in log if r.status == 429)
    assert limited < 0.02 * len(log), (limited, len(log))
    assert len({row_of(r) for r in log if r.status == 200}) == rows


def test_a_429_seen_by_one_process_slows_the_others(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, processes: Processes
) -> None:
    """Two processes, one state store; only the first one's Personyze limits (at 10/s),
    the other's answers no 429 at all, and slows down all the same."""
    make_customers(pg_url, range(1, 2001))  # more than the test lets either send
    with SandboxServer(API_KEY, faults=Faults(limit_rps=10)) as limiting:
        seen = jobs_config(tmp_path / "seen.yaml", pg_url, limiting, {"seen": "id <= 500"})
        other = jobs_config(tmp_path / "other.yaml", pg_url, sandbox, {"other": "id > 500"})
        processes.start(other, "other")
        wait_until(lambda: len(sandbox.requests) >= 20, what="the other process sending")
        processes.start(seen, "seen")
        first_429: float = wait_until(
            lambda: next((r.start for r in limiting.requests if r.status == 429), 0.0),
            what="a 429",
        )
        wait_until(
            lambda: sandbox.requests[-1].start >= first_429 + 4.0,
            what="the other process's requests after it",
        )
        processes.end()

    sent = sandbox.requests
    assert not [r for r in sent if r.status == 429]  # the other never saw one
    before = per_second(sent, first_429 - 1.0, first_429)[0]
    after = per_second(sent, first_429 + 2.0, first_429 + 4.0)
    assert before >= 0.6 * LIMIT / 2, (before, after)  # its share: half of the ceiling
    assert max(after) <= 0.5 * LIMIT / 2, (before, after)  # slowed by the other's 429s
    assert min(after) > 0, (before, after)  # slowed, not stopped
