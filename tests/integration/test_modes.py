"""Change detection without a cursor, deletes with a safety stop, and the sync modes.

A table with no timestamp column at all, on every source database, synced by
``detect: diff`` with ``sync: mirror``: after every run (updates, inserts, hard
deletes in between) the sandbox holds exactly what the source maps to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, insert, text, update

from sync.model import RunOptions
from sync.run import job_run, run_job
from sync.sandbox import SandboxServer
from sync.wiring import Wiring
from tests.support import (
    Outcome,
    change_customers,
    config_doc,
    customers,
    execute,
    load,
    make_customers,
    users_by_internal_id,
    write_config,
    writer,
)

contacts = Table(
    "contacts",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(200)),
    Column("name", String(100)),
    Column("points", Integer),
)
CONTACT_MAPPING = {
    "id": "internal_id",
    "email": "email",
    "name": "first_name",
    "points": "custom_i_1",
}


def contact(i: int, **overrides: Any) -> dict[str, Any]:
    return {"id": i, "email": f"c{i}@example.com", "name": f"Name{i}", "points": i, **overrides}


def make_contacts(url: str, ids: range | list[int]) -> None:
    execute(url, insert(contacts).values([contact(i) for i in ids]))


def diff_config(
    tmp_path: Path, url: str, sandbox: SandboxServer, batch_size: int = 50, **job: Any
) -> Path:
    engine = writer(url)
    contacts.metadata.create_all(engine)
    engine.dispose()
    doc = config_doc(
        source_url=url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"mapping": dict(CONTACT_MAPPING), **job},
    )
    source = doc["jobs"][0]["source"]
    source.update(table="contacts", detect="diff", batch_size=batch_size)
    del source["cursor"]
    return write_config(tmp_path / "sync.yaml", doc)


def source_rows(url: str) -> list[dict[str, Any]]:
    engine = writer(url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(contacts.select())]
    engine.dispose()
    return rows


def assert_mirrors(sandbox: SandboxServer, url: str) -> None:
    """Exactly one user per source row, with the values the source maps to."""
    users = users_by_internal_id(sandbox.users())
    rows = {str(r["id"]): r for r in source_rows(url)}
    assert sorted(users) == sorted(rows), "users and source rows differ"
    for key, row in rows.items():
        (user,) = users[key]
        assert user["email"] == row["email"]
        assert user["first_name"] == row["name"]
        assert int(user["custom_i_1"]) == row["points"]


@pytest.fixture
def run(cli: Callable[..., Outcome]) -> Callable[..., Outcome]:
    """``personyze-sync ARGS -c CONFIG`` in-process."""
    return lambda config, *args: cli(*args, "-c", str(config))


def writes(sandbox: SandboxServer) -> list[str]:
    return [r.method for r in sandbox.requests if r.method in ("POST", "PUT", "DELETE")]


def test_diff_mirror_follows_updates_inserts_and_hard_deletes(
    run: Callable[..., Outcome], tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    config = diff_config(tmp_path, source_url, sandbox, sync="mirror", max_deletes_per_run="50%")
    make_contacts(source_url, range(1, 121))
    assert run(config, "once").code == 0
    assert_mirrors(sandbox, source_url)
    assert writes(sandbox) == ["POST"] * 120

    sandbox.clear_requests()
    assert run(config, "once").code == 0  # nothing changed: no request that writes
    assert writes(sandbox) == []

    execute(
        source_url,
        update(contacts).where(contacts.c.id <= 5).values(points=contacts.c.id + 1000),
        update(contacts).where(contacts.c.id == 7).values(email="renamed7@example.com"),
        delete(contacts).where(contacts.c.id.in_([10, 11, 12])),
        insert(contacts).values([contact(i) for i in range(200, 204)]),
    )
    sandbox.clear_requests()
    assert run(config, "once").code == 0
    assert_mirrors(sandbox, source_url)
    assert sorted(writes(sandbox)) == ["DELETE"] * 3 + ["POST"] * 10

    sandbox.clear_requests()
    assert run(config, "once").code == 0
    assert writes(sandbox) == []
    assert_mirrors(sandbox, source_url)


def test_diff_upsert_counts_vanished_rows_but_deletes_nothing(
    run: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    config = diff_config(tmp_path, sqlite_url, sandbox)
    make_contacts(sqlite_url, range(1, 11))
    with Wiring(load(config)) as app:
        run_job(app, app.config.jobs[0], RunOptions())
        execute(sqlite_url, delete(contacts).where(contacts.c.id > 8))
        stats = run_job(app, app.config.jobs[0], RunOptions())
    assert (stats.vanished, stats.deleted, stats.sent) == (2, 0, 0)
    assert len(sandbox.users()) == 10
    assert "DELETE" not in writes(sandbox)


def test_diff_run_resumes_after_a_failure_mid_pass(
    run: Callable[..., Outcome], tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    """A diff pass that stops part way resumes where it stopped, then starts over."""
    config = diff_config(tmp_path, pg_url, sandbox)
    make_contacts(pg_url, range(1, 201))
    with Wiring(load(config)) as app:
        job = app.config.jobs[0]
        with job_run(app, job) as first:
            first.stop.set()  # stops between batches: the checkpoint is saved
            with pytest.raises(Exception, match="stopped"):
                first.run(RunOptions())
        app.stopping.clear()
        stats = run_job(app, job, RunOptions())
        assert app.store.part(job.name).checkpoint() is None  # the pass ended: the next starts over
    assert stats.sent == 200
    assert_mirrors(sandbox, pg_url)


def test_too_many_deletes_deletes_nothing_and_exits_1(
    run: Callable[..., Outcome], tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    config = diff_config(tmp_path, source_url, sandbox, sync="mirror", max_deletes_per_run=5)
    make_contacts(source_url, range(1, 41))
    assert run(config, "once").code == 0
    execute(
        source_url,
        delete(contacts).where(contacts.c.id > 30),
        update(contacts).where(contacts.c.id == 1).values(points=99),
    )
    sandbox.clear_requests()
    failed = run(config, "once")
    assert failed.code == 1
    err = failed.flat
    assert "would delete" in err and "more than max_deletes_per_run allows (5" in err
    assert "nothing was deleted" in err
    assert writes(sandbox) == []  # nothing deleted, nothing sent
    assert len(sandbox.users()) == 40

    dry = run(config, "once", "--dry-run")
    assert dry.code == 3  # lists what would be deleted; a real run would stop
    out = dry.text
    assert out.count("vanished from the source)") == 10
    assert "would delete user" in out and "a real run would stop" in out
    assert writes(sandbox) == []


def test_a_share_limit_allows_that_share(
    run: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    config = diff_config(tmp_path, sqlite_url, sandbox, sync="mirror", max_deletes_per_run="10%")
    make_contacts(sqlite_url, range(1, 101))
    assert run(config, "once").code == 0
    execute(sqlite_url, delete(contacts).where(contacts.c.id > 90))
    assert run(config, "once").code == 0  # exactly 10 of 100: allowed
    assert len(sandbox.users()) == 90
    execute(sqlite_url, delete(contacts).where(contacts.c.id > 80))
    assert run(config, "once").code == 1  # 10 of 90 is more than 10%
    assert len(sandbox.users()) == 90


def test_delete_when_deletes_soft_deleted_rows(
    run: Callable[..., Outcome], tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    """A cursor job: rows the condition marks are deleted in Personyze, once."""
    make_customers(source_url, range(1, 31))
    doc = config_doc(
        source_url=source_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"delete_when": "password_hash = 'gone'", "max_deletes_per_run": "100%"},
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    assert run(config, "once").code == 0
    assert len(sandbox.users()) == 30
    from datetime import datetime

    later = datetime(2030, 1, 1)
    change_customers(
        source_url, customers.c.id.in_([3, 4, 5]), password_hash="gone", updated_at=later
    )
    sandbox.clear_requests()
    assert run(config, "once").code == 0
    assert writes(sandbox) == ["DELETE"] * 3
    assert sorted(users_by_internal_id(sandbox.users()), key=int) == [
        str(i) for i in range(1, 31) if i not in (3, 4, 5)
    ]
    sandbox.clear_requests()
    change_customers(source_url, customers.c.id == 4, first_name="Still gone", updated_at=later)
    assert run(config, "once").code == 0
    assert writes(sandbox) == []  # already deleted: nothing more to do


def test_delete_when_that_is_not_sql_fails_clearly(
    run: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 3))
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"delete_when": "no_such_column IS NOT NULL"},
    )
    failed = run(write_config(tmp_path / "sync.yaml", doc), "once")
    assert failed.code == 1
    err = failed.flat
    assert "delete_when 'no_such_column IS NOT NULL'" in err and "no_such_column" in err
    assert writes(sandbox) == []


def test_update_mode_never_creates_users(
    run: Callable[..., Outcome], tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    """Users Personyze has are updated (found by email the first time); others are skipped."""
    make_customers(source_url, range(1, 11))
    from sync.load.client import PersonyzeClient

    settings = load(
        write_config(
            tmp_path / "seed.yaml",
            config_doc(source_url=source_url, api_url=sandbox.url, state_url="sqlite://"),
        )
    ).personyze
    with PersonyzeClient(settings) as client:  # Personyze already has users 1-4 only
        existing = {i: client.upsert({"email": f"user{i}@example.com"}) for i in range(1, 5)}
    doc = config_doc(
        source_url=source_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"sync": "update"},
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    sandbox.clear_requests()
    with Wiring(load(config)) as app:
        stats = run_job(app, app.config.jobs[0], RunOptions())
        assert (stats.sent, stats.missing) == (4, 6)
        assert "POST" not in writes(sandbox)
        users = {u["email"]: u for u in sandbox.users()}
        assert len(users) == 4
        for i, user_id in existing.items():
            user = users[f"user{i}@example.com"]
            assert (user["user_id"], user["first_name"]) == (user_id, f"First{i}")

        change_customers(source_url, customers.c.id.in_([2, 7]), first_name="Changed")
        from datetime import datetime

        change_customers(source_url, customers.c.id.in_([2, 7]), updated_at=datetime(2030, 1, 1))
        sandbox.clear_requests()
        stats = run_job(app, app.config.jobs[0], RunOptions())
    # missing: row 7, and row 10 read again at the checkpoint's own cursor value
    assert (stats.sent, stats.missing) == (1, 2)
    assert writes(sandbox) == ["PUT"]  # by user_id, learned on the first run
    assert {u["email"]: u["first_name"] for u in sandbox.users()}["user2@example.com"] == "Changed"
    assert len(sandbox.users()) == 4


def test_full_backfill_sends_only_what_changed(
    run: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    """backfill --full re-reads every row; fingerprints spare the unchanged ones a request."""
    make_customers(sqlite_url, range(1, 51))
    doc = config_doc(
        source_url=sqlite_url, api_url=sandbox.url, state_url=f"sqlite:///{tmp_path}/state.db"
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    assert run(config, "backfill", "customers").code == 0
    change_customers(sqlite_url, customers.c.id == 9, first_name="Nine")  # cursor untouched
    sandbox.clear_requests()
    assert run(config, "backfill", "customers", "--full").code == 0
    assert writes(sandbox) == ["POST"]


def test_config_refuses_cursor_and_diff_together(tmp_path: Path) -> None:
    from sync.errors import ConfigError

    doc = config_doc(
        source_url="sqlite://", api_url="http://127.0.0.1:1/rest", state_url="sqlite://"
    )
    doc["jobs"][0]["source"]["detect"] = "diff"
    with pytest.raises(ConfigError, match="give either 'cursor' or 'detect: diff'"):
        load(write_config(tmp_path / "sync.yaml", doc))


def test_an_unchanged_100k_row_table_costs_no_request(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    """The second diff run over 100,000 unchanged rows reads them all and sends nothing.

    The first run's outcome (a user_id and fingerprint per row) is written straight into
    the state store, from the job's own mapper, instead of being sent: sending 100,000
    rows would cost the suite minutes (bench/ measures that run). A row inserted
    afterwards shows the run still sends what is new.
    """
    from sync.mapping import Mapper
    from sync.state.records import Ack, BatchOutcome

    config = diff_config(tmp_path, pg_url, sandbox, batch_size=1000)
    execute(
        pg_url,
        text(
            "INSERT INTO contacts SELECT i, 'c' || i || '@example.com', 'Name' || i, i "
            "FROM generate_series(1, 100000) AS i"
        ),
    )
    with Wiring(load(config)) as app:
        job = app.config.jobs[0]
        mapper, part = Mapper(job), app.store.part(job.name)
        for batch in app.reader(job).batches_after(None):
            acks = [Ack(str(r["id"]), int(r["id"]), mapper.map(r).fingerprint) for r in batch]
            part.commit(BatchOutcome(acks=acks))
        assert part.row_count() == 100_000

        stats = run_job(app, job, RunOptions())
        assert (stats.read, stats.unchanged, stats.sent) == (100_000, 100_000, 0)
        assert sandbox.requests == []

        execute(pg_url, insert(contacts).values(contact(100_001)))
        stats = run_job(app, job, RunOptions())
    assert (stats.read, stats.sent) == (100_001, 1)
    assert [r.method for r in sandbox.requests] == ["POST"]
    (user,) = sandbox.users()
    assert (user["internal_id"], user["email"]) == (100_001, "c100001@example.com")
