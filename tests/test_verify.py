"""``personyze-sync verify``: read users back, compare with the source, repair what drifted.

The comparison of one row with one user is pure and tested from a table. The command
is tested through the CLI entry against the sandbox over real HTTP, with a real source
database (SQLite, PostgreSQL and MariaDB for the main path, SQLite for the rest).
Changes "made in Personyze" are made in the sandbox's store directly, as another
client of the account would.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, text

from sync.compare import Comparison, Drift, compare
from sync.databases import source_engine
from sync.sandbox import SandboxServer
from sync.sandbox.store import Query
from sync.state.store import StateStore, state_engine
from sync.verify import Finding, Repair, VerifyReport
from tests.support import (
    change_customers,
    config_doc,
    customers,
    execute,
    make_customers,
    users_by_internal_id,
    write_config,
)

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
COLUMNS = ("internal_id", "email", "first_name", "last_name", "custom_f_1", "custom_i_1")

# -- the comparison, pure --------------------------------------------------------------

BASE = {
    "internal_id": 5,
    "email": "a5@example.com",
    "first_name": "Ann",
    "custom_f_1": 7.5,
    "custom_i_1": 1,
}


ABSENT: Any = object()


def _d(column: str, want: Any, have: Any) -> Drift:
    return Drift(column, want, have)


@pytest.mark.parametrize(
    ("want", "have", "different", "cannot_clear"),
    [
        pytest.param({}, {}, [], [], id="in-step"),
        pytest.param({}, {"user_id": 99}, [], [], id="user_id-is-the-handle-not-data"),
        pytest.param({"user_id": 5}, {"user_id": 6}, [], [], id="mapped-user_id-not-compared"),
        pytest.param({}, {"internal_id": "5"}, [], [], id="int-and-numeric-text"),
        pytest.param({}, {"internal_id": 5.0}, [], [], id="int-and-float-of-same-value"),
        pytest.param(
            {}, {"internal_id": 6}, [_d("internal_id", 5, 6)], [], id="internal_id-compared"
        ),
        pytest.param({}, {"custom_f_1": "7.5"}, [], [], id="float-and-numeric-text"),
        pytest.param({}, {"custom_f_1": 7.5 + 1e-12}, [], [], id="float-within-tolerance"),
        pytest.param(
            {}, {"custom_f_1": 7.51}, [_d("custom_f_1", 7.5, 7.51)], [], id="float-that-differs"
        ),
        pytest.param({}, {"custom_i_1": True}, [], [], id="bool-is-1"),
        pytest.param(
            {}, {"custom_i_1": "yes"}, [_d("custom_i_1", 1, "yes")], [], id="number-and-a-word"
        ),
        pytest.param(
            {"custom_i_1": 2**60},
            {"custom_i_1": 2**60 + 1},
            [_d("custom_i_1", 2**60, 2**60 + 1)],
            [],
            id="big-ints-exactly",
        ),
        pytest.param(
            {"zip": "02139"}, {"zip": "2139"}, [_d("zip", "02139", "2139")], [], id="texts-as-text"
        ),
        pytest.param({"zip": "02139"}, {"zip": 2139}, [], [], id="text-read-back-as-a-number"),
        pytest.param({}, {"email": "A5@Example.COM"}, [], [], id="email-ignores-case"),
        pytest.param(
            {}, {"first_name": "ann"}, [_d("first_name", "Ann", "ann")], [], id="text-keeps-case"
        ),
        pytest.param(
            {}, {"first_name": "Ann "}, [_d("first_name", "Ann", "Ann ")], [], id="text-keeps-space"
        ),
        pytest.param(
            {"custom_d_1": "2024-05-01"},
            {"custom_d_1": "2024-05-01 00:00:00"},
            [],
            [],
            id="date-and-midnight",
        ),
        pytest.param(
            {"custom_t_1": "2024-05-01 12:00:00"},
            {"custom_t_1": "2024-05-01T14:00:00+02:00"},
            [],
            [],
            id="same-instant-other-zone",
        ),
        pytest.param(
            {"custom_t_1": "2024-05-01 12:00:00"},
            {"custom_t_1": "2024-05-01 12:00:01"},
            [_d("custom_t_1", "2024-05-01 12:00:00", "2024-05-01 12:00:01")],
            [],
            id="a-second-apart",
        ),
        pytest.param(
            {},
            {"first_name": None},
            [_d("first_name", "Ann", None)],
            [],
            id="value-gone-in-personyze",
        ),
        pytest.param(
            {},
            {"first_name": ABSENT},
            [_d("first_name", "Ann", None)],
            [],
            id="column-absent-in-answer",
        ),
        pytest.param(
            {}, {"first_name": ""}, [_d("first_name", "Ann", "")], [], id="emptied-in-personyze"
        ),
        pytest.param(
            {"last_name": ABSENT},
            {"last_name": "Old"},
            [],
            [_d("last_name", None, "Old")],
            id="emptied-in-source-cannot-clear",
        ),
        pytest.param({"last_name": ABSENT}, {"last_name": None}, [], [], id="empty-on-both-sides"),
        pytest.param({"last_name": ABSENT}, {"last_name": ""}, [], [], id="null-and-empty-text"),
        pytest.param({"last_name": ABSENT}, {}, [], [], id="absent-on-both-sides"),
    ],
)
def test_compare(want, have, different, cannot_clear):
    """``want`` patches the payload, ``have`` the user, both made from BASE.

    ABSENT leaves the column out: of the payload, as the mapper does with an empty source
    value; of the answer, as an API that omits empty columns would.
    """
    payload = {k: v for k, v in {**BASE, **want}.items() if v is not ABSENT}
    user = {k: v for k, v in {"user_id": 5, **BASE, **have}.items() if v is not ABSENT}
    columns = (*COLUMNS, *want)
    assert compare(payload, user, columns) == Comparison(tuple(different), tuple(cannot_clear))


def test_compare_looks_at_payload_columns_not_named_in_columns():
    assert compare({"custom_t_2": "x"}, {}).different == (Drift("custom_t_2", "x", None),)


def test_report_counts_in_step_and_remaining_drift():
    report = VerifyReport("j", "all", checked=7)
    report.findings = [
        Finding("different", "1", 1, (Drift("a", 1, 2),)),
        Finding("missing", "2", 2),
        Finding("unsynced", "3"),
        Finding("cannot_clear", "4", 4, cannot_clear=(Drift("b", None, 1),)),
        Finding("unsendable", "5", 5),
        Finding("collision", "6", 6, (Drift("a", 1, 2),), note="shares Personyze user 6"),
    ]
    assert (report.in_step, report.cannot_clear, report.count("collision")) == (2, 1, 1)
    assert report.drift_remaining
    report.repair = Repair(["1", "2", "3"], 3, 0, [])
    assert not report.drift_remaining and report.repair.resent == 3
    report.repair = Repair(["1", "2", "3"], 2, 1, [Finding("unsynced", "3", reason="no")])
    assert report.drift_remaining
    report.findings = [report.findings[-1]]  # a collision alone is not drift
    report.repair = None
    assert not report.drift_remaining


# -- the command, against the sandbox ------------------------------------------------------


def _config(
    tmp_path: Path, source_url: str, state_url: str, sandbox: SandboxServer, **kw: Any
) -> str:
    doc = config_doc(source_url=source_url, api_url=sandbox.url, state_url=state_url, **kw)
    return str(write_config(tmp_path / "sync.yaml", doc))


def _synced(cli, tmp_path: Path, url: str, state_url: str, sandbox: SandboxServer) -> str:
    make_customers(url, range(1, 11))
    path = _config(tmp_path, url, state_url, sandbox)
    first = cli("once", "-c", path)
    assert first.code == 0 and "sent 10" in first.out, first.text
    sandbox.clear_requests()
    return path


@pytest.fixture
def synced(cli, tmp_path, sqlite_url, state_url, sandbox) -> str:
    """Customers 1..10 in a SQLite source, synced once; the config's path."""
    return _synced(cli, tmp_path, sqlite_url, state_url, sandbox)


