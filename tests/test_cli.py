"""The command line as users meet it: exit codes, messages, and what gets sent.

Most cases run ``sync.cli.main()`` in-process (argv patched, output captured): that is
the console script's own entry point, with its exception -> exit code mapping, and it is
fast. A few run the installed ``personyze-sync`` script as a subprocess, to hold the real
entry point to the same contract. Every invocation is checked for leaked secrets.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync.sandbox import SandboxServer
from tests.support import (
    DB_PASSWORD,
    DEFAULT_MAPPING,
    WRONG_KEY,
    SilentServer,
    execute,
    run_script,
    status_json,
)

MAPPING = DEFAULT_MAPPING  # identifiers: internal_id and email
# The same, but identified by email alone: a row without an email has no identifier.
EMAIL_ONLY = {**MAPPING, "id": "custom_i_2"}


def line_of(path: str, needle: str) -> int:
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def internal_ids(sandbox: SandboxServer) -> set[int]:
    return {int(u["internal_id"]) for u in sandbox.users()}


def writes(sandbox: SandboxServer) -> list[Any]:
    return [r for r in sandbox.requests if r.method in ("POST", "PUT", "DELETE")]


# -- config and usage errors: exit 2, FILE:LINE and key named, nothing run ----------------


def test_malformed_yaml_names_file_and_line(cli, setup, sandbox):
    config = setup()
    Path(config).write_text("personyze:\n  api_key: x\n  base_url: [unclosed\njobs: []\n")
    result = cli("once", "-c", config)
    assert result.code == 2, result.text
    assert f"{config}:4: malformed YAML" in result.err
    assert result.out == ""
    assert sandbox.requests == []


def test_unknown_key_names_line_and_suggests(cli, setup, sandbox):
    config = setup(personyze={"concurency": 3})
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    line = line_of(config, "concurency")
    assert f"{config}:{line}: personyze.concurency: unknown key" in result.err
    assert "did you mean 'concurrency'" in result.err
    assert sandbox.requests == []


def test_missing_environment_variable_is_named(cli, setup, sandbox):
    config = setup()
    result = cli("once", "-c", config, key=None)
    assert result.code == 2, result.text
    line = line_of(config, "${TEST_API_KEY}")
    assert f"{config}:{line}: personyze.api_key" in result.err
    assert "environment variable TEST_API_KEY is not set" in result.err
    assert sandbox.requests == []


def test_missing_config_file(cli, tmp_path):
    missing = tmp_path / "nowhere.yaml"
    result = cli("once", "-c", str(missing))
    assert result.code == 2, result.text
    assert f"config file not found: {missing}" in result.err


@pytest.mark.parametrize("command", [["once"], ["backfill"]])
def test_unknown_job_name(cli, setup, sandbox, command):
    config = setup()
    result = cli(*command, "-c", config, "custmers")
    assert result.code == 2, result.text
    assert "no job named 'custmers'" in result.err
    assert "did you mean 'customers'" in result.err
    assert sandbox.requests == []
    assert status_json(cli, config)["runs"] == []


def test_backfill_since_not_a_cursor_value(cli, setup, sandbox):
    config = setup()
    result = cli("backfill", "-c", config, "customers", "--since", "yesterday-ish")
    assert result.code == 2, result.text
    assert "'yesterday-ish' is not a valid value for cursor 'updated_at'" in result.err
    assert sandbox.requests == []


def test_config_error_through_the_console_script(setup, sandbox):
    """The real entry point: a missing variable is a config error, exit 2."""
    config = setup()
    result = run_script("once", "-c", config, key=None)
    assert result.code == 2, result.text
    assert "environment variable TEST_API_KEY is not set" in result.err
    assert "Traceback" not in result.text
    assert sandbox.requests == []


# -- the source is not as configured: exit 1, named with "did you mean", nothing sent -----


@pytest.mark.parametrize(
    ("overrides", "mapping", "expected"),
    [
        pytest.param(
            {"table": "customer"},
            MAPPING,
            "table 'customer' does not exist at sqlite:///",
            id="table",
        ),
        pytest.param(
            {"cursor": "updatedat"},
            MAPPING,
            "column 'updatedat' does not exist in table 'customers'",
            id="cursor",
        ),
        pytest.param(
            {},
            {**MAPPING, "emial": "custom_s_1"},
            "column 'emial' does not exist in table 'customers'",
            id="mapped-column",
        ),
    ],
)
def test_source_not_as_configured(cli, setup, sandbox, overrides, mapping, expected):
    config = setup(source=overrides, mapping=mapping)
    result = cli("once", "-c", config)
    assert result.code == 1, result.text
    assert "job customers failed" in result.err
    assert expected in result.err
    wrong = expected.split("'")[1]
    right = {"customer": "customers", "updatedat": "updated_at", "emial": "email"}[wrong]
    assert f"did you mean '{right}'" in result.err
    assert sandbox.requests == []
    job = status_json(cli, config)
    assert job["checkpoint"] is None
    assert job["runs"][0]["outcome"] == "failed"


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_unreachable_database(cli, setup, sandbox, scheme):
    url = f"{scheme}://reader:{DB_PASSWORD}@127.0.0.1:1/shop"  # nothing listens on port 1
    config = setup(rows=None, source_url=url)
    result = cli("once", "-c", config)
    assert result.code == 1, result.text
    assert "job customers failed" in result.err
    assert f"{scheme}://127.0.0.1:1/shop" in result.err
    assert "reader" not in result.text  # the user-info is not shown, only where it tried
    assert sandbox.requests == []
    result = cli("validate", "-c", config, "--connect")
    assert result.code == 1, result.text
    assert "127.0.0.1:1" in result.err


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_a_silent_database_fails_validate_within_its_connect_timeout(setup, sandbox, scheme):
    with SilentServer() as server:  # accepts the connection, never answers
        where = f"127.0.0.1:{server.port}/shop"
        url = f"{scheme}://reader:{DB_PASSWORD}@{where}?connect_timeout=1"
        config = setup(rows=None, source_url=url)
        started = time.monotonic()
        try:  # a bound on a hang (the drivers' own: 130 s, or none), not a speed test
            result = run_script("validate", "-c", config, "--connect", timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"validate --connect still waiting after {time.monotonic() - started:.0f}s")
        assert server.accepted, "the driver never reached the server"
    assert result.code == 1, result.text
    assert where in result.err
    assert "reader" not in result.text
    assert "Traceback" not in result.text
    assert [r.path for r in sandbox.requests] == ["/rest/account"]  # the other checks went on


def test_wrong_database_password(cli, setup, sandbox, mariadb_url):
    wrong = mariadb_url.replace("root@", f"root:{DB_PASSWORD}@")
    config = setup(rows=None, source_url=wrong)
    result = cli("once", "-c", config)
    assert result.code == 1, result.text
    assert "Access denied" in result.err
    assert "mysql+pymysql://127.0.0.1:3306/" in result.err
    assert sandbox.requests == []
    assert status_json(cli, config)["checkpoint"] is None


# -- Personyze refuses the key ----------------------------------------------------------


def test_refused_api_key_through_the_console_script(cli, setup, sandbox):
    config = setup()
    result = run_script("once", "-c", config, key=WRONG_KEY)
    assert result.code == 1, result.text
    assert "Personyze refused the API key" in result.err
    assert "personyze.api_key" in result.err
    assert "Traceback" not in result.text
    assert sandbox.users() == []
    job = status_json(cli, config)
    assert job["checkpoint"] is None
    assert job["rows_known"] == 0
    assert job["runs"][0]["outcome"] == "failed"
    assert "refused the API key" in job["runs"][0]["error"]


def test_validate(cli, setup, sandbox):
    config = setup()
    result = cli("validate", "-c", config)
    assert result.code == 0, result.text
    assert "1 job(s): customers" in result.out
    assert sandbox.requests == []

    result = cli("validate", "-c", config, "--connect")
    assert result.code == 0, result.text
    assert "API key accepted" in result.out
    for check in ("source reachable", "key column 'id'", "cursor column 'updated_at'"):
        assert f"ok    job customers: {check}" in result.out

    result = cli("validate", "-c", config, "--connect", key=WRONG_KEY)
    assert result.code == 1, result.text
    assert "Personyze refused the API key" in result.err
    assert "API key accepted" not in result.out
    assert sandbox.users() == []


# -- rows that cannot be sent -----------------------------------------------------------


def test_rejected_rows_are_reported_and_resent_once_fixed(cli, setup, sandbox, sqlite_url):
    config = setup(mapping=EMAIL_ONLY)
    execute(
        sqlite_url,
        text("UPDATE customers SET email = 'not-an-email' WHERE id = 2"),
        text("UPDATE customers SET email = NULL WHERE id = 4"),
        text("UPDATE customers SET first_name = x'00ff' WHERE id = 5"),
    )
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    emails = {u["email"] for u in sandbox.users()}
    assert emails == {f"user{i}@example.com" for i in (1, 3, 6, 7, 8, 9, 10)}

    job = status_json(cli, config)
    assert job["rejected"] == 3
    reasons = {r["key"]: r["reason"] for r in job["rejections"]}
    assert "'not-an-email' is not a valid email address" in reasons["2"]
    assert "no identifier" in reasons["4"]
    assert "column 'first_name'" in reasons["5"] and "binary" in reasons["5"]
    assert job["checkpoint"] == {"cursor": "2024-05-01T12:00:10", "key": "10"}
    shown = cli("status", "-c", config)
    assert "rejected rows: 3" in shown.out
    assert "rejected row 5: column 'first_name'" in shown.flat

    later = datetime(2024, 6, 1).isoformat(sep=" ")
    execute(
        sqlite_url,
        text(
            f"UPDATE customers SET email = 'fixed@example.com', updated_at = '{later}' WHERE id = 2"
        ),
        text(f"UPDATE customers SET first_name = 'Fixed', updated_at = '{later}' WHERE id = 5"),
    )
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    users = {u["email"]: u for u in sandbox.users()}
    assert "fixed@example.com" in users
    assert users["user5@example.com"]["first_name"] == "Fixed"
    job = status_json(cli, config)
    assert [r["key"] for r in job["rejections"]] == ["4"]
    assert job["rejected"] == 1


# -- dry runs -----------------------------------------------------------------------------


def test_once_dry_run_prints_payloads_sends_nothing(cli, setup, sandbox):
    config = setup()
    result = cli("once", "-c", config, "--dry-run")
    assert result.code == 0, result.text
    lines = result.out.strip().splitlines()
    payloads = [json.loads(line) for line in lines[:-1]]
    assert sorted(p["internal_id"] for p in payloads) == list(range(1, 11))
    assert payloads[0].keys() == {
        "internal_id",
        "email",
        "first_name",
        "last_name",
        "custom_f_1",
        "custom_i_1",
    }
    assert "secret-hash" not in result.text
    assert lines[-1].startswith("customers: read 10, would send 10")
    assert sandbox.requests == []
    job = status_json(cli, config)
    assert job["checkpoint"] is None
    assert job["runs"] == []

    result = cli("once", "-c", config, "--dry-run", "--json")
    assert result.code == 0, result.text
    doc = result.json()
    assert len(doc["jobs"]["customers"]["would_send"]) == 10
    assert sandbox.requests == []


def test_dry_run_after_a_run_shows_only_the_change(cli, setup, sandbox, sqlite_url):
    config = setup()
    assert cli("once", "-c", config).code == 0
    before = len(sandbox.requests)
    execute(
        sqlite_url,
        text(
            "UPDATE customers SET first_name = 'Changed', "
            "updated_at = '2024-06-01 00:00:00' WHERE id = 3"
        ),
    )
    result = cli("once", "-c", config, "--dry-run", "--json")
    assert result.code == 0, result.text
    (payload,) = result.json()["jobs"]["customers"]["would_send"]
    assert payload["internal_id"] == 3 and payload["first_name"] == "Changed"
    assert "user_id" in payload  # the update carries the user Personyze answered with
    assert len(sandbox.requests) == before
    assert status_json(cli, config)["checkpoint"]["key"] == "10"


def test_backfill_dry_run_json(cli, setup, sandbox):
    config = setup()
    result = cli("backfill", "-c", config, "customers", "--dry-run", "--json")
    assert result.code == 0, result.text
    doc = result.json()
    job = doc["jobs"]["customers"]
    assert job["read"] == 10 and len(job["would_send"]) == 10
    assert sandbox.requests == []
    assert status_json(cli, config)["checkpoint"] is None


def test_failed_dry_run_exits_1(cli, setup, sandbox):
    config = setup(source={"table": "nope"})
    result = cli("once", "-c", config, "--dry-run", "--json")
    assert result.code == 1, result.text
    assert "table 'nope' does not exist" in result.json()["jobs"]["customers"]["error"]


# -- backfill, checkpoints, status --------------------------------------------------------


def test_backfill_sends_everything(cli, setup, sandbox):
    config = setup()
    result = cli("backfill", "-c", config, "customers")
    assert result.code == 0, result.text
    assert "customers: read 10, sent 10, unchanged 0, rejected 0" in result.out
    assert internal_ids(sandbox) == set(range(1, 11))
    job = status_json(cli, config)
    assert job["checkpoint"] == {"cursor": "2024-05-01T12:00:10", "key": "10"}
    assert job["runs"][0]["kind"] == "backfill"


def test_backfill_since(cli, setup, sandbox):
    config = setup()
    result = cli("backfill", "-c", config, "customers", "--since", "2024-05-01 12:00:05", "--json")
    assert result.code == 0, result.text
    assert result.json()["jobs"]["customers"]["sent"] == 4
    assert internal_ids(sandbox) == {5, 7, 8, 10}


def test_checkpoint_reset_rereads_but_resends_nothing(cli, setup, sandbox):
    config = setup()
    assert cli("once", "-c", config).code == 0
    sent = len(writes(sandbox))
    assert sent == 10

    result = cli("checkpoint", "reset", "-c", config, "customers")
    assert result.code == 0, result.text
    assert "the next run reads from the beginning" in result.out
    assert status_json(cli, config)["checkpoint"] is None
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    assert "read 10, sent 0, unchanged 10" in result.out
    assert len(writes(sandbox)) == sent

    result = cli("checkpoint", "reset", "-c", config, "customers", "--to", "2024-05-01 12:00:05")
    assert result.code == 0, result.text
    assert "cursor >= 2024-05-01 12:00:05" in result.out
    assert status_json(cli, config)["checkpoint"] == {"cursor": "2024-05-01T12:00:05", "key": None}
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    assert "read 4, sent 0, unchanged 4" in result.out
    assert len(writes(sandbox)) == sent

    result = cli("checkpoint", "reset", "-c", config, "custmers")
    assert result.code == 2 and "did you mean 'customers'" in result.err


def test_status_after_runs(cli, setup, sandbox, sqlite_url):
    config = setup()
    fresh = cli("status", "-c", config)
    assert fresh.code == 0 and "checkpoint: none (never run)" in fresh.out
    assert cli("once", "-c", config).code == 0
    execute(
        sqlite_url,
        text(
            "UPDATE customers SET last_name = 'New', "
            "updated_at = '2024-05-02 00:00:00' WHERE id IN (1, 2)"
        ),
    )
    result = cli("once", "-c", config, "--json")
    assert result.code == 0, result.text
    assert result.json()["jobs"]["customers"]["sent"] == 2

    job = status_json(cli, config)
    assert job["checkpoint"] == {"cursor": "2024-05-02T00:00:00", "key": "2"}
    assert job["rows_known"] == 10 and job["rejected"] == 0
    latest, first = job["runs"]
    # read: the two changed, and the row at the first run's checkpoint cursor value
    assert (latest["outcome"], latest["rows_read"], latest["rows_sent"]) == ("success", 3, 2)
    assert (first["outcome"], first["rows_read"], first["rows_sent"]) == ("success", 10, 10)
    assert job["lag_seconds"] > 0

    shown = cli("status", "-c", config)
    assert shown.code == 0
    assert "checkpoint: 2024-05-02 00:00:00 / key 2" in shown.out
    assert "users known: 10, rejected rows: 0" in shown.out
    assert re.search(r"once\s+success\s+10\s+10\s+0\s+0", shown.out)


# -- the demo ---------------------------------------------------------------------------


def test_demo_runs_to_completion():
    started = time.monotonic()
    result = run_script("demo", timeout=90)
    took = time.monotonic() - started
    assert result.code == 0, result.text
    summary = result.flat[result.flat.rindex("summary") :]
    users, customers = map(
        int, re.search(r"summary (\d+) Personyze users for (\d+) customers", summary).groups()
    )
    assert users == customers > 0
    assert "password hashes sent: none" in summary
    members = re.search(r"'VIP customers': (\d+) members added", result.flat)
    assert members and int(members.group(1)) > 0, result.text
    catalog = re.search(
        r"a product catalog (\d+) products sent, one request each \(e\.g\. "
        r"SKU-001: price (\d+\.\d\d?), in stock (yes|no)\)",
        result.flat,
    )
    assert catalog and catalog.group(1) == "40", result.text
    assert took < 60


def test_error_text_with_brackets_is_printed_as_is(cli, setup, sandbox):
    """Messages quote SQL and names; rich must not read them as markup."""
    config = setup(source={"table": None, "query": 'SELECT * FROM "gone[/x] [bold]"'})
    result = cli("once", "-c", config)
    assert result.code == 1, result.text
    assert "Traceback" not in result.text
    assert "gone[/x] [bold]" in result.err
    assert sandbox.requests == []
    shown = cli("status", "-c", config)
    assert shown.code == 0, shown.text
    assert "failed" in shown.out
    assert "gone[/x] [bold]" in status_json(cli, config)["runs"][0]["error"]
