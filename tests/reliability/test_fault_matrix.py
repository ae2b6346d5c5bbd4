"""The fault matrix: each scenario syncs 6,000 PostgreSQL rows full of cursor ties into
the sandbox under one kind of fault, then compares the sandbox with the source row by
row and column by column. Every scenario also checks, while the sync runs, that the
checkpoint never passes a row Personyze has not acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sync.sandbox import Faults, SandboxServer
from tests.reliability.harness import (
    BATCH,
    ROWS,
    T0,
    WINDOW,
    Watcher,
    assert_sandbox_equals_source,
    cursor_order,
    finish,
    make_people,
    report,
    run_history,
    run_to_end,
    settle,
    start,
    sync_config,
    wait_for_posts,
)
from tests.support import API_KEY, wait_until


class OwnPostgres:
    """A PostgreSQL server of one test's own, on a free port, which the test may restart
    or stop: the shared server on 5432 serves the tests running beside it (pytest -n 3)."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="psync-pg-"))
        self.data = self.home / "data"
        # initdb and postgres refuse to run as root: as the server's own user, then
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.home, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        with (self.data / "postgresql.conf").open("a") as conf:  # for every start
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.home}'\n"
            )
        self.ctl("start")

    def ctl(self, action: str) -> None:
        """``pg_ctl restart``, ``stop`` or ``start`` (fast shutdowns, like pg_ctlcluster's)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "log"), "-w", action)

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.home, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [*self._as, _pg_bin(program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)


def _pg_bin(program: str) -> str:
    """The server's own programs are not on PATH on Debian: its versioned bin directory."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{program}"))
    return str(found[-1]) if found else program


def _free_port() -> int:
    """A port below the ephemeral range, so that no client's socket takes it meanwhile."""
    rng = random.Random()
    for _ in range(50):
        port = rng.randrange(20_000, 30_000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port for a private PostgreSQL server")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        yield server
    finally:
        server.close()


def wait_for_run(state_file: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until ``process`` has begun its run (the run history names it as the holder)."""

    def begun() -> bool:
        assert process.poll() is None, "the sync ended before its run began"
        try:
            with sqlite3.connect(state_file) as db:
                holders = [h for (h,) in db.execute("SELECT holder FROM psync_runs")]
        except sqlite3.OperationalError:  # not created yet
            holders = []
        return any(h and h.endswith(f":{process.pid}") for h in holders)

    wait_until(begun, timeout=timeout, what="the sync's run to begin")


@pytest.fixture
def source(pg_url: str) -> str:
    make_people(pg_url)
    return pg_url


@pytest.fixture
def own_source(own_postgres: OwnPostgres) -> str:
    """The people on a server of this test's own, for the scenarios that stop it."""
    make_people(own_postgres.url)
    return own_postgres.url


def test_api_errors_rate_limits_drops_and_lost_answers(tmp_path: Path, source: str) -> None:
    faults = Faults(
        error_rate=0.20,
        rate_limit_rate=0.10,
        retry_after_s=0.005,
        latency_s=0.002,
        drop_rate=0.02,
        lost_answer_rate=0.05,
        seed=11,
    )
    with SandboxServer(API_KEY, faults=faults) as sandbox:
        config = sync_config(tmp_path, source, sandbox)
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            output = run_to_end(config)
            assert "unresolved" in output  # rows without an email whose answer was lost
            sandbox.faults = Faults()
            settle(config)  # the next run reconciles them
        outcome = assert_sandbox_equals_source(source, sandbox)
    # it watched while the run went on: a checkpoint before the last one was checked (how
    # many its 0.25 s looks caught depends on the machine's speed, not on the sync)
    assert watcher.violations == [] and len(set(watcher.seen)) > 1
    assert outcome.extra_acks == 0  # no row acknowledged twice
    faulted_posts = sum(1 for r in sandbox.requests if r.method == "POST" and r.fault)
    applied = [
        r for r in sandbox.requests if r.method == "POST" and r.fault in (None, "lost_answer")
    ]
    resent = len(applied) - ROWS  # lost answers of rows without an email: adopted, not resent
    assert 0 <= resent <= faulted_posts  # a resend only where a fault lost the answer
    assert outcome.faults["error"] > ROWS // 8 and outcome.faults["lost_answer"] > ROWS // 40
    assert {o for o, _ in run_history(tmp_path / "state.db")} == {"success"}
    report("api-faults", outcome, faulted_posts=faulted_posts)


def test_sigkill_at_20_random_moments_of_one_backfill(tmp_path: Path, source: str) -> None:
    # Each process is killed after 0-250 more requests, not after a random time: 20 kills
    # then cover at most 20 * (250 + 16 in flight) < ROWS rows, so none can find the
    # backfill finished (and its run ended "success") however fast the machine is.
    rng = random.Random(20)
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.001)) as sandbox:
        config = sync_config(tmp_path, source, sandbox)
        kills = 0
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            for _ in range(20):
                process = start(config)
                wait_for_run(tmp_path / "state.db", process)
                wait_for_posts(sandbox, len(sandbox.requests) + rng.randint(0, 250), process)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                finish(process)
            run_to_end(config)
        outcome = assert_sandbox_equals_source(source, sandbox)
    history = run_history(tmp_path / "state.db")
    assert watcher.violations == []
    assert kills == 20
    assert outcome.extra_acks <= kills * WINDOW, "resent more than the unacknowledged tails"
    assert [o for o, _ in history] == ["died"] * kills + ["success"]  # none left running
    report("sigkill", outcome, kills=kills, runs=len(history))


