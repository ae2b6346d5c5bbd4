"""``--json``: one time format, one type of key, one word per count, errors as JSON too
(issue 17, item 10).

Every time a JSON document shows is ISO 8601 in UTC (``2026-12-02T14:05:00Z``); a row's
key is a string wherever it appears; the count of rows a run found already in step is
``rows_unchanged``, as in the text and the logs; and a command that takes ``--json``
says what was wrong with its config or command line as a JSON object on stdout, keeping
its exit code (2). The real console entry point, in-process (the ``cli`` fixture).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sync.sandbox import SandboxServer
from sync.wiring import Wiring
from tests.support import change_customers, customers, load, status_json

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def assert_iso_utc(value: Any) -> None:
    assert isinstance(value, str) and ISO_UTC.fullmatch(value), value


def test_status_json_shows_every_time_as_iso_utc(cli, setup, sandbox: SandboxServer):
    config = setup()
    assert cli("once", "-c", config).code == 0
    with Wiring(load(Path(config))) as app, app.store.lease("customers"):
        job = status_json(cli, config)  # while a run holds the job: held_since is shown
    (run,) = job["runs"]
    assert_iso_utc(run["started_at"])
    assert_iso_utc(run["ended_at"])
    assert run["started_at"] <= run["ended_at"]
    assert job["held_by"] is not None
    assert_iso_utc(job["held_since"])
    # the cursor is the source's value: ISO 8601 too (this one has no zone in the source)
    assert job["checkpoint"]["cursor"] == "2024-05-01T12:00:10"


def test_status_json_keys_are_strings_and_counts_say_unchanged(cli, setup, sqlite_url, sandbox):
    config = setup()
    change_customers(sqlite_url, customers.c.id == 3, email="not-an-email")
    assert cli("once", "-c", config).code == 0
    assert cli("once", "-c", config).code == 0
    job = status_json(cli, config)
    assert job["checkpoint"]["key"] == "10"
    assert [r["key"] for r in job["rejections"]] == ["3"]
    latest, first = job["runs"]
    assert "rows_skipped" not in latest
    assert (first["rows_sent"], first["rows_unchanged"]) == (9, 0)
    assert (latest["rows_sent"], latest["rows_unchanged"]) == (0, 1)  # row 10, read again


def test_a_run_report_names_rejected_rows_by_string_keys(cli, setup, sqlite_url, sandbox):
    config = setup()
    change_customers(sqlite_url, customers.c.id.in_([3, 5]), email="not-an-email")
    for args in (["--dry-run"], []):
        result = cli("once", "-c", config, "--json", *args)
        assert result.code == 0, result.text
        rows = result.json()["jobs"]["customers"]["rejected_rows"]
        assert sorted(r["key"] for r in rows) == ["3", "5"]


def test_rejected_list_json_times_are_iso_utc(cli, setup, sqlite_url, sandbox):
    config = setup()
    change_customers(sqlite_url, customers.c.id == 3, email="not-an-email")
    assert cli("once", "-c", config).code == 0
    result = cli("rejected", "list", "-c", config, "--json")
    assert result.code == 0, result.text
    ((row,),) = [job["rejected"] for job in result.json()]
    assert row["key"] == "3"
    assert_iso_utc(row["first_seen"])
    assert_iso_utc(row["last_seen"])


# -- errors as JSON ---------------------------------------------------------------------


def error_of(result: Any) -> dict[str, Any]:
    assert result.code == 2, result.text
    doc = result.json()
    assert set(doc) == {"error"}, doc
    error: dict[str, Any] = doc["error"]
    return error


@pytest.mark.parametrize(
    "command",
    [["status"], ["rejected", "list"], ["verify"], ["once"], ["backfill"], ["validate"]],
    ids=" ".join,
)
def test_a_config_error_is_a_json_object_with_its_file_and_line(cli, setup, sandbox, command):
    config = setup()
    text = Path(config).read_text()
    Path(config).write_text(text.replace("batch_size: 50", "batch_size: many"))
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "batch_size" in t)
    result = cli(*command, "-c", config, "--json")
    error = error_of(result)
    assert error["kind"] == "config"
    assert error["where"] == f"{config}:{line}"
    assert "batch_size" in error["message"]
    assert "batch_size" in result.err  # and still said to a person, on stderr


def test_a_config_error_without_a_line_has_no_where(cli, setup, sandbox, tmp_path):
    missing = str(tmp_path / "nowhere.yaml")
    error = error_of(cli("status", "-c", missing, "--json"))
    assert error == {"kind": "config", "message": f"config file not found: {missing}"}


def test_an_unknown_job_is_a_json_config_error(cli, setup, sandbox):
    config = setup()
    error = error_of(cli("rejected", "list", "-c", config, "custmers", "--json"))
    assert error["kind"] == "config" and "did you mean 'customers'" in error["message"]


@pytest.mark.parametrize(
    "args",
    [["--sample", "0"], ["--sample", "5", "--all"], ["--nope"]],
    ids=" ".join,
)
def test_a_usage_error_is_a_json_object(cli, setup, sandbox, args):
    config = setup()
    error = error_of(cli("verify", "-c", config, "--json", *args))
    assert error["kind"] == "usage" and error["message"], error
    assert "Usage:" in cli("verify", "-c", config, "--json", *args).err


def test_without_json_an_error_is_text_on_stderr_only(cli, setup, sandbox, tmp_path):
    result = cli("status", "-c", str(tmp_path / "nowhere.yaml"))
    assert (result.code, result.out) == (2, "")
    assert "config file not found" in result.err
    result = cli("checkpoint", "reset", "-c", str(tmp_path / "nowhere.yaml"), "x", "--json")
    assert result.code == 2 and result.out == ""  # takes no --json: a usage error, as text
