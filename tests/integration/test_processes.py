"""``backfill --processes N``: one backfill of a sharded job spread over N processes.

The real CLI as a subprocess, its children spawned for real, a PostgreSQL state
store, the sandbox over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from sync.sandbox import Faults, SandboxServer
from tests.support import (
    API_KEY,
    DB_PASSWORD,
    assert_one_user_per_row,
    config_doc,
    execute,
    make_customers,
    psync_runs,
    script,
    three_shard_config,
    wait_until,
    write_config,
)

ROWS = 600


def sharded_config(
    tmp_path: Path, source_url: str, pg_url: str, sandbox: SandboxServer, **job: Any
) -> Path:
    return three_shard_config(tmp_path, source_url, pg_url, sandbox, ROWS, **job)


def holders(pg_url: str) -> dict[str, str]:
    """Who holds which lease now; nobody before the first process made the tables."""
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("psync_leases"):
                return {}
            rows = conn.execute(text("SELECT job, holder FROM psync_leases")).all()
            return {r.job: r.holder for r in rows}
    finally:
        engine.dispose()


def backfill(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A backfill of ``customers`` run to its end: what it printed, and its exit status."""
    started = start_backfill(config, *args)
    try:
        out, err = started.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        started.kill()
        raise
    return subprocess.CompletedProcess(started.args, started.returncode, out, err)


def start_backfill(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [script(), "backfill", "-c", str(config), "customers", "--json", *args],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_shards_are_loaded_by_several_processes_each_row_once(
    tmp_path: Path, mariadb_url: str, pg_url: str, sandbox: SandboxServer
) -> None:
    """The source on MariaDB, the state on PostgreSQL (the shards' reading on each
    database is tests/integration/test_shards.py's business)."""
    config = sharded_config(tmp_path, mariadb_url, pg_url, sandbox)

    done = backfill(config, "--processes", "2")
    assert done.returncode == 0, done.stderr
    assert '"read": 600' in done.stdout and '"sent": 600' in done.stdout
    assert_one_user_per_row(sandbox, ROWS)
    assert sum(1 for r in sandbox.requests if r.method == "POST") == ROWS
    history = psync_runs(pg_url)
    assert sorted(r["job"] for r in history) == [f"customers#{i}/3" for i in range(3)]
    assert len({r["holder"] for r in history}) == 2  # two processes, neither the parent
    assert {r["outcome"] for r in history} == {"success"}
    assert DB_PASSWORD not in done.stdout + done.stderr

    again = backfill(config, "--processes", "3")
    assert again.returncode == 0, again.stderr
    assert '"sent": 0' in again.stdout
    assert sum(1 for r in sandbox.requests if r.method == "POST") == ROWS


def test_a_stop_reaches_every_process_and_the_next_backfill_finishes_the_rest(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    sandbox.faults = Faults(latency_s=0.02)  # 600 rows at 4 in flight: seconds to stop in
    config = sharded_config(tmp_path, pg_url, pg_url, sandbox)
    parent = start_backfill(config, "--processes", "2")
    wait_until(lambda: len(holders(pg_url)) == 2, timeout=60, what="both processes")
    wait_until(lambda: len(sandbox.requests) >= 60, timeout=60, what="the first rows")
    parent.send_signal(signal.SIGTERM)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode != 0, out
    assert "stopped" in out + err
    stopped = psync_runs(pg_url)
    assert stopped and {r["outcome"] for r in stopped} <= {"stopped", "success"}
    sent_before = len(sandbox.requests)
    assert sent_before < ROWS  # it did stop

    sandbox.faults = Faults()
    done = backfill(config, "--processes", "2")
    assert done.returncode == 0, done.stderr
    assert_one_user_per_row(sandbox, ROWS)
    assert len(sandbox.requests) == ROWS  # a clean stop: no row sent twice


def test_a_process_that_dies_fails_the_backfill_and_a_rerun_completes_it(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    sandbox.faults = Faults(latency_s=0.02)
    config = sharded_config(tmp_path, pg_url, pg_url, sandbox)
    parent = start_backfill(config, "--processes", "2")
    held = wait_until(lambda: holders(pg_url), timeout=60, what="a running process")
    victim = int(next(iter(held.values())).rsplit(":", 1)[1])
    assert victim != parent.pid
    os.kill(victim, signal.SIGKILL)
    out, err = parent.communicate(timeout=90)
    assert parent.returncode == 1, out + err
    assert "ended without a result (exit code -9)" in out

    sandbox.faults = Faults()
    done = backfill(config, "--processes", "2")
    assert done.returncode == 0, done.stderr
    assert_one_user_per_row(sandbox, ROWS)


@pytest.mark.parametrize(
    ("state", "shards", "args", "message"),
    [
        ("sqlite", 3, ["--processes", "2"], "a SQLite state store serves one process"),
        ("pg", 1, ["--processes", "2"], "job customers has 1 shard(s)"),
        ("pg", 3, ["--processes", "2", "--dry-run"], "--dry-run runs in one process"),
        ("pg", 3, ["--processes", "0"], "0 is not in the range 1<=x<=64"),
    ],
)
def test_what_several_processes_cannot_share_is_refused_before_anything_runs(
    tmp_path: Path,
    pg_url: str,
    sandbox: SandboxServer,
    state: str,
    shards: int,
    args: list[str],
    message: str,
) -> None:
    make_customers(pg_url, range(1, 11))
    doc = config_doc(
        source_url=pg_url,
        api_url=sandbox.url,
        state_url=pg_url if state == "pg" else f"sqlite:///{tmp_path}/state.db",
        job={"shards": shards},
    )
    refused = backfill(write_config(tmp_path / "sync.yaml", doc), *args)
    assert refused.returncode == 2
    assert message in refused.stdout + refused.stderr
    assert sandbox.requests == []


def test_a_failure_in_the_processes_is_printed_once_per_part(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    """The children leave a part's failure to the parent, which prints it (issue 17, 12)."""
    config = sharded_config(tmp_path, pg_url, pg_url, sandbox)
    execute(pg_url, text("ALTER TABLE customers RENAME TO customers_gone"))
    done = backfill(config, "--processes", "2")
    assert done.returncode == 1, done.stderr
    assert "run failed" not in done.stderr, done.stderr  # the children's log lines
    assert "table 'customers' does not exist" not in done.stderr, done.stderr
    report = json.loads(done.stdout)  # the parent's report names it
    assert "table 'customers' does not exist" in json.dumps(report), done.stdout