@pytest.fixture
def synced_on(cli, tmp_path, source_url, state_url, sandbox) -> str:
    """The same on each source database (keys read back by value: typed per dialect)."""
    return _synced(cli, tmp_path, source_url, state_url, sandbox)


def verify(cli, config: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("verify", "-c", config, "customers", "--json", *args)
    assert result.code in (0, 1), result.text
    return result.code, result.json()


def user_of(sandbox: SandboxServer, internal_id: int) -> dict[str, Any]:
    (user,) = users_by_internal_id(sandbox.users())[str(internal_id)]
    return user


def edit_user(sandbox: SandboxServer, internal_id: int, **values: Any) -> None:
    """Change a user in Personyze behind the sync's back."""
    uid = int(user_of(sandbox, internal_id)["user_id"])
    assert sandbox.store.update(Query(user_id=uid), values) == 1


def delete_user(sandbox: SandboxServer, internal_id: int) -> int:
    uid = int(user_of(sandbox, internal_id)["user_id"])
    assert sandbox.store.delete(Query(user_id=uid)) == 1
    return uid


def only_reads(sandbox: SandboxServer) -> bool:
    return {r.method for r in sandbox.requests} <= {"GET"}


def identity(state_url: str, key: str) -> int | None:
    store = StateStore(state_engine(state_url), time.time)
    try:
        known = store.part("customers").lookup([key]).known
    finally:
        store.close()
    return known[key].user_id if key in known else None


def test_a_value_changed_in_personyze_is_found_repaired_and_then_clean(
    cli, tmp_path, source_url, state_url, sandbox
):
    make_customers(source_url, range(1, 11))
    config = _config(tmp_path, source_url, state_url, sandbox)
    assert cli("once", "-c", config).code == 0
    sandbox.clear_requests()

    code, doc = verify(cli, config, "--all")
    assert code == 0, doc
    assert (doc["mode"], doc["checked"], doc["in_step"], doc["findings"]) == ("all", 10, 10, [])
    assert doc["drift_remaining"] is False

    edit_user(sandbox, 3, first_name="Changed", custom_f_1="4.5")  # 4.5 == 3 * 1.5: no drift
    code, doc = verify(cli, config, "--all")
    assert code == 1
    assert (doc["checked"], doc["in_step"], doc["different"], doc["missing"]) == (10, 9, 1, 0)
    (finding,) = doc["findings"]
    assert finding["kind"] == "different" and finding["key"] == "3"
    assert finding["user_id"] == user_of(sandbox, 3)["user_id"]
    assert finding["columns"] == [{"column": "first_name", "want": "First3", "have": "Changed"}]
    assert ISO.fullmatch(finding["data_last_modified"])
    assert only_reads(sandbox), "verify without --repair must send nothing"

    code, doc = verify(cli, config, "--all", "--repair")
    assert code == 0, doc
    assert doc["different"] == 1  # what was found, before the repair
    assert doc["repair"] == {
        "resent": 1,
        "resent_keys": ["3"],
        "delivered": 1,
        "rejected": 0,
        "still_drifting": [],
    }
    assert user_of(sandbox, 3)["first_name"] == "First3"
    assert [r.method for r in sandbox.requests].count("POST") == 1

    code, doc = verify(cli, config, "--all")
    assert code == 0 and doc["findings"] == [] and doc["in_step"] == 10


def test_the_terminal_shows_a_table_and_a_summary(cli, synced, sandbox):
    edit_user(sandbox, 4, last_name="Smith")
    result = cli("verify", "-c", synced, "customers", "--all")
    assert result.code == 1, result.text
    assert "customers: verify of every source row" in result.flat
    assert 'last_name: want "Last4", have "Smith"' in result.flat
    assert re.search(r"different\s+4\s+\d+\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", result.out)
    assert "customers: checked 10, in step 9, different 1, missing 0, unsynced 0" in result.out
    assert only_reads(sandbox)

    fixed = cli("verify", "-c", synced, "customers", "--all", "--repair")
    assert fixed.code == 0, fixed.text
    assert "repair resent 1 (4), delivered 1, rejected 0, still drifting 0" in fixed.flat


def test_a_user_deleted_in_personyze_is_missing_and_repair_recreates_it(
    cli, synced_on, sandbox, state_url
):
    synced = synced_on
    gone = delete_user(sandbox, 6)
    code, doc = verify(cli, synced, "--all")
    assert code == 1
    (finding,) = doc["findings"]
    assert (finding["kind"], finding["key"], finding["user_id"]) == ("missing", "6", gone)
    assert doc["missing"] == 1 and only_reads(sandbox)

    code, doc = verify(cli, synced, "--all", "--repair")
    assert code == 0, doc
    assert doc["repair"]["resent"] == 1 and doc["repair"]["still_drifting"] == []
    by_row = users_by_internal_id(sandbox.users())
    assert sorted(by_row) == sorted(str(i) for i in range(1, 11))
    assert all(len(users) == 1 for users in by_row.values()), "one user per row"
    new = int(by_row["6"][0]["user_id"])
    assert new != gone and identity(state_url, "6") == new
    assert verify(cli, synced, "--all")[0] == 0


def test_sample_checks_at_most_n_rows_and_defaults_to_100(cli, synced_on, sandbox):
    synced = synced_on
    code, doc = verify(cli, synced, "--sample", "3")
    assert code == 0 and (doc["mode"], doc["sample"], doc["checked"]) == ("sample", 3, 3)
    code, doc = verify(cli, synced)
    assert code == 0 and (doc["mode"], doc["sample"], doc["checked"]) == ("sample", 100, 10)

    for i in range(1, 11):
        edit_user(sandbox, i, first_name="Drifted")
    code, doc = verify(cli, synced, "--sample", "4")
    assert code == 1 and doc["checked"] == 4 and doc["different"] == 4
    assert only_reads(sandbox)


def test_sample_reports_rows_gone_from_the_source_as_vanished(cli, synced_on, source_url, sandbox):
    synced = synced_on
    execute(source_url, delete(customers).where(customers.c.id == 2))
    code, doc = verify(cli, synced, "--sample", "50")
    assert code == 0, doc  # informational: nothing to repair
    (finding,) = doc["findings"]
    assert (finding["kind"], finding["key"], doc["vanished"]) == ("vanished", "2", 1)
    assert finding["user_id"] == user_of(sandbox, 2)["user_id"]


def test_a_row_never_sent_is_unsynced_and_repair_sends_it(cli, synced, sqlite_url, sandbox):
    make_customers(sqlite_url, [11])  # not synced yet
    code, doc = verify(cli, synced, "--all")
    assert code == 1
    (finding,) = doc["findings"]
    assert (finding["kind"], finding["key"], finding["reason"]) == ("unsynced", "11", "never sent")
    code, doc = verify(cli, synced, "--all", "--repair")
    assert code == 0, doc
    assert user_of(sandbox, 11)["email"] == "user11@example.com"


def test_a_column_emptied_in_the_source_cannot_be_cleared_and_is_not_drift(
    cli, synced, sqlite_url, sandbox
):
    change_customers(sqlite_url, customers.c.id == 5, first_name=None)
    assert cli("once", "-c", synced).code == 0  # sends row 5 without first_name
    sandbox.clear_requests()
    code, doc = verify(cli, synced, "--all", "--repair")
    assert code == 0, doc
    assert (doc["in_step"], doc["cannot_clear"], doc["different"]) == (10, 1, 0)
    (finding,) = doc["findings"]
    assert finding["kind"] == "cannot_clear" and finding["columns"] == []
    assert finding["cannot_clear"] == [{"column": "first_name", "have": "First5"}]
    assert doc["repair"]["resent"] == 0 and only_reads(sandbox)


def test_repair_dry_run_sends_nothing(cli, synced, sandbox):
    edit_user(sandbox, 7, email="other7@example.com")
    code, doc = verify(cli, synced, "--all", "--repair", "--dry-run")
    assert code == 1 and doc["would_resend"] == 1 and doc["repair"] is None
    assert doc["would_resend_keys"] == ["7"]
    assert only_reads(sandbox)
    result = cli("verify", "-c", synced, "customers", "--all", "--repair", "--dry-run")
    assert "dry run: would resend 1 row(s): 7; nothing was sent" in result.out


def test_rows_sharing_one_user_are_a_collision_not_drift_and_never_resent(
    cli, tmp_path, sqlite_url, state_url, sandbox
):
    """More in tests/integration/test_verify_collisions.py."""
    make_customers(sqlite_url, range(1, 4))
    change_customers(sqlite_url, customers.c.id == 2, email="user1@example.com")
    config = _config(tmp_path, sqlite_url, state_url, sandbox)
    assert cli("once", "-c", config).code == 0
    sandbox.clear_requests()
    code, doc = verify(cli, config, "--all", "--repair")
    assert code == 0, doc  # one user cannot hold two rows: reported, not drift
    assert [(c["key"], c["other_key"]) for c in doc["collisions"]] == [("2", "1")]
    (finding,) = doc["findings"]
    assert finding["kind"] == "collision" and finding["key"] in ("1", "2")
    assert "shares Personyze user" in finding["note"]
    assert doc["repair"]["resent"] == 0 and doc["repair"]["still_drifting"] == []
    assert only_reads(sandbox), "a resend would only move the difference to the other row"


accounts = Table(
    "accounts",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(100)),
    Column("pz", Integer),
    Column("version", Integer, nullable=False),
)


