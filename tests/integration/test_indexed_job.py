"""``backfill --shard I``: a Kubernetes Indexed Job, simulated with real processes.

deploy/kubernetes/backfill-job.yaml starts one pod per shard, each running
``personyze-sync backfill ... --shard $(JOB_COMPLETION_INDEX)``, and starts a pod that
died again with the same index. Here: three real processes, indices 0..2, on a 3-shard
job (PostgreSQL source, PostgreSQL state store, the sandbox over HTTP); one is
SIGKILLed mid-backfill and started again with its index.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from sync.sandbox import Faults, SandboxServer
from sync.state.store import StateStore, state_engine
from tests.support import (
    API_KEY,
    Outcome,
    assert_one_user_per_row,
    config_doc,
    make_customers,
    script,
    wait_until,
    with_password,
    write_config,
)

ROWS = 900
SHARDS = 3
BATCH = 50
VICTIM = 1
LOG_AS = ["--json", "-v", "--log-format", "json"]  # "run started" says where a run reads from


def indexed_config(tmp_path: Path, pg_url: str, sandbox: SandboxServer, *, shards: int) -> Path:
    make_customers(pg_url, range(1, ROWS + 1))
    doc = config_doc(
        source_url=with_password(pg_url),
        api_url=sandbox.url,
        state_url=with_password(pg_url),
        source={"batch_size": BATCH},
        personyze={"concurrency": 2},
        job={"shards": shards},
    )
    return write_config(tmp_path / "sync.yaml", doc)


def pod(config: Path, index: int) -> subprocess.Popen[str]:
    """What the Indexed Job's pod number ``index`` runs."""
    return subprocess.Popen(
        [script(), "backfill", "-c", str(config), "customers", "--shard", str(index), *LOG_AS],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, out + err


def query(pg_url: str, sql: str) -> list[dict[str, Any]]:
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def checkpoint_of(pg_url: str, part: str) -> object:
    """The part's checkpoint; None before there is one (or before the tables are made)."""
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        made = inspect(conn).has_table("psync_checkpoints")
    engine.dispose()
    if not made:
        return None
    found = query(pg_url, f"SELECT key_value FROM psync_checkpoints WHERE job = '{part}'")
    return found[0]["key_value"] if found else None


def shard_of(row_key: object) -> int:
    return int(str(row_key)) % SHARDS


def test_three_indices_one_killed_and_restarted_send_each_row_once_by_its_own_index(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    sandbox.faults = Faults(latency_s=0.01)  # about 2 s a shard: time to kill one midway
    config = indexed_config(tmp_path, pg_url, sandbox, shards=SHARDS)
    victim_part = f"customers#{VICTIM}/{SHARDS}"
    pods = {i: pod(config, i) for i in range(SHARDS)}
    pids = {i: {p.pid} for i, p in pods.items()}
    try:
        wait_until(lambda: checkpoint_of(pg_url, victim_part), timeout=60, what="a checkpoint")
        victim = pods[VICTIM]
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)  # and its pipes closed
        assert victim.returncode == -signal.SIGKILL
        left_at = checkpoint_of(pg_url, victim_part)  # its last, as it can write no more
        done = [u for u in sandbox.users() if shard_of(u["internal_id"]) == VICTIM]
        assert len(done) < ROWS // SHARDS, "the shard was done before its process was killed"

        with closing(StateStore(state_engine(with_password(pg_url)), time.time)) as store:
            wait_until(
                lambda: victim_part not in {lease.name for lease in store.leases()},
                what="PostgreSQL to release the dead process's lease",
            )
        pods[VICTIM] = pod(config, VICTIM)  # Kubernetes starts the index again
        pids[VICTIM].add(pods[VICTIM].pid)
        logs = {}
        for i, process in pods.items():
            code, said = finish(process)
            assert code == 0, f"index {i}: {said}"
            logs[i] = [json.loads(line) for line in said.splitlines() if line.startswith('{"')]
    finally:
        for process in pods.values():
            if process.poll() is None:
                process.kill()
                process.communicate()

    # nothing lost, nothing doubled
    assert_one_user_per_row(sandbox, ROWS)
    # each shard's rows by its own index only: every delivery of a row was recorded by a
    # run of that row's shard, held by a process started with that shard's index
    deliveries = query(
        pg_url,
        "SELECT d.job, d.row_key, r.holder FROM psync_deliveries d "
        "JOIN psync_runs r ON r.id = d.run_id",
    )
    assert {shard_of(d["row_key"]) for d in deliveries} == set(range(SHARDS))
    for d in deliveries:
        index = shard_of(d["row_key"])
        assert d["job"] == f"customers#{index}/{SHARDS}", d
        assert int(str(d["holder"]).rsplit(":", 1)[1]) in pids[index], d
    # and by request: the shards no process died in were sent once each; the killed
    # one resent at most what was in flight when it died
    posts = [r.body["internal_id"] for r in sandbox.requests if r.method == "POST"]
    per_shard = {i: sum(1 for k in posts if shard_of(k) == i) for i in range(SHARDS)}
    shard_rows = ROWS // SHARDS
    assert per_shard[0] == per_shard[2] == shard_rows, per_shard
    assert shard_rows <= per_shard[VICTIM] <= shard_rows + 4 * BATCH, per_shard

    # the restarted index resumed its shard's checkpoint, where the killed one left it
    runs = query(pg_url, f"SELECT holder, outcome FROM psync_runs WHERE job = '{victim_part}'")
    assert sorted(r["outcome"] for r in runs) == ["died", "success"], runs
    (started,) = [line for line in logs[VICTIM] if line.get("event") == "run started"]
    assert started["checkpoint"] == started["reads_from"], started
    assert started["reads_from"]["key"] == int(str(left_at)), (started, left_at)
    assert query(pg_url, "SELECT DISTINCT kind FROM psync_runs") == [{"kind": "backfill"}]


def test_a_shard_held_by_another_process_fails_the_index_so_kubernetes_retries_it(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    """The pod that replaces one whose connection is not yet gone must not count its
    shard as done: it exits 1 (retried), having sent nothing."""
    config = indexed_config(tmp_path, pg_url, sandbox, shards=SHARDS)
    with closing(StateStore(state_engine(with_password(pg_url)), time.time)) as store:
        store.create_schema()  # as the first run would
        lease = store.lease("customers#2/3")
        assert lease is not None
        with lease:
            code, said = finish(pod(config, 2))
        assert code == 1, said
        assert "customers#2/3 is being run by another process" in said, said
        assert sandbox.requests == []

    code, said = finish(pod(config, 2))
    assert code == 0, said
    assert '"sent": 300' in said
    users = {int(u["internal_id"]) for u in sandbox.users()}
    assert users == {k for k in range(1, ROWS + 1) if k % SHARDS == 2}


@pytest.mark.parametrize(
    ("shards", "args", "message"),
    [
        (1, ["--shard", "0"], "job customers has no shards (shards: 1)"),
        (3, ["--shard", "3"], "job customers has 3 shards, numbered 0 to 2"),
        (3, ["--shard", "-1"], "-1 is not in the range x>=0"),
        (3, ["--shard", "1", "--processes", "2"], "--shard runs one shard in this process"),
    ],
)
def test_a_shard_the_job_does_not_have_is_refused_before_anything_runs(
    tmp_path: Path,
    pg_url: str,
    sandbox: SandboxServer,
    cli: Callable[..., Outcome],
    shards: int,
    args: list[str],
    message: str,
) -> None:
    config = indexed_config(tmp_path, pg_url, sandbox, shards=shards)
    done = cli("backfill", "-c", str(config), "customers", *args)
    assert done.code == 2, done.text
    assert message in done.flat
    assert sandbox.requests == []
