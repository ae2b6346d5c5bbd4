"""Whole runs through the real pieces: a source database, the state store, the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, text

from sync import admin
from sync.databases import source_engine
from sync.errors import AuthError, RetriableError
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import Faults, SandboxServer
from sync.wiring import Wiring
from tests.support import (
    BASE_TIME,
    change_customers,
    config_doc,
    customer,
    customers,
    execute,
    load,
    make_customers,
    users_by_internal_id,
    write_config,
)


def make_app(
    tmp_path: Path,
    source_url: str,
    sandbox: SandboxServer,
    state_url: str | None = None,
    **parts: Any,
) -> Wiring:
    doc = config_doc(
        source_url=source_url,
        api_url=sandbox.url,
        state_url=state_url or f"sqlite:///{tmp_path}/state.db",
        **parts,
    )
    return Wiring(load(write_config(tmp_path / "sync.yaml", doc)))


def posts(sandbox: SandboxServer) -> list[Any]:
    return [r for r in sandbox.requests if r.method == "POST"]


def assert_one_user_per_row(sandbox: SandboxServer, ids: range | list[int]) -> None:
    users = users_by_internal_id(sandbox.users())
    assert sorted(users, key=int) == [str(i) for i in ids]
    assert all(len(found) == 1 for found in users.values())


def test_backfill_then_incremental_runs(
    tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    make_customers(source_url, range(1, 121))
    with make_app(tmp_path, source_url, sandbox) as app:
        job = app.config.jobs[0]
        first = run_job(app, job, RunOptions(kind="backfill"))
        assert (first.read, first.sent, first.unchanged) == (120, 120, 0)
        assert_one_user_per_row(sandbox, range(1, 121))
        user = users_by_internal_id(sandbox.users())["7"][0]
        assert user["email"] == "user7@example.com" and user["last_name"] == "Last7"
        assert user["custom_f_1"] == 10.5 and user["custom_i_1"] == 0
        assert "password_hash" not in user

        later = BASE_TIME + timedelta(days=1)
        change_customers(
            source_url, customers.c.id.in_([5, 6, 7]), first_name="Changed", updated_at=later
        )
        make_customers(source_url, [121, 122], updated_at=later)
        sandbox.clear_requests()
        second = run_job(app, job, RunOptions())
        assert (second.read, second.sent) == (6, 5)  # and row 120, at the checkpoint
        bodies = {r.body["internal_id"]: r.body for r in posts(sandbox)}
        assert set(bodies) == {5, 6, 7, 121, 122}
        assert all("user_id" in bodies[i] for i in (5, 6, 7))  # updates carry the user_id
        assert all("user_id" not in bodies[i] for i in (121, 122))
        assert_one_user_per_row(sandbox, range(1, 123))

        sandbox.clear_requests()
        third = run_job(app, job, RunOptions())
        # read again: the five rows at the checkpoint's cursor value; sent: none
        assert (third.read, third.sent) == (5, 0) and sandbox.requests == []
        runs = app.store.part("customers").runs()
        assert [(r.outcome, r.rows_sent) for r in runs] == [
            ("success", 0),
            ("success", 5),
            ("success", 120),
        ]


def test_lookback_catches_a_row_committed_late_with_an_older_cursor(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, 21))
    (tmp_path / "b").mkdir()
    with (
        make_app(tmp_path, pg_url, sandbox, source={"lookback": "1h"}) as app,
        make_app(tmp_path / "b", pg_url, sandbox) as no_lookback,
    ):
        run_job(app, app.config.jobs[0], RunOptions())
        run_job(no_lookback, no_lookback.config.jobs[0], RunOptions())
        # committed now, but stamped before the checkpoint (a long transaction)
        make_customers(pg_url, [21], updated_at=BASE_TIME + timedelta(seconds=1))
        sandbox.clear_requests()
        caught = run_job(app, app.config.jobs[0], RunOptions())
        missed = run_job(no_lookback, no_lookback.config.jobs[0], RunOptions())
    assert caught.sent == 1 and caught.unchanged >= 1
    assert missed.sent == 0
    assert [r.body["internal_id"] for r in posts(sandbox)] == [21]


def test_two_rows_sharing_an_email_are_one_user_and_a_reported_collision(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 6))
    change_customers(sqlite_url, customers.c.id == 4, email="USER2@example.com")
    with make_app(tmp_path, sqlite_url, sandbox) as app:
        stats = run_job(app, app.config.jobs[0], RunOptions())
        [status] = admin.status(app)
    assert stats.sent == 5 and stats.collisions == 1
    assert len(sandbox.users()) == 4
    assert [(c.key, c.other_key) for c in status.collisions] == [("4", "2")]


def test_a_run_that_gives_up_keeps_its_checkpoint_before_the_row_still_owed(
    tmp_path: Path, pg_url: str
) -> None:
    make_customers(pg_url, range(1, 201))
    with (
        SandboxServer("test-key-3f9a1c", faults=Faults(error_rate=0.05, seed=3)) as sandbox,
        make_app(tmp_path, pg_url, sandbox, personyze={"max_attempts": 1, "concurrency": 1}) as app,
    ):
        job = app.config.jobs[0]
        with pytest.raises(RetriableError, match="could not be delivered"):
            run_job(app, job, RunOptions())
        checkpoint = app.store.part("customers").checkpoint()
        assert checkpoint is not None
        delivered = {int(k) for k in users_by_internal_id(sandbox.users())}
        order = [
            r["id"]
            for r in sorted(
                (customer(i) for i in range(1, 201)), key=lambda r: (r["updated_at"], r["id"])
            )
        ]
        passed = order[: order.index(checkpoint.key) + 1]
        assert set(passed) <= delivered, "the checkpoint moved past a row not delivered"
        assert len(delivered) < 200
        assert app.store.part("customers").runs()[0].outcome == "failed"

        sandbox.faults = Faults()
        sandbox.clear_requests()
        run_job(app, job, RunOptions())
        resent = [r.body["internal_id"] for r in posts(sandbox)]
    assert_one_user_per_row(sandbox, range(1, 201))
    assert len(resent) == 200 - len(delivered)  # acknowledged rows are not sent again


def test_a_refused_key_stops_the_job_at_once(tmp_path: Path, sqlite_url: str) -> None:
    make_customers(sqlite_url, range(1, 101))
    with SandboxServer("another-key") as sandbox, make_app(tmp_path, sqlite_url, sandbox) as app:
        with pytest.raises(AuthError, match="refused the API key"):
            run_job(app, app.config.jobs[0], RunOptions())
        assert app.store.part("customers").checkpoint() is None
        assert len(sandbox.requests) <= app.config.personyze.concurrency
        assert app.store.part("customers").runs()[0].outcome == "failed"


def test_rows_personyze_rejects_are_kept_and_retried_once_fixed(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    table = Table(
        "accounts",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("email", String(100)),
        Column("pz", Integer),
        Column("version", Integer),
    )
    engine = source_engine(sqlite_url)
    table.metadata.create_all(engine)
    engine.dispose()
    execute(
        sqlite_url,
        table.insert().values(
            [
                {
                    "id": i,
                    "email": f"a{i}@example.com",
                    "pz": 999_999 if i == 3 else None,
                    "version": 1,
                }
                for i in range(1, 6)
            ]
        ),
    )
    parts = {
        "source": {"table": "accounts", "cursor": "version"},
        "job": {"mapping": {"id": "internal_id", "email": "email", "pz": "user_id"}},
    }
    with make_app(tmp_path, sqlite_url, sandbox, **parts) as app:
        job = app.config.jobs[0]
        first = run_job(app, job, RunOptions())
        [rejection] = app.store.part("customers").rejections()
        assert (first.sent, first.rejected) == (4, 1)
        assert rejection.key == "3" and rejection.status == 400
        assert "not found" in rejection.reason.lower()
        checkpoint = app.store.part("customers").checkpoint()
        assert checkpoint is not None and checkpoint.key == 5

        execute(sqlite_url, text("UPDATE accounts SET pz = NULL, version = 2 WHERE id = 3"))
        second = run_job(app, job, RunOptions())
        assert second.sent == 1 and app.store.part("customers").rejections() == []
    assert len(sandbox.users()) == 5


def test_a_time_zone_aware_cursor_resumes_exactly(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    execute(
        pg_url,
        text("CREATE TABLE members (id int PRIMARY KEY, email text, changed timestamptz NOT NULL)"),
        text(
            "INSERT INTO members SELECT i, 'm' || i || '@example.com', "
            "timestamptz '2024-03-31 01:30:00+01' + (i % 4) * interval '1 hour' "
            "FROM generate_series(1, 30) i"
        ),
    )
    parts = {
        "source": {"table": "members", "cursor": "changed", "batch_size": 4},
        "job": {"mapping": {"id": "internal_id", "email": "email", "changed": "custom_d_1"}},
    }
    with make_app(tmp_path, pg_url, sandbox, **parts) as app:
        job = app.config.jobs[0]
        assert run_job(app, job, RunOptions()).sent == 30
        checkpoint = app.store.part("customers").checkpoint()
        assert checkpoint is not None and checkpoint.cursor.tzinfo is not None
        execute(
            pg_url,
            text("UPDATE members SET email = 'x' || email, changed = now() WHERE id IN (2, 9)"),
        )
        sandbox.clear_requests()
        assert run_job(app, job, RunOptions()).sent == 2
    assert sorted(r.body["internal_id"] for r in posts(sandbox)) == [2, 9]
    user = users_by_internal_id(sandbox.users())["1"][0]
    assert user["custom_d_1"] == "2024-03-31 01:30:00"  # 02:30+01 in UTC


def test_a_run_with_nothing_changed_costs_one_query_and_no_request(
    tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    make_customers(source_url, range(1, 121))
    with make_app(tmp_path, source_url, sandbox) as app:
        job = app.config.jobs[0]
        run_job(app, job, RunOptions(kind="backfill"))
        run_job(app, job, RunOptions())  # the reader reflects the table once per app
        statements: list[str] = []
        event.listen(
            app.engine(job), "before_cursor_execute", lambda *args: statements.append(args[2])
        )
        sandbox.clear_requests()
        stats = run_job(app, job, RunOptions())
    assert (stats.read, stats.sent) == (1, 0)  # the row at the checkpoint's cursor value
    assert sandbox.requests == []
    assert len(statements) == 1, statements
    assert "ORDER BY" in statements[0] and "LIMIT" in statements[0].upper()


def test_requests_in_flight_never_exceed_the_concurrency(tmp_path: Path, sqlite_url: str) -> None:
    make_customers(sqlite_url, range(1, 201))
    faults = Faults(latency_s=0.01)
    with (
        SandboxServer("test-key-3f9a1c", faults=faults) as sandbox,
        make_app(tmp_path, sqlite_url, sandbox, personyze={"concurrency": 5}) as app,
    ):
        run_job(app, app.config.jobs[0], RunOptions())
    spans = sorted((r.start, r.end) for r in sandbox.requests)
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most == 5  # all of it used, never more


def test_the_rate_ceiling_holds_over_many_requests(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 151))
    with make_app(
        tmp_path, sqlite_url, sandbox, personyze={"requests_per_second": 100, "concurrency": 8}
    ) as app:
        run_job(app, app.config.jobs[0], RunOptions())
    starts = sorted(r.start for r in sandbox.requests if r.method == "POST")
    assert len(starts) >= 150  # (a retried request only adds to the time)
    # the bucket starts with one token: then no faster than 100 a second
    assert starts[-1] - starts[0] >= (150 - 1) / 100 * 0.9


def test_progress_counts_rows_done_not_rows_read(tmp_path: Path, sqlite_url: str) -> None:
    """Reading runs batches ahead of sending: the bar must follow what Personyze took.

    Each tick is checked against the users the sandbox holds at that moment: a row
    counted done before Personyze has it would be a bar of rows read.
    """
    make_customers(sqlite_url, range(1, 201))
    faults = Faults(latency_s=0.05, writes_only=True)
    with SandboxServer("test-key-3f9a1c", faults=faults) as api:
        ticks: list[tuple[int, int]] = []  # (rows done so far, users Personyze holds)
        total: list[int] = []

        def progress(rows: int) -> Callable[[int], None]:
            total.append(rows)

            def tick(done: int) -> None:
                ticks.append((sum(d for d, _ in ticks[-1:]) + done, len(api.users())))

            return tick

        with make_app(tmp_path, sqlite_url, api) as app:
            stats = run_job(app, app.config.jobs[0], RunOptions(kind="backfill"), progress)
    assert total == [200] and stats.sent == 200
    assert ticks[-1][0] == 200
    assert all(done <= held for done, held in ticks), ticks
