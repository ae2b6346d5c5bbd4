"""Sharded jobs in one process, the shard count guard, and one process per SQLite store."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from sync import admin
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import SandboxServer
from sync.wiring import Wiring
from tests.support import (
    API_KEY,
    Outcome,
    change_customers,
    config_doc,
    customers,
    load,
    make_customers,
    script,
    users_by_internal_id,
    wait_until,
    write_config,
)


def sharded_config(
    tmp_path: Path, source_url: str, state_url: str, sandbox: SandboxServer, shards: int
) -> Path:
    doc = config_doc(
        source_url=source_url, api_url=sandbox.url, state_url=state_url, job={"shards": shards}
    )
    return write_config(tmp_path / "sync.yaml", doc)


def test_each_shard_reads_its_part_and_keeps_its_own_checkpoint(
    tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    make_customers(source_url, range(1, 101))
    config = sharded_config(tmp_path, source_url, f"sqlite:///{tmp_path}/s.db", sandbox, 3)
    with Wiring(load(config)) as app:
        job = app.config.jobs[0]
        stats = run_job(app, job, RunOptions())
        assert stats.sent == 100 and stats.held_elsewhere == []
        for name, shard in app.parts(job):
            assert shard is not None
            keys = {int(k) for k, _ in app.store.part(name).known_keys(None, 1000)}
            assert keys == {i for i in range(1, 101) if i % 3 == shard.index}
            assert app.store.part(name).checkpoint() is not None
        assert [s.name for s in admin.status(app)] == [f"customers#{i}/3" for i in range(3)]
        change_customers(source_url, customers.c.id == 7, first_name="Seven")
        from datetime import datetime

        change_customers(source_url, customers.c.id == 7, updated_at=datetime(2030, 1, 1))
        sandbox.clear_requests()
        again = run_job(app, job, RunOptions())
    assert again.sent == 1
    assert [r.method for r in sandbox.requests if r.method == "POST"] == ["POST"]
    users = users_by_internal_id(sandbox.users())
    assert len(users) == 100 and users["7"][0]["first_name"] == "Seven"


def test_changing_the_shard_count_is_refused_until_resharded(
    cli: Callable[..., Outcome], tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, 61))
    state = f"sqlite:///{tmp_path}/s.db"
    config = sharded_config(tmp_path, pg_url, state, sandbox, 3)
    assert cli("once", "-c", str(config)).code == 0
    assert len(sandbox.users()) == 60

    doc = yaml.safe_load(config.read_text())
    doc["jobs"][0]["shards"] = 2
    config.write_text(yaml.safe_dump(doc))
    refused = cli("once", "-c", str(config))
    assert refused.code == 2
    assert "kept in 3 shard(s) but the config says shards: 2" in refused.flat
    assert "checkpoint reset -c CONFIG customers --reshard" in refused.flat

    moved = cli("checkpoint", "reset", "-c", str(config), "customers", "--reshard")
    assert moved.code == 0 and "60 synced row(s) moved to 2 shard(s)" in moved.flat
    sandbox.clear_requests()
    again = cli("once", "-c", str(config))
    assert again.code == 0
    assert [r.method for r in sandbox.requests if r.method != "GET"] == []  # nothing resent
    with Wiring(load(config)) as app:
        for name, shard in app.parts(app.config.jobs[0]):
            assert shard is not None
            keys = {int(k) for k, _ in app.store.part(name).known_keys(None, 1000)}
            assert keys == {i for i in range(1, 61) if i % 2 == shard.index}

    doc["jobs"][0]["shards"] = 1  # and back to one part
    config.write_text(yaml.safe_dump(doc))
    assert cli("checkpoint", "reset", "-c", str(config), "customers", "--reshard").code == 0
    with Wiring(load(config)) as app:
        assert app.store.part("customers").row_count() == 60
    assert cli("once", "-c", str(config)).code == 0
    assert len(sandbox.users()) == 60


def test_a_second_process_on_a_sqlite_state_store_is_refused(
    cli: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 5))
    state = f"sqlite:///{tmp_path}/state.db"
    doc = config_doc(source_url=sqlite_url, api_url=sandbox.url, state_url=state)
    config = write_config(tmp_path / "sync.yaml", doc)
    daemon = subprocess.Popen(
        [script(), "run", "-c", str(config), "--http-port", "0"],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ran() -> bool:
            assert daemon.poll() is None, "the daemon ended"
            return len(sandbox.users()) >= 4

        wait_until(ran, what="the daemon's run (it holds the store)")
        refused = cli("once", "-c", str(config))
        assert refused.code == 1
        assert "serves one process at a time" in refused.flat
        assert f"{daemon.pid}" in refused.flat
        status = cli("status", "-c", str(config))  # reading is always allowed
        assert status.code == 0 and "customers" in status.text
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert cli("once", "-c", str(config)).code == 0  # the daemon is gone: the store is free
