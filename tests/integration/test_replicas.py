"""Several ``personyze-sync run`` replicas on one PostgreSQL state store.

Real daemon processes, a real PostgreSQL state store, the sandbox over HTTP: a job
never runs in two replicas at once, a replica killed mid-run is replaced by another
at its next tick, and a sharded job is loaded by the replicas in parallel.
"""

from __future__ import annotations

import itertools
import signal
import socket
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from sync.sandbox import Faults, SandboxServer
from tests.support import (
    Daemon,
    assert_one_user_per_row,
    config_doc,
    make_customers,
    psync_runs,
    users_by_internal_id,
    wait_until,
    with_password,
    write_config,
)

HOST = socket.gethostname()


def replica_config(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, *, rows: int, **job: Any
) -> Path:
    make_customers(pg_url, range(1, rows + 1))
    doc = config_doc(
        source_url=with_password(pg_url),
        api_url=sandbox.url,
        state_url=with_password(pg_url),  # the state store: the same PostgreSQL database
        source={"batch_size": 100},
        personyze={"concurrency": 2},
        job={"schedule": {"every": "1s"}, **job},
    )
    return write_config(tmp_path / "sync.yaml", doc)


def lease_holders(pg_url: str) -> dict[str, str]:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT job, holder FROM psync_leases WHERE holder <> ''")).all()
    engine.dispose()
    return {r.job: r.holder for r in rows}


def assert_never_twice_at_once(all_runs: list[dict[str, Any]], killed_at: float = 0.0) -> None:
    """Runs of one job (or shard) never overlap in time, whoever ran them.

    A run that died has no end: it ended when its process was killed, at ``killed_at``.
    """
    by_job: dict[str, list[tuple[float, float]]] = {}
    for r in all_runs:
        if r["ended_at"] is not None:
            end = r["ended_at"]
        else:
            end = killed_at if r["outcome"] == "died" else time.time()
        by_job.setdefault(r["job"], []).append((r["started_at"], end))
    for job, spans in by_job.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two runs of {job} overlapped"


def test_three_replicas_never_run_a_job_twice_and_one_takes_over_from_a_killed_one(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    rows = 2_000
    sandbox.faults = Faults(latency_s=0.01)  # about 10 s of sending: time to kill the holder
    config = replica_config(tmp_path, pg_url, sandbox, rows=rows)
    for i in range(3):
        daemons.append(Daemon(config, tmp_path / f"replica{i}.log"))
    by_pid = {d.process.pid: d for d in daemons}

    holder = wait_until(lambda: lease_holders(pg_url).get("customers"), what="a lease")
    wait_until(lambda: len(sandbox.users()) >= 300, what="the first rows")
    victim = by_pid[int(holder.rsplit(":", 1)[1])]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    killed_at = time.time()

    wait_until(lambda: len(sandbox.users()) >= rows, timeout=90, what="every row")
    history = psync_runs(pg_url)
    took_over = min(
        r["started_at"] for r in history if r["started_at"] > killed_at and r["holder"] != holder
    )
    assert took_over - killed_at < 1.0 + 2.0  # one schedule interval, and a little slack
    assert {r["holder"] for r in history} >= {holder}
    assert [r["outcome"] for r in history if r["holder"] == holder][-1] == "died"
    assert_never_twice_at_once(history, killed_at)
    assert_one_user_per_row(sandbox, rows)
    assert len(users_by_internal_id(sandbox.users())) == rows
    skipped = sum(
        d.metric("personyze_sync_runs_skipped_total", job="customers")
        for d in daemons
        if d is not victim
    )
    assert skipped > 0  # the others saw the lease held and stood by


def test_a_sharded_job_is_loaded_by_three_replicas_in_parallel(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    rows = 3_000
    sandbox.faults = Faults(latency_s=0.005)
    config = replica_config(tmp_path, pg_url, sandbox, rows=rows, shards=3)
    for i in range(3):
        daemons.append(Daemon(config, tmp_path / f"replica{i}.log"))

    wait_until(
        lambda: sum(r["rows_sent"] for r in psync_runs(pg_url)) >= rows,
        timeout=90,
        what="runs that sent every row",
    )
    assert_one_user_per_row(sandbox, rows)
    history = [r for r in psync_runs(pg_url) if r["rows_sent"]]
    assert {r["job"] for r in history} == {f"customers#{i}/3" for i in range(3)}
    assert len({r["holder"] for r in history}) >= 2  # the shards were spread over replicas
    assert_never_twice_at_once(psync_runs(pg_url))
    assert sum(r["rows_sent"] for r in history) == rows  # each row sent once, by its shard
