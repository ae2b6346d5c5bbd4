"""What ``status`` and ``/metrics`` show of a sharded job (issue 19, item 4): each shard's
holder, checkpoint, rows done and rate, while three real processes run it and after;
the daemon's series labelled per shard. PostgreSQL state store, the sandbox over HTTP.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sync.sandbox import Faults, SandboxServer
from tests.support import (
    API_KEY,
    Daemon,
    Outcome,
    config_doc,
    make_customers,
    psync_runs,
    run_script,
    script,
    three_shard_config,
    wait_until,
    with_password,
    write_config,
)

SHARDS = [f"customers#{i}/3" for i in range(3)]
ROWS = 600  # 200 a shard


def three_shards(tmp_path: Path, pg_url: str, sandbox: SandboxServer) -> Path:
    """``customers`` 1..ROWS in three shards, source and state on PostgreSQL."""
    return three_shard_config(tmp_path, pg_url, pg_url, sandbox, ROWS)


def start_backfill(config: Path) -> subprocess.Popen[str]:
    """``backfill --processes 3``: three real processes, one shard each."""
    return subprocess.Popen(
        [script(), "backfill", "-c", str(config), "customers", "--processes", "3"],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # the script's status, as rich reads it at start


def status(config: Path) -> Outcome:
    """``status`` as the installed script prints it, piped, at 80 columns."""
    return run_script("status", "-c", str(config))


def status_docs(cli: Callable[..., Outcome], config: Path) -> dict[str, dict[str, Any]]:
    """``status --json``, in-process (quicker than the script, and no width to mind)."""
    shown = cli("status", "-c", str(config), "--json")
    assert shown.code == 0, shown.text
    return {doc["job"]: doc for doc in shown.json()}


def blocks(text: str) -> dict[str, str]:
    """Each part's lines of ``status``, by its name, the lines joined as one."""
    found = re.split(r"^(customers#\d/3) ", text, flags=re.MULTILINE)[1:]
    return {
        name: " ".join(block.split()) for name, block in zip(found[::2], found[1::2], strict=True)
    }


def assert_fits(shown: Outcome, width: int) -> None:
    assert shown.code == 0, shown.text
    too_long = [line for line in shown.out.splitlines() if len(line) > width]
    assert all(len(line.split()) == 1 for line in too_long), shown.out


