"""A slow, silent or hostile Personyze, met by the real command: bounded, said, stoppable.

Each test runs ``personyze-sync`` as a process against a real socket: the sandbox with
its faults, or a port nobody listens on. Bounds on how long a command may take are
bounds on a hang (tens of seconds before), not speed assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from sync.sandbox import Faults, SandboxServer
from tests.support import (
    API_KEY,
    config_doc,
    free_port,
    make_customers,
    run_script,
    script,
    wait_until,
    write_config,
)


def config(tmp_path: Path, api_url: str, **personyze: object) -> Path:
    source = f"sqlite:///{tmp_path}/source.db"
    make_customers(source, range(1, 6))
    doc = config_doc(
        source_url=source,
        api_url=api_url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        personyze=personyze,
    )
    return write_config(tmp_path / "sync.yaml", doc)


def test_validate_connect_with_the_api_port_closed_fails_at_once_naming_the_host(
    tmp_path: Path,
) -> None:
    """It printed nothing for 63 s, then a ConnectError without the URL."""
    port = free_port()
    path = config(tmp_path, f"http://127.0.0.1:{port}/rest", max_attempts=8)
    started = time.monotonic()
    done = run_script("validate", "--connect", "-c", str(path))
    took = time.monotonic() - started
    assert done.code != 0
    assert f"could not connect to Personyze at 127.0.0.1:{port}" in done.err
    assert "Connection refused" in done.err
    assert took < 20  # one attempt: no backoff between eight
    assert API_KEY not in done.out + done.err


def test_validate_connect_against_a_trickling_server_ends_at_timeout_s(tmp_path: Path) -> None:
    """One byte every half second, each well within a read timeout: over 10 minutes before."""
    faults = Faults(trickle_rate=1.0, trickle_s=0.5, include_account=True)
    with SandboxServer(API_KEY, faults=faults) as sandbox:
        path = config(tmp_path, sandbox.url, timeout_s=1, max_attempts=3)
        started = time.monotonic()
        done = run_script("validate", "--connect", "-c", str(path))
        took = time.monotonic() - started
    assert done.code != 0
    assert "did not answer within 1 s" in done.err, done.err
    assert took < 20


def test_a_backfill_waiting_out_a_retry_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    """Every write is answered 503 and retried after a long backoff: SIGTERM ends the wait."""
    faults = Faults(error_rate=1.0, writes_only=True)
    with SandboxServer(API_KEY, faults=faults) as sandbox:
        path = config(tmp_path, sandbox.url, backoff_initial_s=60, max_attempts=5)
        env = {**os.environ, "TEST_API_KEY": API_KEY}
        process = subprocess.Popen(
            [script(), "backfill", "-c", str(path), "customers", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

        def first_write_answered() -> bool:
            assert process.poll() is None, "the backfill ended before it sent anything"
            return any(r.method == "POST" for r in sandbox.requests)

        wait_until(first_write_answered, timeout=30, what="the first write's 503")
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, err = process.communicate(timeout=30)
        took = time.monotonic() - started
        posts = sum(1 for r in sandbox.requests if r.method == "POST")
        sandbox.faults = Faults()
        again = run_script("once", "-c", str(path))  # nothing was lost: the next run sends all
        users = sandbox.users()
    assert took < 10, err  # not the 60 s backoff
    assert process.returncode != 0, out
    assert posts == 5  # each row tried once; none retried after the stop
    assert again.code == 0, again.err
    assert sorted(u["email"] for u in users) == [f"user{i}@example.com" for i in range(1, 6)]


def test_each_retry_is_a_line_at_v(tmp_path: Path) -> None:
    faults = Faults(error_rate=0.5, writes_only=True, seed=3)
    with SandboxServer(API_KEY, faults=faults) as sandbox:
        path = config(tmp_path, sandbox.url, backoff_initial_s=0.01, max_attempts=20)
        done = run_script("-v", "once", "-c", str(path))
    assert done.code == 0, done.err
    logged = [json.loads(line) for line in done.err.splitlines() if line.startswith("{")]
    retries = [e for e in logged if e["event"] == "request failed; retrying"]
    assert retries, done.err  # the seeded draw fails some first attempts
    for retry in retries:
        assert retry["level"] == "info" and retry["logger"] == "sync.load"
        assert retry["request"].startswith("sending row ")
        assert retry["error"] in ("Personyze answered 500", "Personyze answered 503")
        assert 1 <= retry["attempt"] < retry["attempts"] == 20 and retry["wait_s"] >= 0
