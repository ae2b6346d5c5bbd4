"""The API key belongs to the commands that reach Personyze (issue 17, item 9).

``status``, ``rejected list|purge`` and ``checkpoint reset`` never talk to Personyze,
so they run without its key; every command that sends or reads still refuses without
it, with the FILE:LINE message loading always gave, before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync.sandbox import SandboxServer
from tests.support import change_customers, customers


def line_of(path: str, needle: str) -> int:
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def edit(config: str, change: Callable[[dict[str, Any]], None]) -> str:
    doc = yaml.safe_load(Path(config).read_text())
    change(doc)
    Path(config).write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


KEYLESS = [
    ["status"],
    ["status", "--json"],
    ["rejected", "list"],
    ["rejected", "list", "customers", "--json"],
    ["checkpoint", "reset", "customers"],
    ["rejected", "purge", "customers", "--yes"],
]
NEEDS_KEY = [
    ["validate"],
    ["validate", "--connect"],
    ["once"],
    ["once", "--dry-run"],
    ["backfill", "customers"],
    ["run"],
    ["verify", "customers"],
    ["adopt", "customers", "--yes"],
    ["rejected", "retry"],
]


@pytest.fixture
def synced(cli, setup, sqlite_url, sandbox: SandboxServer) -> str:
    """A config whose job has run once: 9 rows sent, row 3 rejected (a bad email)."""
    config = setup()
    change_customers(sqlite_url, customers.c.id == 3, email="not-an-email")
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    sandbox.clear_requests()
    return config


@pytest.mark.parametrize("command", KEYLESS, ids=" ".join)
def test_commands_that_do_not_reach_personyze_run_without_its_key(cli, synced, sandbox, command):
    result = cli(*command, "-c", synced, key=None)
    assert result.code == 0, result.text
    assert "TEST_API_KEY" not in result.text
    assert sandbox.requests == []


def test_what_they_show_without_the_key(cli, synced, sandbox):
    status = cli("status", "-c", synced, "--json", key=None)
    assert status.code == 0, status.text
    (job,) = status.json()
    assert job["rows_known"] == 9
    listed = cli("rejected", "list", "-c", synced, key=None)
    assert "not a valid email address" in listed.out
    assert cli("rejected", "purge", "-c", synced, "customers", "--yes", key=None).code == 0
    assert "no rejected rows" in cli("rejected", "purge", "-c", synced, "--yes", key=None).out
    reset = cli("checkpoint", "reset", "-c", synced, "customers", key=None)
    assert "the next run reads from the beginning" in reset.out


@pytest.mark.parametrize("command", NEEDS_KEY, ids=" ".join)
def test_commands_that_reach_personyze_still_need_its_key(cli, synced, sandbox, command):
    result = cli(*command, "-c", synced, key=None)
    assert result.code == 2, result.text
    line = line_of(synced, "${TEST_API_KEY}")
    assert f"{synced}:{line}: personyze.api_key: environment variable TEST_API_KEY is not set" in (
        result.err
    )
    assert sandbox.requests == []


def test_an_unreadable_key_file_does_not_stop_status(cli, synced, sandbox, tmp_path):
    def key_file(doc: dict[str, Any]) -> None:
        del doc["personyze"]["api_key"]
        doc["personyze"]["api_key_file"] = str(tmp_path / "not-mounted-here")

    edit(synced, key_file)
    assert cli("status", "-c", synced).code == 0
    result = cli("once", "-c", synced)
    assert result.code == 2, result.text
    assert "personyze.api_key_file: cannot read" in result.err


def test_a_config_with_no_api_key_at_all_is_still_wrong_for_every_command(cli, synced):
    edit(synced, lambda doc: doc["personyze"].pop("api_key"))
    result = cli("status", "-c", synced)
    assert result.code == 2, result.text
    assert "personyze: missing required key 'api_key'" in result.err
