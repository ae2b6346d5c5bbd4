"""The Sakila sample database in MariaDB, synced into the sandbox over HTTP.

Its 599 customers share one ``last_update`` value: a sync that pages by timestamp
alone loses or repeats rows here. The tests on ``sakila_source`` run on the same tables
copied into DuckDB too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from sync.config import load_config
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import SandboxServer
from sync.wiring import Wiring
from tests.support import API_KEY, config_doc, load, users_by_internal_id, write_config, writer

MAPPING = {
    "customer_id": "internal_id",
    "email": "email",
    "first_name": "firstName",
    "last_name": "last_name",
    "active": "custom_i_1",
    "store_id": "custom_i_2",
}
CITY_QUERY = """
    SELECT c.customer_id, c.email, c.first_name, c.last_name, a.phone, ci.city, co.country,
           GREATEST(c.last_update, a.last_update, ci.last_update, co.last_update) AS changed_at
    FROM customer c
    JOIN address a ON a.address_id = c.address_id
    JOIN city ci ON ci.city_id = a.city_id
    JOIN country co ON co.country_id = ci.country_id
"""


def sakila_app(tmp_path: Path, url: str, sandbox: SandboxServer, **job: Any) -> Wiring:
    doc = config_doc(
        source_url=url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        source={
            "table": "customer",
            "cursor": "last_update",
            "key": "customer_id",
            "batch_size": 50,
        },
        job={"mapping": MAPPING, **job},
    )
    return Wiring(load(write_config(tmp_path / "sakila.yaml", doc)))


def customers(url: str) -> dict[str, dict[str, Any]]:
    engine = writer(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM customer")).mappings().all()
    engine.dispose()
    return {str(r["customer_id"]): dict(r) for r in rows}


def assert_sandbox_mirrors_customers(sandbox: SandboxServer, url: str) -> None:
    """Exactly one Personyze user per customer, holding the customer's current values."""
    users = users_by_internal_id(sandbox.users())
    source = customers(url)
    assert set(users) == set(source)
    for customer_id, row in source.items():
        assert len(users[customer_id]) == 1, f"customer {customer_id} became several users"
        user = users[customer_id][0]
        assert user["email"] == row["email"].strip().lower()
        assert user["first_name"] == row["first_name"]
        assert user["last_name"] == row["last_name"]
        assert user["custom_i_1"] == int(row["active"])
        assert user["custom_i_2"] == row["store_id"]


def posts(sandbox: SandboxServer) -> list[Any]:
    return [r for r in sandbox.requests if r.method == "POST"]


def test_all_599_customers_arrive_once_though_they_share_one_last_update(
    tmp_path: Path, sakila_source: str, sandbox: SandboxServer
) -> None:
    sakila_url = sakila_source
    assert len({str(r["last_update"]) for r in customers(sakila_url).values()}) == 1
    with sakila_app(tmp_path, sakila_url, sandbox) as app:
        stats = run_job(app, app.config.jobs[0], RunOptions(kind="backfill"))
        checkpoint = app.store.part("customers").checkpoint()

    assert (stats.read, stats.sent, stats.rejected) == (599, 599, 0)
    assert len(posts(sandbox)) == 599
    assert len(sandbox.users()) == 599
    assert_sandbox_mirrors_customers(sandbox, sakila_url)
    assert checkpoint is not None and checkpoint.key == 599


def test_an_update_is_sent_on_the_next_run_and_nothing_else_is_resent(
    tmp_path: Path, sakila_url: str, sandbox: SandboxServer
) -> None:
    with sakila_app(tmp_path, sakila_url, sandbox) as app:
        job = app.config.jobs[0]
        run_job(app, job, RunOptions())
        engine = create_engine(sakila_url)
        with engine.begin() as conn:  # ON UPDATE CURRENT_TIMESTAMP bumps last_update
            conn.execute(text("UPDATE customer SET first_name = 'MARIE' WHERE customer_id = 5"))
        engine.dispose()

        sandbox.clear_requests()
        second = run_job(app, job, RunOptions())
        assert second.sent == 1
        assert [r.body for r in posts(sandbox)] == [
            {**posts(sandbox)[0].body, "first_name": "MARIE"}
        ]
        assert (
            posts(sandbox)[0].body["user_id"]
            == users_by_internal_id(sandbox.users())["5"][0]["user_id"]
        )

        sandbox.clear_requests()
        third = run_job(app, job, RunOptions())
    assert third.sent == 0 and sandbox.requests == []
    assert_sandbox_mirrors_customers(sandbox, sakila_url)