def test_rejected_rows_are_unsynced_with_their_reason(
    cli, tmp_path, sqlite_url, state_url, sandbox
):
    engine = source_engine(sqlite_url)
    accounts.metadata.create_all(engine)
    engine.dispose()
    rows = [
        {"id": 1, "email": "a1@example.com", "pz": None, "version": 1},
        {"id": 2, "email": "a2@example.com", "pz": 999_999, "version": 2},  # Row not found
        {"id": 3, "email": "not-an-email", "pz": None, "version": 3},  # refused by the mapping
    ]
    execute(sqlite_url, accounts.insert().values(rows))
    config = _config(
        tmp_path,
        sqlite_url,
        state_url,
        sandbox,
        source={"table": "accounts", "cursor": "version"},
        job={"mapping": {"id": "internal_id", "email": "email", "pz": "user_id"}},
    )
    assert cli("once", "-c", config).code == 0
    code, doc = verify(cli, config, "--all")
    assert code == 1
    found = {f["key"]: f for f in doc["findings"]}
    assert found["2"]["kind"] == "unsynced" and found["2"]["reason"] == "rejected: Row not found"
    assert found["3"]["kind"] == "unsendable" and "not a valid email" in found["3"]["reason"]
    assert (doc["checked"], doc["in_step"], doc["unsynced"], doc["unsendable"]) == (3, 1, 1, 1)

    code, doc = verify(cli, config, "--all", "--repair")
    assert code == 1  # Personyze refuses it again
    (still,) = doc["repair"]["still_drifting"]
    assert still["key"] == "2" and still["reason"] == "rejected: Row not found"
    execute(sqlite_url, text("UPDATE accounts SET pz = NULL WHERE id = 2"))
    assert verify(cli, config, "--all", "--repair")[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sample", "2", "--all"], "--sample and --all exclude each other"),
        (["--sample", "0"], "0 is not in the range x>=1"),
        (["--sample", "many"], "'many' is not a valid integer"),
    ],
)
def test_usage_errors_exit_2(cli, synced, args, message):
    result = cli("verify", "-c", synced, "customers", *args)
    assert result.code == 2 and message in result.flat, result.text


