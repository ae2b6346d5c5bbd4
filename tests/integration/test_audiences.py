"""Audience jobs on PostgreSQL and MariaDB: the members of a query over orders kept in a
Personyze list, by the user_ids the customers' users job recorded.

Writes are counted in the sandbox's request log (POST and DELETE on user_list_users):
a run writes exactly what changed, and reads each change back before recording it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Column, Integer, MetaData, Table, delete, insert

from sync.model import RunOptions, RunStats
from sync.run import run_job
from sync.sandbox import Faults, SandboxServer
from sync.sandbox.rest import Resource
from sync.wiring import Wiring
from tests.support import (
    Daemon,
    Outcome,
    config_doc,
    execute,
    load,
    make_customers,
    sandbox_client,
    wait_until,
    with_password,
    write_config,
)

orders = Table(
    "orders",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("customer_id", Integer, nullable=False),
)
BUYERS = (
    "SELECT DISTINCT c.id AS id, c.email AS email FROM customers c "
    "JOIN orders o ON o.customer_id = c.id"
)
AUDIENCE = "Buyers"


@pytest.fixture(params=["postgres", "mariadb"])
def db(request: pytest.FixtureRequest) -> str:
    name = "pg_url" if request.param == "postgres" else "mariadb_url"
    url: str = request.getfixturevalue(name)
    return url


def add_orders(url: str, customers: range | list[int], first: int = 1) -> None:
    """One order for each of these customers (two for every tenth), ids from ``first``."""
    rows, next_id = [], first
    for c in customers:
        for _ in range(2 if c % 10 == 0 else 1):
            rows.append({"id": next_id, "customer_id": c})
            next_id += 1
    execute(url, insert(orders).values(rows))


def drop_orders(url: str, customers: range | list[int]) -> None:
    execute(url, delete(orders).where(orders.c.customer_id.in_(list(customers))))


def audience_config(
    tmp_path: Path,
    url: str,
    sandbox: SandboxServer,
    *,
    customers: range,
    timeout_s: float | None = None,
    **audience: Any,
) -> Path:
    make_customers(url, customers)
    from sync.databases import source_engine

    engine = source_engine(url)
    orders.metadata.create_all(engine)
    engine.dispose()
    doc = config_doc(
        source_url=url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state/state.db",
        source={"batch_size": 500},
    )
    if timeout_s is not None:  # how long a lost answer is waited out; retried at once
        doc["personyze"] |= {"timeout_s": timeout_s, "backoff_initial_s": 0.01, "max_attempts": 3}
    doc["jobs"].append(
        {
            "name": "buyers",
            "object": "audience",
            "audience": AUDIENCE,
            "users_job": "customers",
            "source": {"url": url, "query": BUYERS, "key": "id", "detect": "diff"},
            "mapping": {"email": "email"},
            **audience,
        }
    )
    return write_config(tmp_path / "sync.yaml", doc)


def run(config: Path, name: str) -> RunStats:
    with Wiring(load(config)) as wiring:
        return run_job(wiring, wiring.config.job(name), RunOptions())


def user_ids(sandbox: SandboxServer, customers: range | list[int]) -> list[int]:
    """The Personyze user_ids of these customers (by their internal_id)."""
    wanted = {str(c) for c in customers}
    return sorted(int(u["user_id"]) for u in sandbox.users() if str(u["internal_id"]) in wanted)


def the_list(sandbox: SandboxServer) -> int:
    (found,) = [row for row in sandbox.user_lists() if row["name"] == AUDIENCE]
    return int(found["id"])


def synced(
    tmp_path: Path,
    url: str,
    sandbox: SandboxServer,
    *,
    customers: range,
    buyers: range,
    **audience: Any,
) -> tuple[Path, int]:
    """The config, after the customers and then the buyers (orders of ``buyers``) synced;
    and the audience's list id."""
    config = audience_config(tmp_path, url, sandbox, customers=customers, **audience)
    add_orders(url, buyers)
    run(config, "customers")
    run(config, "buyers")
    return config, the_list(sandbox)


