"""The fault matrix, continued: the faults that would double a user rather than lose a
row. Each scenario syncs the harness's PostgreSQL people (here without emails, so no
resend can merge) and ends with the sandbox equal to the source: no row missing, no
value wrong, no duplicate user.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sync.sandbox import Faults, SandboxServer
from tests.reliability.harness import (
    ROWS,
    WINDOW,
    Watcher,
    assert_sandbox_equals_source,
    cursor_order,
    finish,
    make_people,
    report,
    run_to_end,
    settle,
    start,
    sync_config,
    wait_for_posts,
)
from tests.support import API_KEY, terminate_lease, wait_until


@pytest.fixture
def source(pg_url: str) -> str:
    make_people(pg_url)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE people SET email = NULL"))  # internal_id only: no merge
    engine.dispose()
    return pg_url


def test_host_clocks_ten_minutes_apart_make_no_second_user(tmp_path: Path, source: str) -> None:
    """A process 10 min fast marks rows and is killed; one 10 min slow reconciles them."""
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.004)) as sandbox:
        config = sync_config(tmp_path, source, sandbox)
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            for offset in (600.0, -600.0, 600.0):
                process = start(config, clock_offset=offset)
                wait_for_posts(sandbox, len(sandbox.requests) + 400, process)
                process.kill()  # requests in flight: their answers are lost
                finish(process)
            process = start(config, "once", clock_offset=-600.0)
            code, output = finish(process)
            assert code == 0, output
            settle(config)
        outcome = assert_sandbox_equals_source(source, sandbox)
    assert watcher.violations == []
    assert outcome.extra_acks <= 3 * WINDOW
    report("clock-skew", outcome)


def test_writes_applied_after_their_timeout_are_adopted_not_resent(
    tmp_path: Path, source: str
) -> None:
    faults = Faults(late_apply_rate=0.02, late_apply_s=1.5, latency_s=0.002, seed=8)
    with SandboxServer(API_KEY, faults=faults) as sandbox:
        config = sync_config(tmp_path, source, sandbox, personyze={"timeout_s": 0.5})
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            output = run_to_end(config)
            late = sum(1 for r in sandbox.requests if r.fault == "late_apply")
            assert late > 20 and "unresolved" in output  # the fault landed
            wait_until(lambda: not sandbox.late_pending(), timeout=30, what="the late writes")
            sandbox.faults = Faults()
            settle(config)
        outcome = assert_sandbox_equals_source(source, sandbox)
    assert watcher.violations == []
    report("late-applied", outcome, late=late)


def test_a_lease_whose_connection_drops_is_fenced_and_taken_over(
    tmp_path: Path, source: str, pg_url: str
) -> None:
    # 16 in flight at 20 ms: at most 800 rows/s, so the run outlasts the takeover
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.02)) as sandbox:
        config = sync_config(tmp_path, source, sandbox, state_url=pg_url)
        first = start(config)
        wait_for_posts(sandbox, ROWS // 5, first)
        terminate_lease(pg_url, "people")  # its own advisory lock: not the senders' beats
        dropped_at = len(sandbox.requests)
        second = start(config, "once")  # a replica: takes the lease the first one lost
        code, output = finish(first)
        assert code == 1 and "lease" in output, output
        code, output = finish(second)
        assert code == 0, output
        settle(config)
        outcome = assert_sandbox_equals_source(source, sandbox)
    assert dropped_at < ROWS
    report("lease-fenced", outcome)


def test_a_mirror_run_whose_joined_table_empties_at_its_end_deletes_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE people AS SELECT i AS id, 'First' || i AS first_name, "
            "timestamp '2025-01-01' + i * interval '1 second' AS updated_at "
            "FROM generate_series(1, 2200) i"))  # fmt: skip
        conn.execute(text("CREATE TABLE tags AS SELECT id, 'vip' AS tag FROM people"))
    query = "SELECT p.id, p.first_name, p.updated_at FROM people p JOIN tags t ON t.id = p.id"
    with SandboxServer(API_KEY) as sandbox:
        from tests.support import config_doc, write_config

        doc = config_doc(
            source_url=pg_url,
            api_url=sandbox.url,
            state_url=f"sqlite:///{tmp_path}/state.db",
            source={"table": None, "query": query, "batch_size": 200},
            job={
                "name": "people",
                "mapping": {"id": "internal_id", "first_name": "first_name"},
                "sync": "mirror",
                "max_deletes_per_run": "50%",
            },
            personyze={"concurrency": 2},
        )
        del doc["jobs"][0]["source"]["table"]
        config = write_config(tmp_path / "sync.yaml", doc)
        run_to_end(config, "once")
        with engine.begin() as conn:
            conn.execute(text("UPDATE people SET first_name = first_name || '+', "
                              "updated_at = now() WHERE id <= 40"))  # fmt: skip
        sandbox.clear_requests()
        sandbox.faults = Faults(latency_s=0.1)  # 2 in flight: the last 10 take 0.5 s
        process = start(config, "once")
        wait_for_posts(sandbox, 30, process)
        with engine.begin() as conn:  # the joined table empties for the run's last part
            conn.execute(text("CREATE TABLE tags_saved AS SELECT * FROM tags"))
            conn.execute(text("DELETE FROM tags"))
        code, output = finish(process)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tags SELECT * FROM tags_saved"))
        assert code == 1 and "vanished from the source" in output, output  # it landed
        assert [r for r in sandbox.requests if r.method == "DELETE"] == []
        sandbox.faults = Faults()
        run_to_end(config, "once")
        users = {int(u["internal_id"]): u for u in sandbox.users()}
        assert len(users) == len(sandbox.users()) == 2200
        assert all(users[i]["first_name"].endswith("+") for i in range(1, 41))
    engine.dispose()


__all__ = ["subprocess"]