def test_an_unknown_job_exits_2(cli, synced):
    result = cli("verify", "-c", synced, "custmers")
    assert result.code == 2 and "did you mean 'customers'" in result.err


def test_a_sharded_job_is_verified_and_repaired_shard_by_shard(
    cli, tmp_path, sqlite_url, state_url, sandbox
):
    make_customers(sqlite_url, range(1, 11))
    config = _config(tmp_path, sqlite_url, state_url, sandbox, job={"shards": 3})
    assert cli("once", "-c", config).code == 0
    edit_user(sandbox, 4, first_name="Changed")
    delete_user(sandbox, 8)
    sandbox.clear_requests()

    code, doc = verify(cli, config, "--sample", "4")
    assert code in (0, 1) and doc["checked"] == 4  # shared out: 2 + 1 + 1
    code, doc = verify(cli, config, "--all")
    assert code == 1 and doc["checked"] == 10
    assert {(f["kind"], f["key"]) for f in doc["findings"]} == {
        ("different", "4"),
        ("missing", "8"),
    }
    assert only_reads(sandbox)

    code, doc = verify(cli, config, "--all", "--repair")
    assert code == 0, doc
    assert doc["repair"]["resent"] == 2 and doc["repair"]["still_drifting"] == []
    assert all(len(u) == 1 for u in users_by_internal_id(sandbox.users()).values())
    assert len(sandbox.users()) == 10
    assert verify(cli, config, "--all")[0] == 0