def member_requests(sandbox: SandboxServer) -> dict[str, int]:
    """Requests to user_list_users by method, and every request to user_lists."""
    counts: dict[str, int] = {}
    for r in sandbox.requests:
        if r.path.startswith("/rest/user_list_users"):
            counts[r.method] = counts.get(r.method, 0) + 1
        elif r.path.startswith("/rest/user_lists"):
            counts["lists " + r.method] = counts.get("lists " + r.method, 0) + 1
    return counts


def test_mirror_writes_exactly_what_changed(
    tmp_path: Path, db: str, sandbox: SandboxServer
) -> None:
    config = audience_config(tmp_path, db, sandbox, customers=range(1, 1101), sync="mirror")
    add_orders(db, range(1, 1001))
    assert run(config, "customers").sent == 1100
    first = run(config, "buyers")
    assert (first.read, first.sent, first.deleted, first.waiting) == (1000, 1000, 0, 0)
    list_id = the_list(sandbox)
    assert sandbox.members(list_id) == user_ids(sandbox, range(1, 1001))

    drop_orders(db, range(1, 51))  # 50 leave
    add_orders(db, range(1001, 1031), first=10_000)  # 30 join
    run(config, "customers")  # nothing changed in customers: no request
    sandbox.clear_requests()
    second = run(config, "buyers")
    assert (second.read, second.sent, second.deleted, second.unchanged) == (980, 30, 50, 950)
    assert sandbox.members(list_id) == user_ids(sandbox, range(51, 1031))
    counts = member_requests(sandbox)
    assert counts.get("POST", 0) + counts.get("DELETE", 0) == 80
    assert (counts["POST"], counts["DELETE"]) == (30, 50)
    assert counts["GET"] == 2  # one read-back of the 30 added, one of the 50 removed
    assert counts == {"POST": 30, "DELETE": 50, "GET": 2, "lists GET": 1}

    sandbox.clear_requests()
    third = run(config, "buyers")  # nothing changed: no write, no read-back
    assert (third.sent, third.deleted, third.unchanged) == (0, 0, 980)
    assert member_requests(sandbox) == {"lists GET": 1}


def test_add_mode_never_removes(tmp_path: Path, db: str, sandbox: SandboxServer) -> None:
    config, _ = synced(tmp_path, db, sandbox, customers=range(1, 121), buyers=range(1, 101))
    drop_orders(db, range(1, 51))
    add_orders(db, range(101, 111), first=10_000)
    sandbox.clear_requests()
    stats = run(config, "buyers")
    assert (stats.sent, stats.deleted) == (10, 0)
    assert sandbox.members(the_list(sandbox)) == user_ids(sandbox, range(1, 111))
    assert member_requests(sandbox).get("DELETE", 0) == 0