def test_the_source_database_restarts_in_the_middle_of_a_run(
    tmp_path: Path, own_postgres: OwnPostgres, own_source: str
) -> None:
    source = own_source
    # 16 requests in flight at 20 ms: at most 800 rows/s, so the run outlasts the restart
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.02)) as sandbox:
        config = sync_config(tmp_path, source, sandbox)
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            process = start(config)
            wait_for_posts(sandbox, ROWS // 4, process)
            own_postgres.ctl("restart")
            restarted_at = len(sandbox.requests)
            code, output = finish(process)
        assert code == 0, output  # the same run went on after the restart
        outcome = assert_sandbox_equals_source(source, sandbox)
    assert restarted_at < ROWS
    assert watcher.violations == []
    assert outcome.extra_acks == 0
    assert [o for o, _ in run_history(tmp_path / "state.db")] == ["success"]
    report("source-restart", outcome)


def test_a_locked_sqlite_state_store(tmp_path: Path, source: str) -> None:
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.001)) as sandbox:
        config = sync_config(tmp_path, source, sandbox)
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            process = start(config)
            wait_for_posts(sandbox, ROWS // 4, process)
            locker = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")  # no other writer until it ends
            held_at = len(sandbox.requests)
            time.sleep(4)  # the scenario: the store stays locked this long
            stalled_at = len(sandbox.requests)
            locker.execute("ROLLBACK")
            locker.close()
            code, output = finish(process)
        assert code == 0, output
        outcome = assert_sandbox_equals_source(source, sandbox)
    assert watcher.violations == []
    # it waited once its window was full: the window's rows, and the quarter batch that
    # finished and was waiting for the commit the lock held up
    assert stalled_at - held_at <= WINDOW + BATCH // 4
    assert outcome.extra_acks == 0
    report("sqlite-locked", outcome, sent_while_locked=stalled_at - held_at)


def test_a_postgresql_state_store_that_stops_for_a_while(
    tmp_path: Path, own_postgres: OwnPostgres, own_source: str
) -> None:
    source = state_url = own_source  # its own tables beside the source's, on the same server
    # 16 requests in flight at 20 ms: at most 800 rows/s, so the run outlasts the stop
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.02)) as sandbox:
        config = sync_config(tmp_path, source, sandbox, state_url=state_url)
        process = start(config)
        wait_for_posts(sandbox, ROWS // 4, process)
        own_postgres.ctl("stop")
        stopped_at = len(sandbox.requests)
        time.sleep(3)  # the scenario: the store stays down this long
        own_postgres.ctl("start")
        code, output = finish(process)
        if code != 0:  # a longer outage than the store waits for: the next run resumes
            assert "state store" in output or "source database" in output, output
            run_to_end(config)
        outcome = assert_sandbox_equals_source(source, sandbox)
    engine = create_engine(state_url)
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT outcome FROM psync_runs ORDER BY id")).scalars().all()
        checkpoint = conn.execute(text("SELECT key_value FROM psync_checkpoints")).scalar()
    engine.dispose()
    assert stopped_at < ROWS  # the store stopped while the run was sending
    assert runs[-1] == "success"
    assert checkpoint == str(ROWS)  # the last row in (cursor, key) order
    assert outcome.extra_acks <= WINDOW
    report("pg-state-stopped", outcome, runs=runs)


def test_rows_change_while_a_run_is_reading(tmp_path: Path, source: str) -> None:
    rng = random.Random(5)
    changed: dict[int, int] = {}
    stop = threading.Event()

    def mutate() -> None:
        engine = create_engine(source)
        next_id = ROWS + 1
        while not stop.wait(0.02):
            with engine.begin() as conn:
                for _ in range(5):
                    key, what = rng.randint(1, ROWS), rng.random()
                    if what < 0.5:
                        conn.execute(
                            text(
                                "UPDATE people SET first_name = first_name || '+', "
                                "updated_at = now() WHERE id = :k"
                            ),
                            {"k": key},
                        )
                    elif what < 0.8:
                        conn.execute(
                            text(
                                "UPDATE people SET deleted_at = now(), "
                                "updated_at = now() WHERE id = :k"
                            ),
                            {"k": key},
                        )
                    else:
                        conn.execute(
                            text(
                                "INSERT INTO people VALUES (:k, 'new' || :k || "
                                "'@example.com', 'New', 1, now(), NULL)"
                            ),
                            {"k": next_id},
                        )
                        key, next_id = next_id, next_id + 1
                    changed[key] = changed.get(key, 0) + 1
        engine.dispose()

    # 16 requests in flight at 25 ms: at most 640 rows/s, so the run is still reading
    # when the 5 s of changes end
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.025)) as sandbox:
        config = sync_config(tmp_path, source, sandbox)
        writer = threading.Thread(target=mutate)
        process = start(config)
        wait_for_posts(sandbox, 1000, process)
        writer.start()
        time.sleep(5)  # the scenario: 5 s of changes while the run reads
        stop.set()
        writer.join()
        assert process.poll() is None, "the run ended before the changes did"
        code, output = finish(process)
        assert code == 0, output
        run_to_end(config, "once")  # what changed after the first run's upper bound
        outcome = assert_sandbox_equals_source(source, sandbox)
    assert len(changed) > 500
    assert outcome.extra_acks <= sum(changed.values())  # one more send per change at most
    report("changes-while-reading", outcome, changes=sum(changed.values()))