def test_changes_and_an_email_change_leave_one_user_per_customer_in_both_modes(
    tmp_path: Path, sakila_url: str, any_sandbox: SandboxServer
) -> None:
    with sakila_app(tmp_path, sakila_url, any_sandbox) as app:
        job = app.config.jobs[0]
        run_job(app, job, RunOptions())
        engine = create_engine(sakila_url)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE customer SET email = 'Mary.New@Example.org' WHERE customer_id = 1")
            )
            conn.execute(
                text(
                    "UPDATE customer SET last_name = 'SMYTHE', active = 0 "
                    "WHERE customer_id IN (2, 3, 4)"
                )
            )
            conn.execute(
                text("UPDATE customer SET store_id = 3 - store_id WHERE customer_id = 599")
            )
        engine.dispose()
        before = {u["internal_id"]: u["user_id"] for u in any_sandbox.users()}
        second = run_job(app, job, RunOptions())

    assert second.sent == 5
    assert_sandbox_mirrors_customers(any_sandbox, sakila_url)
    after = {u["internal_id"]: u["user_id"] for u in any_sandbox.users()}
    assert after == before, "an update moved a customer to another Personyze user"
    assert users_by_internal_id(any_sandbox.users())["1"][0]["email"] == "mary.new@example.org"


def test_a_query_over_customer_address_city_and_country(
    tmp_path: Path, sakila_source: str, sandbox: SandboxServer
) -> None:
    sakila_url = sakila_source
    job = {
        "mapping": {
            "customer_id": "internal_id",
            "email": "email",
            "phone": "custom_t_1",
            "city": "current_city",
            "country": "current_country",
        },
        "transforms": {"full_name": [{"template": "{first_name} {last_name}"}]},
    }
    with sakila_app(tmp_path, sakila_url, sandbox, **job) as app:
        settings = app.config.jobs[0].model_copy(
            update={
                "source": app.config.jobs[0].source.model_copy(
                    update={"table": None, "query": CITY_QUERY, "cursor": "changed_at"}
                )
            }
        )
        first = run_job(app, settings, RunOptions())
        assert first.sent == 599
        london = users_by_internal_id(sandbox.users())
        engine = writer(sakila_url)
        with engine.begin() as conn:
            in_city = (
                conn.execute(
                    text(
                        "SELECT c.customer_id FROM customer c JOIN address a USING (address_id) "
                        "WHERE a.city_id = 312"
                    )
                )
                .scalars()
                .all()
            )
            conn.execute(
                text(
                    "UPDATE city SET city = 'Londinium', last_update = CURRENT_TIMESTAMP "
                    "WHERE city_id = 312"
                )
            )
        engine.dispose()
        sandbox.clear_requests()
        second = run_job(app, settings, RunOptions())

    assert in_city and second.sent == len(in_city)
    users = users_by_internal_id(sandbox.users())
    assert len(users) == 599 and all(len(u) == 1 for u in users.values())
    for customer_id in in_city:
        assert users[str(customer_id)][0]["current_city"] == "Londinium"
    mary = users["1"][0]
    assert mary["full_name"] == "MARY SMITH"
    assert mary["current_country"] == london["1"][0]["current_country"]


def test_the_worked_example_in_config(
    tmp_path: Path, sakila_url: str, sandbox: SandboxServer
) -> None:
    """config/sakila.example.yaml as shipped: a cursor that is an expression over four
    tables, and inactive customers deleted."""
    example = Path(__file__).parents[2] / "config" / "sakila.example.yaml"
    env = {
        "PERSONYZE_API_KEY": API_KEY,
        "PERSONYZE_BASE_URL": sandbox.url,
        "SAKILA_URL": sakila_url,
        "STATE_URL": f"sqlite:///{tmp_path}/state.db",
    }
    inactive = [c for c, row in customers(sakila_url).items() if not row["active"]]
    with Wiring(load_config(example, env)) as app:
        job = app.config.jobs[0]
        first = run_job(app, job, RunOptions())
        assert first.sent == 599 - len(inactive)  # soft-deleted rows are never created
        users = users_by_internal_id(sandbox.users())
        assert set(users).isdisjoint(inactive) and len(users) == 599 - len(inactive)

        engine = create_engine(sakila_url)
        with engine.begin() as conn:
            in_city = conn.execute(
                text(
                    "SELECT c.customer_id FROM customer c JOIN address a USING (address_id) "
                    "WHERE a.city_id = 312 AND c.active = 1 AND c.customer_id > 2"
                )
            ).scalars()
            in_city = [str(c) for c in in_city]
            conn.execute(text("UPDATE city SET city = 'Londinium' WHERE city_id = 312"))
            conn.execute(text("UPDATE customer SET active = 0 WHERE customer_id IN (1, 2)"))
        engine.dispose()
        sandbox.clear_requests()
        second = run_job(app, job, RunOptions())

    assert in_city and (second.deleted, second.sent) == (2, len(in_city))
    methods = sorted(r.method for r in sandbox.requests if r.method != "GET")
    assert methods == ["DELETE", "DELETE"] + ["POST"] * len(in_city)
    users = users_by_internal_id(sandbox.users())
    assert "1" not in users and "2" not in users
    assert all(users[c][0]["current_city"] == "Londinium" for c in in_city)
