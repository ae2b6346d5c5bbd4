"""What the commands say while they run: each failure once, the global options
wherever they are written, the time zone in text logs, --quiet for cron (what -v and
-vv say of a run: tests/test_cli_verbose.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support import Outcome


def events(result: Outcome) -> list[dict[str, Any]]:
    """The JSON log lines on stderr (other lines, the command's own, are left out)."""
    return [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]


def names(result: Outcome) -> list[str]:
    return [e["event"] for e in events(result)]


# -- each failure once ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [[], ["-v"], ["-vv"], ["--log-format", "text"], ["--log-format", "json"]],
    ids=["default", "-v", "-vv", "text", "json"],
)
def test_a_failed_job_is_printed_once(cli, setup, sandbox, options):
    config = setup(source={"table": "gone_table"})
    result = cli("once", "-c", config, *options)
    assert result.code == 1, result.text
    assert result.text.count("gone_table") == 1, result.text
    assert "job customers failed" in result.err


def test_a_stop_is_not_logged_as_well(cli, setup, sandbox):
    """Stopped runs are the command's to report too (see test_cli_exits for the signal)."""
    config = setup()
    result = cli("once", "-c", config, "-vv", "--log-format", "json")
    assert result.code == 0, result.text
    assert "run failed" not in names(result) and "run stopped" not in names(result)


# -- the global options after the subcommand, --log-format on every command ---------------


@pytest.mark.parametrize(
    "command",
    [
        ["once"],
        ["backfill", "customers"],
        ["validate"],
        ["status"],
        ["rejected", "list"],
        ["rejected", "retry"],
        ["checkpoint", "reset", "customers"],
        ["verify", "customers"],
    ],
    ids=lambda c: " ".join(c),
)
def test_log_options_after_the_subcommand(cli, setup, sandbox, command):
    config = setup()
    result = cli(*command, "-c", config, "-v", "--log-format", "json")
    assert result.code == 0, result.text
    assert all(e["level"] in ("debug", "info", "warning", "error") for e in events(result))
    before = cli("-v", "--log-format", "text", *command, "-c", config)
    assert before.code == 0, before.text


def test_text_logs_name_their_time_zone(cli, setup, sandbox):
    config = setup()
    result = cli("once", "-c", config, "-v", "--log-format", "text")
    assert result.code == 0, result.text
    line = next(x for x in result.err.splitlines() if "run finished" in x)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC INFO ", line), line


# -- --quiet: nothing on success, the failure on failure ----------------------------------


@pytest.mark.parametrize("command", [["once"], ["backfill", "customers"], ["rejected", "retry"]])
def test_quiet_prints_nothing_on_success(cli, setup, sandbox, command):
    config = setup()
    result = cli(*command, "-c", config, "--quiet")
    assert result.code == 0, result.text
    assert (result.out, result.err) == ("", "")
    assert len(sandbox.users()) == (0 if command[0] == "rejected" else 10)


def test_quiet_still_reports_a_failure_once(cli, setup, sandbox):
    config = setup(source={"table": "gone_table"})
    result = cli("once", "-c", config, "-q")
    assert result.code == 1, result.text
    assert result.out == ""
    assert result.err.count("gone_table") == 1


def test_quiet_and_verbose_exclude_each_other(cli, setup, sandbox):
    config = setup()
    result = cli("once", "-c", config, "-q", "-v")
    assert result.code == 2, result.text
    assert "--quiet and --verbose exclude each other" in result.err
