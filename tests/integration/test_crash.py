"""kill -9 in the middle of a backfill, again and again: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sync.sandbox import Faults, SandboxServer
from sync.wiring import Wiring
from tests.support import (
    API_KEY,
    config_doc,
    load,
    make_customers,
    users_by_internal_id,
    write_config,
)

ROWS = 2000
BATCH = 100
CLI = str(Path(sys.executable).parent / "personyze-sync")


def backfill(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CLI, "backfill", "-c", str(config), "customers"],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_after(process: subprocess.Popen[bytes], sandbox: SandboxServer, posts: int) -> bool:
    """SIGKILL once the sandbox has seen ``posts`` more POSTs; False if it ended first."""
    target = len(sandbox.requests) + posts
    deadline = time.monotonic() + 60
    while len(sandbox.requests) < target and time.monotonic() < deadline:
        if process.poll() is not None:
            process.communicate()
            return False
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return True


@pytest.mark.parametrize(
    ("mapping", "wiki"),
    [
        ({"id": "internal_id", "email": "email", "first_name": "first_name"}, False),
        ({"id": "internal_id", "first_name": "first_name"}, False),  # internal_id only: live API
        ({"id": "internal_id", "first_name": "first_name"}, True),  # ... and as the wiki says
    ],
    ids=["with-email", "internal-id-only-live", "internal-id-only-wiki"],
)
def test_sigkill_during_backfill_loses_and_doubles_nothing(
    tmp_path: Path, pg_url: str, mapping: dict[str, str], wiki: bool
) -> None:
    make_customers(pg_url, range(1, ROWS + 1))
    with SandboxServer(API_KEY, internal_id_merges=wiki, faults=Faults(latency_s=0.002)) as sandbox:
        doc = config_doc(
            source_url=pg_url,
            api_url=sandbox.url,
            state_url=f"sqlite:///{tmp_path}/state.db",
            source={"batch_size": BATCH},
            job={"mapping": mapping},
        )
        config = write_config(tmp_path / "sync.yaml", doc)
        kills = 0
        for posts in (150, 420, 260, 333, 500):
            if kill_after(backfill(config), sandbox, posts):
                kills += 1
        final = backfill(config)
        _, err = final.communicate(timeout=120)
        assert final.returncode == 0, err.decode()

        users = users_by_internal_id(sandbox.users())
        assert sorted(users, key=int) == [str(i) for i in range(1, ROWS + 1)], "rows lost"
        doubled = {k: len(v) for k, v in users.items() if len(v) > 1}
        assert doubled == {}, f"rows that became several Personyze users: {doubled}"
        for key, [user] in users.items():
            assert user["first_name"] == f"First{key}"
        posts_sent = sum(1 for r in sandbox.requests if r.method == "POST")
        assert kills >= 3
        assert posts_sent <= ROWS + kills * BATCH, "more resent than the unacknowledged tail"

        with Wiring(load(config)) as app:
            part = app.store.part("customers")
            checkpoint = part.checkpoint()
            assert part.pending() == []
            assert part.row_count() == ROWS
            outcomes = [r.outcome for r in part.runs(limit=10)]
    assert checkpoint is not None and checkpoint.key == ROWS  # the last row in (cursor, key) order
    assert outcomes[0] == "success" and outcomes.count("died") == kills
