""" "Nothing lost, nothing doubled": the cases an adversarial review reproduced, one
test each, through the real pieces (a source database, the state store, the sandbox
over HTTP). Each failed on the code before the fix (see the issue's closing note).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert, text

from sync import admin
from sync.errors import ConfigError, TooManyDeletes
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import Faults, SandboxServer
from sync.sandbox.store import Query
from sync.wiring import Wiring
from tests.support import (
    BASE_TIME,
    change_customers,
    config_doc,
    customers,
    execute,
    load,
    make_customers,
    users_by_internal_id,
    write_config,
)

NO_EMAIL = {"id": "internal_id", "first_name": "first_name", "last_name": "last_name"}


def make_app(tmp_path: Path, source_url: str, sandbox: SandboxServer, **parts: Any) -> Wiring:
    doc = config_doc(
        source_url=source_url,
        api_url=sandbox.url,
        state_url=parts.pop("state_url", f"sqlite:///{tmp_path}/state.db"),
        **parts,
    )
    return Wiring(load(write_config(tmp_path / "sync.yaml", doc)))


def posts(sandbox: SandboxServer) -> list[Any]:
    return [r for r in sandbox.requests if r.method == "POST"]


def one_user_each(sandbox: SandboxServer) -> dict[str, dict[str, Any]]:
    users = users_by_internal_id(sandbox.users())
    doubled = {k: len(v) for k, v in users.items() if len(v) > 1}
    assert not doubled, f"rows that became several users: {doubled}"
    return {k: v[0] for k, v in users.items()}


# -- case 3: a row updated within the checkpoint's cursor value, with a smaller key ---


def test_a_row_updated_to_the_checkpoints_own_cursor_value_is_not_lost(
    tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    make_customers(source_url, range(1, 11), updated_at=BASE_TIME)
    with make_app(tmp_path, source_url, sandbox) as app:
        job = app.config.jobs[0]
        run_job(app, job, RunOptions(kind="backfill"))
        assert app.store.part("customers").checkpoint().key == 10
        # a second-precision timestamp: updated in the same second the checkpoint holds
        change_customers(source_url, customers.c.id <= 5, first_name="Changed")
        sandbox.clear_requests()
        stats = run_job(app, job, RunOptions())
        assert sorted(r.body["internal_id"] for r in posts(sandbox)) == [1, 2, 3, 4, 5]
        assert stats.sent == 5 and stats.unchanged == 5  # the other five: read, not sent
        sandbox.clear_requests()
        run_job(app, job, RunOptions())
        assert posts(sandbox) == []  # re-reading the value costs no request
    users = one_user_each(sandbox)
    assert [users[str(i)]["first_name"] for i in range(1, 6)] == ["Changed"] * 5


# -- case 4: a rejected row retried, then changed before the pass read it -------------


def test_a_retried_row_that_changed_before_the_pass_read_it_is_sent(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    people = Table(
        "people",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("uid", Integer),  # a user_id Personyze lacks: 400 "Row not found"
        Column("email", String(50)),
        Column("updated_at", DateTime),
    )
    from sync.databases import source_engine

    engine = source_engine(sqlite_url)
    people.metadata.create_all(engine)
    engine.dispose()
    rows = [{"id": i, "uid": 999 if i == 3 else None, "email": f"p{i}@example.com",
             "updated_at": BASE_TIME} for i in range(1, 6)]  # fmt: skip
    execute(sqlite_url, insert(people).values(rows))
    job = {"mapping": {"id": "internal_id", "uid": "user_id", "email": "email"}}
    with make_app(tmp_path, sqlite_url, sandbox, job=job, source={"table": "people"}) as app:
        settings = app.config.jobs[0]
        run_job(app, settings, RunOptions(kind="backfill"))
        assert [r.key for r in app.store.part("customers").rejections()] == ["3"]
        reader = app.reader(settings)
        read_by_key = reader.rows_by_key

        def retry_then_change(keys: Any) -> Any:
            found = read_by_key(keys)  # the retry's read: the version Personyze refuses
            execute(
                sqlite_url,
                people.update()
                .where(people.c.id == 3)
                .values(uid=None, email="fixed3@example.com", updated_at=BASE_TIME + timedelta(1)),
            )
            return found

        reader.rows_by_key = retry_then_change  # type: ignore[method-assign]
        stats = run_job(app, settings, RunOptions())
        reader.rows_by_key = read_by_key  # type: ignore[method-assign]
        assert stats.sent == 1  # the pass sent the new version, in the same run
        assert app.store.part("customers").rejections() == []
    assert one_user_each(sandbox)["3"]["email"] == "fixed3@example.com"


# -- case 13: a user deleted in Personyze, then the row updated ------------------------


def test_a_row_whose_user_was_deleted_in_personyze_is_sent_as_new(
    tmp_path: Path, source_url: str, sandbox: SandboxServer
) -> None:
    make_customers(source_url, range(1, 6))
    with make_app(tmp_path, source_url, sandbox, job={"mapping": NO_EMAIL}) as app:
        job = app.config.jobs[0]
        run_job(app, job, RunOptions(kind="backfill"))
        gone = one_user_each(sandbox)["3"]["user_id"]
        assert sandbox.store.delete(Query(user_id=int(gone))) == 1
        change_customers(
            source_url, customers.c.id == 3, first_name="Back", updated_at=BASE_TIME + timedelta(1)
        )
        run_job(app, job, RunOptions())
        assert app.store.part("customers").rejections() == []
        user = one_user_each(sandbox)["3"]
        assert user["first_name"] == "Back" and user["user_id"] != gone
        assert app.store.part("customers").lookup(["3"]).known["3"].user_id == user["user_id"]
        sandbox.clear_requests()
        run_job(app, job, RunOptions())
        assert posts(sandbox) == []
    assert len(sandbox.users()) == 5


# -- case 14: marks written before a send survive a power cut ---------------------------


def test_the_sqlite_state_store_commits_with_synchronous_full(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 3))
    with make_app(tmp_path, sqlite_url, sandbox) as app:
        run_job(app, app.config.jobs[0], RunOptions())
        with app.store._engine.connect() as conn:  # the store's own connections
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


# -- case 15: rows in different shards sharing one user -----------------------------------


def test_rows_of_different_shards_sharing_a_user_are_a_reported_collision(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, 7))
    change_customers(pg_url, customers.c.id.in_([1, 2]), email="shared@example.com")
    with make_app(tmp_path, pg_url, sandbox, state_url=pg_url, job={"shards": 2}) as app:
        job = app.config.jobs[0]
        stats = run_job(app, job, RunOptions(kind="backfill"))
        collisions = [c for name, _ in app.parts(job) for c in app.store.part(name).collisions()]
    assert stats.collisions == 1
    assert {(c.key, c.other_key) for c in collisions} in ({("1", "2")}, {("2", "1")})


# -- case 16: a case-insensitive key whose case changed -------------------------------


def test_a_rejected_row_whose_key_changed_case_does_not_crash_the_retry(
    tmp_path: Path, mariadb_url: str, sandbox: SandboxServer
) -> None:
    meta = MetaData()
    codes = Table(
        "codes",
        meta,
        Column("code", String(10), primary_key=True),  # MariaDB: case-insensitive
        Column("email", String(100)),
        Column("updated_at", DateTime),
    )
    from sync.databases import source_engine

    engine = source_engine(mariadb_url)
    meta.create_all(engine)
    engine.dispose()
    execute(
        mariadb_url,
        insert(codes).values(code="ABC", email="bad", updated_at=BASE_TIME),
        insert(codes).values(code="XYZ", email="xyz@example.com", updated_at=BASE_TIME),
    )
    job = {"mapping": {"code": "internal_id", "email": "email"}}
    source = {"table": "codes", "key": "code"}
    with make_app(tmp_path, mariadb_url, sandbox, job=job, source=source) as app:
        settings = app.config.jobs[0]
        run_job(app, settings, RunOptions(kind="backfill"))
        assert [r.key for r in app.store.part("customers").rejections()] == ["ABC"]
        later = BASE_TIME + timedelta(days=1)
        execute(
            mariadb_url,
            text("UPDATE codes SET code = 'abc', email = 'abc@example.com', updated_at = :t"
                 " WHERE code = 'ABC'").bindparams(t=later),
        )  # fmt: skip
        stats = run_job(app, settings, RunOptions())
        assert stats.sent == 1
        assert app.store.part("customers").rejections() == []
    assert {u["email"] for u in sandbox.users()} == {"abc@example.com", "xyz@example.com"}


# -- case 5: a source briefly empty at the end of a mirror run; rows that come back ---


def test_a_mirror_run_whose_source_empties_at_its_end_deletes_nothing(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, 201))
    job = {"sync": "mirror", "max_deletes_per_run": "50%"}
    with make_app(tmp_path, pg_url, sandbox, job=job) as app:
        settings = app.config.jobs[0]
        run_job(app, settings, RunOptions(kind="backfill"))
        change_customers(
            pg_url, customers.c.id <= 20, first_name="Changed", updated_at=BASE_TIME + timedelta(1)
        )
        reader = app.reader(settings)
        present = reader.present_keys
        emptied: list[int] = []

        def briefly_empty(keys: Any) -> Any:  # the source, once the 20 changes are sent
            if len(posts(sandbox)) < 20:
                return present(keys)
            emptied.append(len(keys))
            return set()

        reader.present_keys = briefly_empty  # type: ignore[method-assign]
        sandbox.clear_requests()
        with pytest.raises(TooManyDeletes, match=r"200 rows vanished.*nothing was deleted"):
            run_job(app, settings, RunOptions())
        reader.present_keys = present  # type: ignore[method-assign]
        assert emptied  # the end-of-run pass ran against the empty source
        assert [r.method for r in sandbox.requests if r.method == "DELETE"] == []
        assert app.store.part("customers").row_count() == 200
        run_job(app, settings, RunOptions())
    assert len(one_user_each(sandbox)) == 200


def test_a_row_deleted_as_vanished_that_comes_back_is_sent_again(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, 21))
    with make_app(
        tmp_path, pg_url, sandbox, job={"sync": "mirror", "max_deletes_per_run": 5}
    ) as app:
        settings = app.config.jobs[0]
        run_job(app, settings, RunOptions(kind="backfill"))
        execute(pg_url, text("CREATE TABLE kept AS SELECT * FROM customers WHERE id <= 3"))
        execute(pg_url, customers.delete().where(customers.c.id <= 3))
        stats = run_job(app, settings, RunOptions())
        assert stats.deleted == 3 and len(sandbox.users()) == 17
        execute(pg_url, text("INSERT INTO customers SELECT * FROM kept"))  # old cursors
        sandbox.clear_requests()
        run_job(app, settings, RunOptions())
        assert sorted(r.body["internal_id"] for r in posts(sandbox)) == [1, 2, 3]
        sandbox.clear_requests()
        run_job(app, settings, RunOptions())
        assert posts(sandbox) == []
    assert len(one_user_each(sandbox)) == 20


# -- case 9: Personyze's database clock behind its Date header ------------------------


def test_lost_answers_under_a_database_clock_behind_the_date_header_make_no_second_user(
    tmp_path: Path, pg_url: str
) -> None:
    import time

    make_customers(pg_url, range(1, 21))
    faults = Faults(lost_answer_rate=0.5, seed=9)
    with SandboxServer("test-key-3f9a1c", faults=faults, wall=lambda: time.time() - 10) as api:
        with make_app(tmp_path, pg_url, api, job={"mapping": NO_EMAIL}) as app:
            settings = app.config.jobs[0]
            first = run_job(app, settings, RunOptions(kind="backfill"))
            assert first.unresolved > 0
            api.faults = Faults()
            for _ in range(3):  # until every mark is resolved
                if not app.store.part("customers").pending():
                    break
                run_job(app, settings, RunOptions())
            assert app.store.part("customers").pending() == []
        assert sorted(one_user_each(api), key=int) == [str(i) for i in range(1, 21)]


# -- case 10: two jobs that both map id to internal_id ---------------------------------


def test_reconciliation_never_adopts_the_user_of_another_job(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(40, 45))
    leads = Table(
        "leads",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("first_name", String(50)),
        Column("updated_at", DateTime),
    )
    from sync.databases import source_engine

    engine = source_engine(sqlite_url)
    leads.metadata.create_all(engine)
    engine.dispose()
    execute(sqlite_url, insert(leads).values(id=42, first_name="Lead", updated_at=BASE_TIME))
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"mapping": NO_EMAIL},
    )
    doc["jobs"].append(
        {
            "name": "leads",
            "source": {"url": sqlite_url, "table": "leads", "cursor": "updated_at", "key": "id"},
            "mapping": {"id": "internal_id", "first_name": "first_name"},
        }
    )
    with Wiring(load(write_config(tmp_path / "sync.yaml", doc))) as app:
        run_job(app, app.config.job("customers"), RunOptions())
        sandbox.faults = Faults(lost_answer_rate=1.0, writes_only=True)  # applied, answer lost
        assert run_job(app, app.config.job("leads"), RunOptions()).unresolved == 1
        sandbox.faults = Faults()
        run_job(app, app.config.job("leads"), RunOptions())
        assert app.store.part("leads").pending() == []
        customer_user = app.store.part("customers").lookup(["42"]).known["42"].user_id
        lead_user = app.store.part("leads").lookup(["42"]).known["42"].user_id
    assert customer_user != lead_user
    by_id = {u["user_id"]: u for u in sandbox.users()}
    assert by_id[customer_user]["first_name"] == "First42"
    assert by_id[lead_user]["first_name"] == "Lead"
    assert len(users_by_internal_id(sandbox.users())["42"]) == 2  # one per job, no third


# -- case 11: a new row with an email whose answer was lost, then its email changes ---


def test_a_lost_first_answer_then_an_email_change_leaves_one_user(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 4))
    with make_app(tmp_path, sqlite_url, sandbox, personyze={"max_attempts": 1}) as app:
        settings = app.config.jobs[0]
        sandbox.faults = Faults(lost_answer_rate=1.0, writes_only=True)  # applied, answers lost
        try:
            run_job(app, settings, RunOptions(kind="backfill"))
        except Exception as exc:  # noqa: BLE001 - the run gives up: no answer came
            assert "could not be delivered" in str(exc)
        sandbox.faults = Faults()
        assert app.store.part("customers").lookup(["1", "2", "3"]).known == {}
        change_customers(
            sqlite_url,
            customers.c.id == 2,
            email="renamed2@example.com",
            updated_at=BASE_TIME + timedelta(days=1),
        )
        run_job(app, settings, RunOptions())
        assert app.store.part("customers").pending() == []
    users = one_user_each(sandbox)
    assert sorted(users, key=int) == ["1", "2", "3"]
    assert users["2"]["email"] == "renamed2@example.com"


# -- case 7: a reshard between the shards of one run ------------------------------------


def test_a_reshard_between_a_runs_shards_stops_the_run_before_it_sends(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, 31))
    three = {"shards": 3, "mapping": NO_EMAIL}
    with make_app(tmp_path, pg_url, sandbox, state_url=pg_url, job=three) as app:
        settings = app.config.jobs[0]
        run_job(app, settings, RunOptions(kind="backfill"))
        assert len(sandbox.users()) == 30
        change_customers(pg_url, customers.c.id > 0, first_name="Changed",
                         updated_at=BASE_TIME + timedelta(1))  # fmt: skip
        (tmp_path / "other").mkdir()
        other = make_app(tmp_path / "other", pg_url, sandbox, state_url=pg_url,
                         job={"shards": 2, "mapping": NO_EMAIL})  # fmt: skip
        take = app.store.lease
        taken: list[str] = []

        def lease_after_a_reshard(name: str) -> Any:
            taken.append(name)
            if len(taken) == 2:  # between this run's first and second shard
                admin.reshard(other, other.config.jobs[0])
            return take(name)

        app.store.lease = lease_after_a_reshard  # type: ignore[method-assign]
        try:
            with pytest.raises(ConfigError, match=r"shard.*nothing was run"):
                run_job(app, settings, RunOptions())
        finally:
            app.store.lease = take  # type: ignore[method-assign]
            other.close()
    assert len(taken) == 2
    assert len(one_user_each(sandbox)) == 30


# -- case 8: an internal_id held by two users is reported -------------------------------


def test_a_row_whose_id_two_users_hold_is_adopted_once_and_the_other_reported(
    tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, [1])
    with make_app(tmp_path, sqlite_url, sandbox, job={"mapping": NO_EMAIL}) as app:
        settings = app.config.jobs[0]
        sandbox.faults = Faults(lost_answer_rate=1.0, writes_only=True)
        assert run_job(app, settings, RunOptions()).unresolved == 1
        sandbox.faults = Faults()
        (first,) = sandbox.users()
        second = sandbox.store.upsert({k: v for k, v in first.items() if k != "user_id"})
        run_job(app, settings, RunOptions())
        (status,) = admin.status(app)
        assert app.store.part("customers").lookup(["1"]).known["1"].user_id == first["user_id"]
    assert status.duplicates == [("1", second, first["user_id"])]