def test_a_late_commit_with_an_older_cursor_is_caught_by_lookback(
    tmp_path: Path, source: str
) -> None:
    late_stamp = T0 + timedelta(minutes=35)  # older than the checkpoint the run will reach
    with SandboxServer(API_KEY) as sandbox:
        config = sync_config(tmp_path, source, sandbox, lookback="10m")
        engine = create_engine(source)
        late = engine.connect()
        transaction = late.begin()  # began before the run; commits after it
        late.execute(
            text("INSERT INTO people VALUES (:k, 'late@example.com', 'Late', 2, :t, NULL)"),
            {"k": ROWS + 1, "t": late_stamp},
        )
        run_to_end(config)
        assert not any(int(u["internal_id"]) == ROWS + 1 for u in sandbox.users())
        transaction.commit()
        late.close()
        engine.dispose()
        sandbox.clear_requests()
        run_to_end(config, "once")
        posts = [r for r in sandbox.requests if r.method == "POST"]
        outcome = assert_sandbox_equals_source(source, sandbox)
    assert [r.body["internal_id"] for r in posts] == [ROWS + 1]  # the window costs no request
    report("late-commit", outcome)


@pytest.mark.parametrize("wiki", [False, True], ids=["live", "wiki"])
def test_internal_id_only_rows_killed_between_send_and_answer(
    tmp_path: Path, source: str, wiki: bool
) -> None:
    engine = create_engine(source)
    with engine.begin() as conn:
        conn.execute(text("UPDATE people SET email = NULL"))
    engine.dispose()
    rng = random.Random(7)
    with SandboxServer(API_KEY, internal_id_merges=wiki, faults=Faults(latency_s=0.004)) as sandbox:
        config = sync_config(tmp_path, source, sandbox)
        kills = 0
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            for _ in range(6):
                process = start(config)
                wait_for_posts(sandbox, len(sandbox.requests) + rng.randint(50, 800), process)
                process.send_signal(signal.SIGKILL)  # requests are in flight: answers lost
                kills += 1
                finish(process)
            run_to_end(config)
        outcome = assert_sandbox_equals_source(source, sandbox)  # one user per row
    assert watcher.violations == []
    assert outcome.extra_acks <= kills * WINDOW
    reads = [r for r in sandbox.requests if r.method == "GET" and "data_last_modified" in r.path]
    assert reads, "no read-back reconciled the lost answers"
    report(
        f"internal-id-only-{'wiki' if wiki else 'live'}",
        outcome,
        kills=kills,
        reconciliation_reads=len(reads),
    )


__all__ = ["datetime"]
