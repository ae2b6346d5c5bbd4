"""``personyze-sync run`` as a real process: schedules, metrics, signals, health, reloads."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from sync.sandbox import Faults, SandboxServer
from tests.support import (
    API_KEY,
    BASE_TIME,
    DB_PASSWORD,
    Daemon,
    Receiver,
    change_customers,
    config_doc,
    customers,
    execute,
    make_customers,
    script,
    users_by_internal_id,
    wait_until,
    with_password,
    write_config,
)


def test_changes_arrive_within_an_interval_and_the_metrics_count_them(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    make_customers(pg_url, range(1, 41))
    doc = config_doc(
        source_url=with_password(pg_url),
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"schedule": {"every": "1s"}},
    )
    daemon = Daemon(write_config(tmp_path / "sync.yaml", doc), tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(lambda: len(sandbox.users()) == 40, what="the first run")
    assert daemon.get("/readyz").status_code == 200

    later = BASE_TIME + timedelta(days=1)
    change_customers(pg_url, customers.c.id.in_([3, 4]), last_name="Moved", updated_at=later)
    make_customers(pg_url, [41], updated_at=later)
    changed_at = time.monotonic()
    wait_until(
        lambda: (
            len(sandbox.users()) == 41
            and users_by_internal_id(sandbox.users())["3"][0]["last_name"] == "Moved"
        ),
        timeout=5,
        what="the changes",
    )
    assert time.monotonic() - changed_at < 2.5  # one 1 s interval, plus the run itself

    wait_until(
        lambda: (
            daemon.metric(
                "personyze_sync_rows_total", job="customers", object="users", outcome="sent"
            )
            == 43
        ),
        timeout=5,
        what="the sent counter",
    )
    posts = sum(1 for r in sandbox.requests if r.method == "POST")
    assert posts == 43
    assert daemon.metric("personyze_sync_requests_total", status="200") == posts
    assert daemon.metric("personyze_sync_request_seconds_count") == posts
    runs = daemon.metric(
        "personyze_sync_runs_total", job="customers", object="users", outcome="success"
    )
    assert runs >= 2
    assert daemon.metric(
        "personyze_sync_last_success_timestamp_seconds", job="customers", object="users"
    ) == pytest.approx(time.time(), abs=10)
    lag = daemon.metric("personyze_sync_lag_seconds", job="customers")
    assert lag == pytest.approx(time.time() - later.replace(tzinfo=UTC).timestamp(), abs=30)

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    logs = daemon.logs()
    assert '"event": "run finished"' in logs and '"job": "customers"' in logs
    assert API_KEY not in logs and DB_PASSWORD not in logs


def test_sigterm_during_a_large_run_exits_cleanly_and_a_restart_finishes(
    tmp_path: Path, pg_url: str, daemons: list[Daemon]
) -> None:
    rows = 1500
    make_customers(pg_url, range(1, rows + 1))
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.01)) as sandbox:
        doc = config_doc(
            source_url=pg_url,
            api_url=sandbox.url,
            state_url=f"sqlite:///{tmp_path}/state.db",
            source={"batch_size": 100},
            personyze={"concurrency": 2},
            job={"schedule": {"every": "1s"}},
        )
        doc["daemon"] = {"grace_period": "5s"}
        config = write_config(tmp_path / "sync.yaml", doc)
        first = Daemon(config, tmp_path / "first.log")
        daemons.append(first)
        wait_until(lambda: len(sandbox.requests) >= 300, what="the run to be under way")
        assert first.metric("personyze_sync_runs_skipped_total", job="customers") >= 1
        stopped_at = time.monotonic()
        first.signal(signal.SIGTERM)
        assert first.wait(10) == 0, first.logs()
        assert time.monotonic() - stopped_at < 5
        assert '"run stopped"' in first.logs()
        sent_before = len(sandbox.users())
        assert 0 < sent_before < rows

        second = Daemon(config, tmp_path / "second.log")
        daemons.append(second)
        wait_until(lambda: len(sandbox.users()) == rows, timeout=60, what="the restart")
        second.signal(signal.SIGINT)
        assert second.wait(10) == 0
        users = users_by_internal_id(sandbox.users())
        assert all(len(u) == 1 for u in users.values()) and len(users) == rows
        posts = sum(1 for r in sandbox.requests if r.method == "POST")
        assert posts <= rows + 100  # at most the batch that was in flight is resent


def test_a_job_on_a_dead_database_fails_while_the_other_syncs(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    receiver = Receiver()
    with receiver:
        check_dead_job(tmp_path, pg_url, sandbox, daemons, receiver)


def check_dead_job(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, daemons: list[Daemon], receiver: Receiver
) -> None:
    make_customers(pg_url, range(1, 11))
    doc = config_doc(
        source_url=pg_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"schedule": {"every": "1s"}},
    )
    dead = {
        **doc["jobs"][0],
        "name": "dead",
        "source": {
            **doc["jobs"][0]["source"],
            "url": f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:1/x",
        },
    }
    doc["jobs"].append(dead)
    doc["alerts"] = {"webhook_url": receiver.url}
    daemon = Daemon(write_config(tmp_path / "sync.yaml", doc), tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(lambda: len(sandbox.users()) == 10, what="the healthy job")

    ready = wait_until(
        lambda: (
            (r := daemon.get("/readyz")).status_code == 503
            and r.json()["jobs"]["dead"]["state"] == "failing"
            and r
        ),
        what="/readyz to say which",
    )
    body = ready.json()
    assert body["jobs"]["customers"]["state"] == "ok"
    assert "127.0.0.1:1" in body["jobs"]["dead"]["last_error"]
    assert DB_PASSWORD not in ready.text

    make_customers(pg_url, [11], updated_at=BASE_TIME + timedelta(days=1))
    wait_until(lambda: len(sandbox.users()) == 11, timeout=5, what="the healthy job to go on")
    wait_until(
        lambda: (
            daemon.metric("personyze_sync_runs_total", job="dead", object="users", outcome="failed")
            >= 2
        ),
        what="a second failure",
    )
    assert len(receiver.texts) == 1, receiver.texts  # told once, not at every failure
    assert receiver.texts[0].startswith("personyze-sync: job dead failed: ")
    assert DB_PASSWORD not in receiver.texts[0]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    assert DB_PASSWORD not in daemon.logs()


def test_sighup_reloads_a_valid_config_and_keeps_the_old_one_otherwise(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    make_customers(sqlite_url, range(1, 6))
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"schedule": {"every": "1s"}},
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(lambda: len(sandbox.users()) == 5, what="the first run")

    config.write_text(config.read_text().replace("personyze:", "personyze:\n  bogus: 1", 1))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "config reload refused" in daemon.logs(), what="the refusal")
    assert "bogus" in daemon.logs()

    execute(
        sqlite_url,
        text("CREATE TABLE vips (id INTEGER PRIMARY KEY, email TEXT, v INT)"),
        text("INSERT INTO vips VALUES (100, 'vip@example.com', 1)"),
    )
    doc["jobs"].append(
        {
            "name": "vips",
            "source": {"url": sqlite_url, "table": "vips", "cursor": "v", "key": "id"},
            "mapping": {"id": "internal_id", "email": "email"},
            "schedule": {"every": "1s"},
        }
    )
    write_config(config, doc)
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: len(sandbox.users()) == 6, what="the new job")
    assert '"config reloaded"' in daemon.logs()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0


def test_a_second_signal_exits_at_once_and_loses_nothing(
    tmp_path: Path, pg_url: str, daemons: list[Daemon]
) -> None:
    rows = 400
    make_customers(pg_url, range(1, rows + 1))
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.05)) as sandbox:
        doc = config_doc(
            source_url=pg_url,
            api_url=sandbox.url,
            state_url=f"sqlite:///{tmp_path}/state.db",
            source={"batch_size": 200},
            personyze={"concurrency": 2},
        )
        doc["daemon"] = {"grace_period": "60s"}
        config = write_config(tmp_path / "sync.yaml", doc)
        daemon = Daemon(config, tmp_path / "daemon.log")
        daemons.append(daemon)
        wait_until(lambda: len(sandbox.requests) >= 20, what="the run to be under way")
        # from now on a request takes 3 s: the first signal's graceful stop waits for the
        # two in flight, and the second signal comes while it does
        answered = len(sandbox.requests)
        sandbox.faults = Faults(latency_s=3.0)
        wait_until(
            lambda: len(sandbox.requests) >= answered + 2,
            what="the two fast requests in flight to be answered (the slow ones follow)",
        )
        stopped_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: "stopping: no new runs" in daemon.logs(), what="the first signal's stop")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(5) == 1
        assert time.monotonic() - stopped_at < 2, "the second signal did not exit at once"
        assert "second signal" in daemon.logs()
        sandbox.faults = Faults()

        finish = subprocess.run(
            [script(), "once", "-c", str(config)],
            env={**os.environ, "TEST_API_KEY": API_KEY},
            capture_output=True,
            timeout=120,
        )
        assert finish.returncode == 0, finish.stderr
        users = users_by_internal_id(sandbox.users())
        assert len(users) == rows and all(len(u) == 1 for u in users.values())