def test_a_member_whose_user_is_not_synced_yet_waits(
    tmp_path: Path, db: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config = audience_config(tmp_path, db, sandbox, customers=range(1, 11), sync="mirror")
    add_orders(db, range(1, 11))
    run(config, "customers")
    make_customers(db, [11])  # a new customer's first order, before the users job ran
    add_orders(db, [11], first=100)
    sandbox.clear_requests()
    result = cli("once", "-c", str(config), "buyers")
    assert result.code == 0, result.text
    assert "waiting 1 (users not in Personyze yet)" in result.out
    list_id = the_list(sandbox)
    assert sandbox.members(list_id) == user_ids(sandbox, range(1, 11))
    assert len(sandbox.members(list_id)) == 10
    # looked for by email, not found: no add was sent for it, nothing rejected
    assert member_requests(sandbox)["POST"] == 10
    shown = cli("status", "-c", str(config), "--json")
    assert shown.code == 0, shown.text
    (buyers,) = [j for j in shown.json() if j["job"] == "buyers"]
    assert buyers["audience"] == {
        "name": AUDIENCE, "list_id": list_id, "members": 10, "waiting": 1,
    }  # fmt: skip
    assert buyers["rejected"] == 0

    run(config, "customers")  # the users job syncs customer 11
    stats = run(config, "buyers")
    assert (stats.sent, stats.waiting, stats.unchanged) == (1, 0, 10)
    assert sandbox.members(list_id) == user_ids(sandbox, range(1, 12))


def test_the_list_is_created_once_in_ten_runs(
    tmp_path: Path, db: str, sandbox: SandboxServer
) -> None:
    sandbox.audiences.create_list({"name": "Buyers of 2023"})  # another list, another name
    config = audience_config(tmp_path, db, sandbox, customers=range(1, 6))
    add_orders(db, range(1, 6))
    run(config, "customers")
    for _ in range(10):
        run(config, "buyers")
    assert [r["name"] for r in sandbox.user_lists()] == ["Buyers of 2023", AUDIENCE]
    assert member_requests(sandbox)["lists POST"] == 1
    assert sandbox.members(the_list(sandbox)) == user_ids(sandbox, range(1, 6))


def test_two_lists_of_the_name_are_refused_with_both_ids(
    tmp_path: Path, db: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config = audience_config(tmp_path, db, sandbox, customers=range(1, 6))
    add_orders(db, range(1, 6))
    run(config, "customers")
    first = sandbox.audiences.create_list({"name": AUDIENCE})
    sandbox.audiences.create_list({"name": "Other"})
    second = sandbox.audiences.create_list({"name": AUDIENCE})
    sandbox.clear_requests()
    result = cli("once", "-c", str(config), "buyers")
    assert result.code == 2, result.text
    assert f"Personyze holds 2 audiences named 'Buyers' (ids {first}, {second})" in result.err
    assert "nothing was written" in result.err
    assert {r.method for r in sandbox.requests} == {"GET"}
    assert sandbox.members(first) == sandbox.members(second) == []
    assert len(sandbox.user_lists()) == 3


def test_mirror_over_max_deletes_stops_before_writing(
    tmp_path: Path, db: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config, list_id = synced(
        tmp_path, db, sandbox, customers=range(1, 41), buyers=range(1, 41), sync="mirror",
        max_deletes_per_run=5,
    )  # fmt: skip
    drop_orders(db, range(1, 7))  # 6 leave, more than 5
    sandbox.clear_requests()
    dry = cli("once", "-c", str(config), "buyers", "--dry-run")
    assert dry.code == 3, dry.text  # a dry run says the real run would stop
    result = cli("once", "-c", str(config), "buyers")
    assert result.code == 1, result.text
    assert "would remove 6 members from audience 'Buyers'" in result.err
    assert "more than max_deletes_per_run allows (5" in result.err
    assert "nothing was removed and nothing added" in result.err
    assert {r.method for r in sandbox.requests} == {"GET"}
    assert sandbox.members(list_id) == user_ids(sandbox, range(1, 41))


def test_the_daemon_runs_an_audience_job_on_its_schedule(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    config = audience_config(tmp_path, with_password(pg_url), sandbox, customers=range(1, 21))
    doc = yaml.safe_load(config.read_text())
    for job in doc["jobs"]:
        job["schedule"] = {"every": "1s"}
    write_config(config, doc)
    add_orders(pg_url, range(1, 11))
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemons.append(daemon)
    wait_until(lambda: len(sandbox.user_lists()) == 1, what="the audience")
    list_id = the_list(sandbox)
    wait_until(lambda: len(sandbox.members(list_id)) == 10, what="the first members")
    add_orders(pg_url, range(11, 16), first=100)  # five join, on the next runs
    wait_until(lambda: len(sandbox.members(list_id)) == 15, timeout=10, what="the new members")
    assert sandbox.members(list_id) == user_ids(sandbox, range(1, 16))
    sent = {"job": "buyers", "object": "audience", "outcome": "sent"}
    wait_until(lambda: daemon.metric("personyze_sync_rows_total", **sent) == 15, timeout=5)
    runs = {"job": "buyers", "object": "audience", "outcome": "success"}
    assert daemon.metric("personyze_sync_runs_total", **runs) >= 2
    users = {"job": "customers", "object": "users", "outcome": "sent"}
    assert daemon.metric("personyze_sync_rows_total", **users) == 20
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(20) == 0, daemon.logs()
    assert len(sandbox.user_lists()) == 1


def test_lost_answers_create_one_list_and_every_member(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    # every answer lost costs timeout_s (the database plays no part: PostgreSQL only)
    db = pg_url
    config = audience_config(tmp_path, db, sandbox, customers=range(1, 31), timeout_s=0.5)
    add_orders(db, range(1, 31))
    run(config, "customers")
    sandbox.clear_requests()
    sandbox.faults = Faults(lost_answer_rate=1.0, writes_only=True, seed=3)  # applied, unanswered
    stats = run(config, "buyers")
    sandbox.faults = Faults()
    assert (stats.sent, stats.unresolved) == (30, 0)  # each confirmed by reading it back
    assert member_requests(sandbox)["lists POST"] == 1  # not resent: found by its name
    assert sandbox.members(the_list(sandbox)) == user_ids(sandbox, range(1, 31))
    assert len(sandbox.user_lists()) == 1
    again = run(config, "buyers")
    assert (again.sent, again.unchanged) == (0, 30)


def test_a_list_deleted_in_personyze_is_named_and_a_reset_makes_it_anew(
    tmp_path: Path, db: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config, gone = synced(tmp_path, db, sandbox, customers=range(1, 6), buyers=range(1, 6))
    with sandbox_client(sandbox) as c:
        assert c.delete(f"/user_lists/{gone}").json() == 1
    failed = cli("once", "-c", str(config), "buyers")
    assert failed.code == 1, failed.text
    assert f"audience 'Buyers' (list {gone}, which job buyers created or found) no longer " in (
        failed.err
    )
    assert "personyze-sync checkpoint reset -c CONFIG buyers" in failed.err
    reset = cli("checkpoint", "reset", "-c", str(config), "buyers")
    assert reset.code == 0, reset.text
    assert cli("once", "-c", str(config), "buyers").code == 0
    made = the_list(sandbox)
    assert made != gone and sandbox.members(made) == user_ids(sandbox, range(1, 6))


def test_a_dry_run_lists_what_it_would_add_and_remove(
    tmp_path: Path, db: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config = audience_config(tmp_path, db, sandbox, customers=range(1, 21), sync="mirror")
    add_orders(db, range(1, 11))
    run(config, "customers")
    first = cli("once", "-c", str(config), "buyers", "--dry-run", "--json")
    assert first.code == 0, first.text
    assert len(first.json()["jobs"]["buyers"]["would_send"]) == 10
    assert sandbox.user_lists() == []  # a dry run creates no list
    run(config, "buyers")
    drop_orders(db, [1])
    add_orders(db, [11, 12], first=100)
    sandbox.clear_requests()
    dry = cli("once", "-c", str(config), "buyers", "--dry-run", "--json")
    assert dry.code == 0, dry.text
    doc = dry.json()["jobs"]["buyers"]
    assert sorted(w["user_id"] for w in doc["would_send"]) == user_ids(sandbox, [11, 12])
    assert [(d["key"], d["user_id"]) for d in doc["would_delete"]] == [
        ("1", user_ids(sandbox, [1])[0])
    ]
    assert {r.method for r in sandbox.requests} == {"GET"}


def test_a_service_that_does_not_remove_members_as_inferred_stops_mirror_saying_so(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config, _ = synced(
        tmp_path, pg_url, sandbox, customers=range(1, 21), buyers=range(1, 21), sync="mirror"
    )
    # removal is not documented: a service that answers the inferred DELETE but keeps them
    members = sandbox.objects["user_list_users"]
    assert isinstance(members, Resource)
    sandbox.objects["user_list_users"] = Resource(
        members.path, get=members.get, post=members.post, delete=lambda _query: 0
    )
    drop_orders(pg_url, [1, 2])
    result = cli("once", "-c", str(config), "buyers")
    assert result.code == 1, result.text
    assert "answered the removal of 2 members of audience 'Buyers'" in result.err
    assert "removing a member is not documented" in result.err
    assert len(sandbox.members(the_list(sandbox))) == 20
    again = cli("status", "-c", str(config), "--json")
    (buyers,) = [j for j in again.json() if j["job"] == "buyers"]
    assert buyers["audience"]["members"] == 20  # still recorded: Personyze still has them


def test_verify_reads_members_back_and_repair_adds_the_missing_ones(
    tmp_path: Path, db: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config, list_id = synced(
        tmp_path, db, sandbox, customers=range(1, 101), buyers=range(1, 81), sync="mirror"
    )
    sandbox.clear_requests()
    clean = cli("verify", "-c", str(config), "buyers", "--all", "--json")
    assert clean.code == 0, clean.text
    doc = clean.json()
    assert (doc["object"], doc["checked"], doc["in_step"], doc["drift_remaining"]) == (
        "audience", 80, 80, False,
    )  # fmt: skip
    assert {r.method for r in sandbox.requests} == {"GET"}

    # someone removes three members by hand; one buyer leaves, two join, one is new
    removed = user_ids(sandbox, [5, 6, 7])
    with sandbox_client(sandbox) as c:
        for user_id in removed:
            where = f"user_list_id={list_id}&user_id={user_id}"
            assert c.delete(f"/user_list_users/where/{where}").json() == 1
    drop_orders(db, [80])
    add_orders(db, [81, 82], first=1000)
    make_customers(db, [101])  # its user is not synced yet: it waits
    add_orders(db, [101], first=2000)
    sandbox.clear_requests()
    found = cli("verify", "-c", str(config), "buyers", "--all", "--json")
    assert found.code == 1, found.text  # drift: members missing, members not added yet
    assert {r.method for r in sandbox.requests} == {"GET"}
    kinds = {(f["kind"], f["key"]) for f in found.json()["findings"]}
    assert kinds == {
        ("missing", "5"), ("missing", "6"), ("missing", "7"),
        ("unsynced", "81"), ("unsynced", "82"), ("no_user", "101"), ("vanished", "80"),
    }  # fmt: skip
    sample = cli("verify", "-c", str(config), "buyers", "--sample", "200")
    assert sample.code == 1, sample.text
    assert "up to 200 recorded members, picked at random" in sample.out
    assert "missing 3" in sample.out

    dry = cli("verify", "-c", str(config), "buyers", "--all", "--repair", "--dry-run", "--json")
    assert sorted(dry.json()["would_resend_keys"]) == ["5", "6", "7", "81", "82"]
    assert {r.method for r in sandbox.requests} == {"GET"}
    repaired = cli("verify", "-c", str(config), "buyers", "--all", "--repair", "--json")
    assert repaired.code == 0, repaired.text
    repair = repaired.json()["repair"]
    assert (sorted(repair["resent_keys"]), repair["still_drifting"]) == (
        ["5", "6", "7", "81", "82"], [],
    )  # fmt: skip
    assert set(sandbox.members(list_id)) == set(user_ids(sandbox, range(1, 83)))
    stats = run(config, "buyers")  # the member that left goes; the others are known
    assert (stats.sent, stats.deleted, stats.waiting) == (0, 1, 1)
    assert sandbox.members(list_id) == user_ids(sandbox, [*range(1, 80), 81, 82])


def test_commands_for_rows_say_what_they_mean_for_an_audience_job(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer, cli: Callable[..., Outcome]
) -> None:
    config, list_id = synced(
        tmp_path, pg_url, sandbox, customers=range(1, 11), buyers=range(1, 6), sync="mirror"
    )
    drop_orders(pg_url, [1])  # a retry of rejected rows must not sync the audience
    sandbox.clear_requests()
    retry = cli("rejected", "retry", "-c", str(config), "buyers")
    assert retry.code == 0, retry.text
    assert "retried 0" in retry.out
    assert sandbox.requests == [] and len(sandbox.members(list_id)) == 5
    reset = cli("checkpoint", "reset", "-c", str(config), "buyers", "--to", "5")
    assert reset.code == 2 and "keeps no cursor" in reset.err, reset.text
    history = cli("history", "-c", str(config), "buyers", "3")
    assert history.code == 2 and "no history is kept of them" in history.err, history.text
    adopt = cli("adopt", "-c", str(config), "buyers")
    assert adopt.code == 2 and "adopt that job" in adopt.err, adopt.text
    assert "product" not in adopt.err
    shown = cli("status", "-c", str(config))
    assert shown.code == 0, shown.text
    buyers = shown.out[shown.out.index("buyers (audience)") :]
    assert f"audience {AUDIENCE!r} (list {list_id}): 5 members, 0 rows waiting" in buyers
    for line in ("rows known", "identity map", "diff: "):  # a users job's lines
        assert line not in buyers