def test_repair_refuses_while_a_run_of_the_job_holds_its_lease(cli, synced, sandbox, state_url):
    edit_user(sandbox, 2, first_name="Changed")
    store = StateStore(state_engine(state_url), time.time)
    lease = store.lease("customers")  # a run of the job going on
    assert lease is not None
    try:
        result = cli("verify", "-c", synced, "customers", "--all", "--repair")
    finally:
        lease.release()
        store.close()
    assert result.code == 1, result.text
    assert "is being run by another process; nothing was resent" in result.flat
    assert only_reads(sandbox)
    assert cli("verify", "-c", synced, "customers", "--all", "--repair").code == 0


def test_sync_update_users_personyze_lacks_are_not_drift_and_never_created(
    cli, tmp_path, sqlite_url, state_url, sandbox
):
    make_customers(sqlite_url, range(1, 7))
    for i in (1, 2, 3, 4):  # Personyze knows these customers, by email
        sandbox.store.upsert({"email": f"user{i}@example.com", "first_name": "Old"})
    config = _config(tmp_path, sqlite_url, state_url, sandbox, job={"sync": "update"})
    assert cli("once", "-c", config).code == 0
    edit_user(sandbox, 2, first_name="Changed")
    delete_user(sandbox, 3)
    sandbox.clear_requests()

    code, doc = verify(cli, config, "--all")
    assert code == 1
    found = {f["key"]: f for f in doc["findings"]}
    assert {k: f["kind"] for k, f in found.items()} == {
        "2": "different",
        "3": "no_user",
        "5": "no_user",
        "6": "no_user",
    }
    assert "sync: update never creates one" in found["5"]["reason"]
    assert (doc["in_step"], doc["no_user"]) == (2, 3)
    assert only_reads(sandbox)

    code, doc = verify(cli, config, "--all", "--repair")
    assert code == 0, doc
    assert doc["repair"]["resent"] == 1
    assert [r.method for r in sandbox.requests if r.method != "GET"] == ["PUT"]
    assert len(sandbox.users()) == 3 and user_of(sandbox, 2)["first_name"] == "First2"
