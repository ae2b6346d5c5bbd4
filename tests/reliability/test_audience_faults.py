"""The fault matrix for an audience job: 1,000 members of a query over 3,000 people
(synced first by their users job), kept in a Personyze list under API faults, lost
answers and SIGKILL.

While the sync adds members, a watcher checks that the state store never records a
membership Personyze does not hold (state read first, then the sandbox: members only
grow while members are added). At the end every member is there, and only they.
"""

from __future__ import annotations

import random
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from sync.sandbox import Faults, SandboxServer
from tests.reliability.harness import (
    Polling,
    finish,
    make_people,
    report,
    run_to_end,
    settle,
    start,
    sync_config,
    wait_for_posts,
)
from tests.support import API_KEY, wait_until

AUDIENCE = "VIP people"
VIP_QUERY = "SELECT p.id, p.email FROM people p JOIN vip v ON v.person_id = p.id"


@pytest.fixture
def source(pg_url: str) -> str:
    make_people(pg_url, rows=3000)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE vip (person_id int PRIMARY KEY)"))
        conn.execute(text("INSERT INTO vip SELECT i FROM generate_series(3, 3000, 3) i"))
    engine.dispose()
    return pg_url


def vip(url: str, *statements: str) -> set[int]:
    """Run these statements, then the ids the audience's query holds."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
        found = {int(r[0]) for r in conn.execute(text("SELECT person_id FROM vip"))}
    engine.dispose()
    return found


def with_audience(config: Path, source: str, sync: str = "mirror") -> None:
    doc = yaml.safe_load(config.read_text())
    doc["jobs"].append(
        {
            "name": "vip",
            "object": "audience",
            "audience": AUDIENCE,
            "users_job": "people",
            "sync": sync,
            "source": {"url": source, "query": VIP_QUERY, "key": "id", "detect": "diff"},
            "mapping": {"email": "email"},
        }
    )
    config.write_text(yaml.safe_dump(doc, sort_keys=False))


def prepared(tmp_path: Path, source: str, sandbox: SandboxServer) -> Path:
    """The people synced without faults; then the config gains the audience job."""
    # a lost answer costs timeout_s: 1 s (not the matrix's 2) keeps the suite short
    config = sync_config(tmp_path, source, sandbox, personyze={"timeout_s": 1})
    run_to_end(config, "once")
    with_audience(config, source)
    sandbox.clear_requests()
    return config


def recorded(state: Path) -> set[int]:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT user_id FROM psync_audience_members WHERE job = 'vip'")
            return {int(r[0]) for r in rows}
    except sqlite3.OperationalError:
        return set()  # tables not made yet


def list_of(sandbox: SandboxServer) -> int | None:
    ids = [int(r["id"]) for r in sandbox.user_lists() if r["name"] == AUDIENCE]
    assert len(ids) <= 1, f"the audience was created {len(ids)} times"
    return ids[0] if ids else None


class MemberWatcher(Polling):
    """Checks, every 0.2 s while members are added, that each recorded one is in the list."""

    EVERY_S = 0.2

    def __init__(self, state: Path, sandbox: SandboxServer) -> None:
        self.state, self.sandbox = state, sandbox
        self.looks = 0
        self.violations: list[str] = []

    def _check(self) -> None:
        kept = recorded(self.state)  # first: the list only grows meanwhile
        list_id = list_of(self.sandbox)
        there = set(self.sandbox.members(list_id)) if list_id is not None else set()
        if kept:
            self.looks += 1
        if kept - there:
            self.violations.append(f"{len(kept - there)} recorded, not in Personyze")


def people_ids(sandbox: SandboxServer, ids: set[int]) -> set[int]:
    """The Personyze user_ids of these people."""
    found: dict[int, list[int]] = {}
    for user in sandbox.users():
        found.setdefault(int(user["internal_id"]), []).append(int(user["user_id"]))
    assert all(len(v) == 1 for v in found.values())
    return {found[i][0] for i in ids}


def assert_list_is_the_query(source: str, sandbox: SandboxServer, state: Path) -> None:
    wait_until(lambda: sandbox.late_pending() == 0, what="late writes to land")
    list_id = list_of(sandbox)
    assert list_id is not None
    want = people_ids(sandbox, vip(source))
    there = set(sandbox.members(list_id))
    assert not want - there, f"{len(want - there)} member(s) missing"
    assert not there - want, f"{len(there - want)} member(s) that left are still there"
    assert recorded(state) == there


def test_api_faults_and_lost_answers(tmp_path: Path, source: str) -> None:
    faults = Faults(
        error_rate=0.15,
        rate_limit_rate=0.05,
        retry_after_s=0.005,
        latency_s=0.001,
        drop_rate=0.03,
        lost_answer_rate=0.04,
        late_apply_rate=0.03,
        seed=7,
    )
    state = tmp_path / "state.db"
    with SandboxServer(API_KEY) as sandbox:
        config = prepared(tmp_path, source, sandbox)
        sandbox.faults = faults
        with MemberWatcher(state, sandbox) as watcher:
            runs = settle(config, runs=6)  # a late add is confirmed (or sent again) next run
        assert watcher.violations == [] and watcher.looks > 1
        assert_list_is_the_query(source, sandbox, state)
        first = sum(1 for r in sandbox.requests if r.fault)
        # 100 leave and 60 join, under the same faults
        vip(
            source,
            "DELETE FROM vip WHERE person_id <= 300",
            "INSERT INTO vip SELECT i FROM generate_series(3001 - 90, 3000) i WHERE i % 3 <> 0",
        )
        settle(config, runs=6)
        assert_list_is_the_query(source, sandbox, state)
        kinds = {r.fault for r in sandbox.requests if r.fault}
        assert {"error", "lost_answer", "drop", "late_apply"} <= kinds
        assert sum(1 for u in sandbox.user_lists() if u["name"] == AUDIENCE) == 1
    report("audience-api-faults", {"faulted": first, "runs": runs}, kinds=sorted(kinds))


def test_sigkill_while_members_are_added_and_removed(tmp_path: Path, source: str) -> None:
    rng = random.Random(5)
    state = tmp_path / "state.db"
    with SandboxServer(API_KEY) as sandbox:
        config = prepared(tmp_path, source, sandbox)
        sandbox.faults = Faults(latency_s=0.002)
        kills = 0
        with MemberWatcher(state, sandbox) as watcher:
            for _ in range(6):
                process = start(config, "once")
                wait_for_posts(sandbox, len(sandbox.requests) + rng.randint(20, 250), process)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                finish(process)
            run_to_end(config, "once")
        assert watcher.violations == [] and watcher.looks > 1
        assert kills == 6
        assert_list_is_the_query(source, sandbox, state)
        vip(source, "DELETE FROM vip WHERE person_id <= 270")  # 90 leave (under 10%)
        process = start(config, "once")
        wait_for_posts(sandbox, len(sandbox.requests) + 60, process)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        finish(process)
        run_to_end(config, "once")
        assert_list_is_the_query(source, sandbox, state)
        assert sum(1 for u in sandbox.user_lists() if u["name"] == AUDIENCE) == 1
    report("audience-sigkill", {"kills": kills})