def test_status_shows_each_shard_its_holder_checkpoint_rows_done_and_rate(
    cli: Callable[..., Outcome], tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    # 200 rows a shard at 4 in flight, 0.3 s each: 15 s, time to look at each shard running
    # however slow a loaded machine makes each look; once seen, the rest goes at full speed
    sandbox.faults = Faults(latency_s=0.3)
    config = three_shards(tmp_path, pg_url, sandbox)
    parent = start_backfill(config)
    seen: dict[str, dict[str, Any]] = {}  # each shard as status showed it running
    in_text: set[str] = set()  # each shard the text showed running

    def every_shard_seen_running() -> bool:
        assert parent.poll() is None, parent.communicate()
        for name, doc in status_docs(cli, config).items():
            if doc["running"] and doc["rows_done"] and name not in seen:
                assert doc["held_by"] == doc["runs"][0]["holder"]  # host:pid, of its run
                assert 0 < doc["rows_done"] < ROWS // 3  # as of its last commit
                assert doc["rows_per_second"] > 0
                assert doc["held_since"].endswith("Z")
                seen[name] = doc
        text = status(config)  # and in text, at 80 columns
        assert_fits(text, 80)
        for name, block in blocks(text.out).items():
            if "running now in " in block and " rows done (" in block:
                assert re.search(r"this run \(backfill\): \d+ rows done \(", block), block
                assert re.search(r"so far, [\d.]+ rows/s", block), block
                in_text.add(name)
        return len(seen) == len(in_text) == 3

    wait_until(every_shard_seen_running, timeout=60, what="each shard running")
    sandbox.faults = Faults()
    pids = {int(doc["held_by"].rsplit(":", 1)[1]) for doc in seen.values()}
    assert len(pids) == 3 and parent.pid not in pids  # three processes, one shard each
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 0, out + err

    docs = status_docs(cli, config)
    assert list(docs) == SHARDS
    for i, name in enumerate(SHARDS):
        doc = docs[name]
        assert (doc["of_job"], doc["shard"]) == ("customers", {"index": i, "of": 3})
        assert (doc["running"], doc["held_by"], doc["held_since"]) == (False, None, None)
        (run, *_) = doc["runs"]
        assert doc["rows_done"] == run["rows_sent"] == ROWS // 3  # every id % 3 == i
        assert doc["checkpoint"]["key"] is not None
        (kept,) = [r for r in psync_runs(pg_url) if r["job"] == name]  # its one run
        took = kept["ended_at"] - kept["started_at"]  # its rate: over its whole time
        assert doc["rows_per_second"] == round(ROWS / 3 / took, 1)
    shown = status(config)
    assert_fits(shown, 80)
    texts = blocks(shown.out)
    for i, name in enumerate(SHARDS):
        block = texts[name]
        assert block.startswith(f"(users, shard {i} of 3) checkpoint: "), block
        done = "last run (backfill, success): 200 rows done (200 sent, 0 unchanged, 0 rejected)"
        assert done in block and " rows/s" in block, block


def test_a_shard_whose_process_died_says_so_without_a_rate(
    cli: Callable[..., Outcome], tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    sandbox.faults = Faults(latency_s=0.04)
    config = three_shards(tmp_path, pg_url, sandbox)
    parent = start_backfill(config)

    def a_shard_with_rows() -> tuple[str, str] | None:
        """A shard running, with rows committed: its name and its holder (host:pid)."""
        return next(
            (
                (name, doc["held_by"])
                for name, doc in status_docs(cli, config).items()
                if doc["running"] and doc["rows_done"]
            ),
            None,
        )

    victim_part, holder = wait_until(a_shard_with_rows, timeout=60, what="a first commit")
    victim = int(holder.rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)
    parent.send_signal(signal.SIGTERM)  # the other shards stop: not this test's business
    parent.communicate(timeout=60)

    def released() -> dict[str, Any] | None:  # PostgreSQL frees a dead holder's lock
        doc = status_docs(cli, config)[victim_part]
        return doc if doc["held_by"] is None else None

    doc = wait_until(released, what="the killed process's lease freed")
    assert doc["running"] is False and doc["rows_per_second"] is None
    assert 0 < doc["rows_done"] < ROWS // 3
    shown = status(config)
    assert_fits(shown, 80)
    block = blocks(shown.out)[victim_part]
    assert "last run (backfill, its process died): " in block, shown.out


def test_the_daemon_labels_rows_and_lag_per_shard(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    make_customers(pg_url, range(1, 31))
    doc = config_doc(
        source_url=with_password(pg_url),
        api_url=sandbox.url,
        state_url=with_password(pg_url),
        job={"shards": 3, "schedule": {"every": "1s"}},
    )
    daemon = Daemon(write_config(tmp_path / "sync.yaml", doc), tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(lambda: len(sandbox.users()) == 30, what="the first run")
    sent = {"job": "customers", "object": "users", "outcome": "sent"}
    wait_until(
        lambda: all(
            daemon.metric("personyze_sync_rows_total", **sent, shard=f"{i}/3") == 10
            for i in range(3)
        ),
        timeout=5,
        what="each shard's sent counter",
    )
    text = daemon.get("/metrics").text
    assert 'job="customers#' not in text  # the job is the job; the shard is its own label
    assert 'personyze_sync_rows_total{job="customers",object="users",outcome="sent"}' not in text
    for i in range(3):
        assert daemon.metric("personyze_sync_lag_seconds", job="customers", shard=f"{i}/3") > 0
    # a run is the daemon's run of the whole job: no shard
    assert daemon.metric("personyze_sync_runs_total", job="customers", object="users",
                         outcome="success") >= 1  # fmt: skip
