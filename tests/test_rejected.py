"""``personyze-sync rejected list|retry|purge``: see, retry and drop the rows that were refused.

A real SQLite source and the sandbox over HTTP. Row 2 carries a ``user_id`` the sandbox
does not know (Personyze answers 400 "Row not found"); row 4 has an email the mapper
refuses. The other rows go through.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, text

from sync.databases import source_engine
from sync.sandbox import SandboxServer
from tests.support import WRONG_KEY, config_doc, execute, status_json, write_config

accounts = Table(
    "accounts",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(100)),
    Column("pz", Integer),
    Column("version", Integer, nullable=False),
)
UNKNOWN_USER = 999_999


@pytest.fixture
def config(cli, tmp_path: Path, sqlite_url: str, state_url: str, sandbox: SandboxServer) -> str:
    engine = source_engine(sqlite_url)
    accounts.metadata.create_all(engine)
    engine.dispose()
    rows = [
        {
            "id": i,
            "email": "not-an-email" if i == 4 else f"a{i}@example.com",
            "pz": UNKNOWN_USER if i == 2 else None,
            "version": i,
        }
        for i in range(1, 7)
    ]
    execute(sqlite_url, accounts.insert().values(rows))
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=state_url,
        source={"table": "accounts", "cursor": "version"},
        job={"mapping": {"id": "internal_id", "email": "email", "pz": "user_id"}},
    )
    path = str(write_config(tmp_path / "sync.yaml", doc))
    first = cli("once", "-c", path)
    assert first.code == 0, first.text
    assert "sent 4" in first.out and "rejected 2" in first.out
    return path


def listed(cli, config: str) -> dict[str, dict[str, object]]:
    result = cli("rejected", "list", "-c", config, "--json")
    assert result.code == 0, result.text
    (job,) = result.json()
    assert job["job"] == "customers"
    return {r["key"]: r for r in job["rejected"]}


def emails(sandbox: SandboxServer) -> set[str]:
    return {u["email"] for u in sandbox.users()}


def test_list_shows_each_row_with_its_reason_status_attempts_and_payload(cli, config):
    result = cli("rejected", "list", "-c", config)
    assert result.code == 0, result.text
    assert "customers: 2 rejected row(s)" in result.out
    assert re.search(r"key 2\s+HTTP 400\s+attempts 1\s+first seen \S+ \S+ UTC", result.out)
    assert re.search(r"key 4\s+mapping\s+attempts 1\s+first seen", result.out)
    assert "reason: Row not found" in result.out
    assert "reason: email 'not-an-email' is not a valid email address" in result.out
    assert f'"user_id": {UNKNOWN_USER}' in result.out  # the payload Personyze refused

    rows = listed(cli, config)
    assert rows.keys() == {"2", "4"}
    personyze, mapping = rows["2"], rows["4"]
    assert (personyze["status"], personyze["refused_by"], personyze["attempts"]) == (
        400,
        "personyze",
        1,
    )
    assert personyze["reason"] == "Row not found"
    assert personyze["payload"] == {"internal_id": 2, "email": "a2@example.com", "user_id": 999999}
    assert (mapping["status"], mapping["refused_by"]) == (None, "mapping")
    assert "not a valid email address" in str(mapping["reason"])
    for row in rows.values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(row["first_seen"]))
        assert row["first_seen"] <= row["last_seen"]  # type: ignore[operator]


def test_list_of_one_job_and_of_an_unknown_job(cli, config):
    result = cli("rejected", "list", "-c", config, "customers")
    assert result.code == 0 and "2 rejected row(s)" in result.out
    result = cli("rejected", "list", "-c", config, "custmers")
    assert result.code == 2 and "did you mean 'customers'" in result.err


def test_retry_after_fixing_the_source_delivers_them_and_they_leave_the_list(
    cli, config, sqlite_url, sandbox
):
    execute(
        sqlite_url,  # fixed in place: the cursor does not move, so only a retry finds them
        text("UPDATE accounts SET pz = NULL WHERE id = 2"),
        text("UPDATE accounts SET email = 'fixed4@example.com' WHERE id = 4"),
    )
    result = cli("rejected", "retry", "-c", config)
    assert result.code == 0, result.text
    assert "customers: retried 2, delivered 2, still rejected 0" in result.out
    assert listed(cli, config) == {}
    assert emails(sandbox) == {f"a{i}@example.com" for i in (1, 2, 3, 5, 6)} | {
        "fixed4@example.com"
    }
    (latest, *_) = status_json(cli, config)["runs"]
    assert (latest["kind"], latest["outcome"], latest["rows_sent"]) == ("retry", "success", 2)


def test_retry_while_still_bad_keeps_them_with_one_more_attempt(cli, config, sandbox):
    before = listed(cli, config)
    sandbox.clear_requests()
    result = cli("rejected", "retry", "-c", config, "customers", "--json")
    assert result.code == 1, result.text  # rows are still rejected
    assert result.json()["jobs"]["customers"] == {
        "retried": 2,
        "delivered": 0,
        "still_rejected": 2,
    }
    after = listed(cli, config)
    assert {k: r["attempts"] for k, r in after.items()} == {"2": 2, "4": 2}
    assert after["2"]["reason"] == "Row not found"
    assert after["2"]["first_seen"] == before["2"]["first_seen"]
    posted = [r.body for r in sandbox.requests if r.method == "POST"]
    assert [p["internal_id"] for p in posted] == [2]  # the mapper's rejection is never sent


def test_retry_dry_run_shows_what_would_be_sent(cli, config, sandbox):
    sandbox.clear_requests()
    result = cli("rejected", "retry", "-c", config, "--dry-run")
    assert result.code == 0, result.text
    assert '"user_id": 999999' in result.out
    assert "customers: 2 rejected row(s), would send 1" in result.out
    assert sandbox.requests == []
    assert {k: r["attempts"] for k, r in listed(cli, config).items()} == {"2": 1, "4": 1}


def test_retry_that_fails_exits_1_and_keeps_the_rows(cli, config, sandbox):
    result = cli("rejected", "retry", "-c", config, key=WRONG_KEY)
    assert result.code == 1, result.text
    assert "job customers failed" in result.err
    assert "refused the API key" in result.err
    assert listed(cli, config).keys() == {"2", "4"}


def test_purge_refuses_without_a_terminal_unless_told_yes(cli, config, sandbox):
    result = cli("rejected", "purge", "-c", config, "customers", "--key", "2")
    assert result.code == 2, result.text
    assert "would drop 1 rejected row(s) of job customers" in result.flat
    assert "pass --yes" in result.err
    assert listed(cli, config).keys() == {"2", "4"}

    result = cli("rejected", "purge", "-c", config, "customers", "--key", "2", "--yes")
    assert result.code == 0, result.text
    assert "customers: dropped 1 rejected row(s)" in result.out
    assert listed(cli, config).keys() == {"4"}

    result = cli("rejected", "purge", "-c", config, "customers", "--key", "77", "--yes")
    assert result.code == 2, result.text
    assert "no rejected row with key '77'" in result.err
    assert listed(cli, config).keys() == {"4"}

    sandbox.clear_requests()
    again = cli("once", "-c", config)  # a dropped row is not sent again while unchanged
    assert again.code == 0 and "sent 0" in again.out
    assert [r for r in sandbox.requests if r.method == "POST"] == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "code", "left"), [("y\n", 0, set()), ("n\n", 1, {"2", "4"})])
def test_purge_asks_on_a_terminal(cli, config, monkeypatch, answer, code, left):
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    result = cli("rejected", "purge", "-c", config)
    assert result.code == code, result.text
    assert "Drop 2 rejected row(s) of job customers? They will not be retried" in result.out
    assert listed(cli, config).keys() == left
    if code == 0:
        assert "customers: dropped 2 rejected row(s)" in result.out


def test_purge_yes_drops_them_all(cli, config):
    result = cli("rejected", "purge", "-c", config, "--yes")
    assert result.code == 0, result.text
    assert "customers: dropped 2 rejected row(s)" in result.out
    assert listed(cli, config) == {}
    assert status_json(cli, config)["rejected"] == 0
    result = cli("rejected", "purge", "-c", config, "--yes")
    assert result.code == 0 and "no rejected rows to drop" in result.out
