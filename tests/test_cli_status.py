"""``status`` as a person reads it (issue 17, item 11): the lag as a duration, a
``detect: diff`` job's last comparison, no ``key None``, and the runs table readable at
80 columns when piped (columns wrap or go, words are never cut).

In-process through the console entry point (the ``cli`` fixture), and once as the
installed script with its output piped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sync.sandbox import SandboxServer
from tests.support import Outcome, run_script, status_json

HEADERS = ("started", "kind", "outcome", "read", "sent", "unchanged", "rejected")


def test_the_lag_is_a_duration(cli, setup, sandbox: SandboxServer):
    config = setup()
    assert cli("once", "-c", config).code == 0
    lag = status_json(cli, config)["lag_seconds"]
    shown = cli("status", "-c", config)
    assert shown.code == 0, shown.text
    days, hours = divmod(int(lag) // 3600, 24)  # the cursor is 2024-05-01 12:00:10
    # its two largest units, a zero second one left out (from 12:00 to 13:00 UTC: "946d")
    assert f", lag {days}d{f' {hours}h' if hours else ''}\n" in shown.out
    assert not re.search(r"lag \d+s", shown.out)


def test_a_diff_job_that_ran_says_when_it_last_compared(cli, setup, sandbox):
    config = setup(source={"cursor": None, "detect": "diff"})
    fresh = cli("status", "-c", config)
    assert fresh.code == 0, fresh.text
    assert "diff: never run" in fresh.out and "checkpoint" not in fresh.out
    assert cli("once", "-c", config).code == 0
    job = status_json(cli, config)
    (run,) = job["runs"]
    assert (job["detect"], job["last_compared"]) == ("diff", run["ended_at"])
    shown = cli("status", "-c", config)
    assert shown.code == 0, shown.text
    assert "checkpoint" not in shown.out and "never run" not in shown.out
    when = run["ended_at"].replace("T", " ").replace("Z", " UTC")
    assert f"diff: last compared {when}, 10 rows known" in shown.out


def test_a_checkpoint_without_a_key_says_no_key_none(cli, setup, sandbox):
    config = setup()
    assert cli("once", "-c", config).code == 0
    moved = cli("checkpoint", "reset", "-c", config, "customers", "--to", "2024-05-01 12:00:05")
    assert moved.code == 0, moved.text
    shown = cli("status", "-c", config)
    assert shown.code == 0, shown.text
    assert "None" not in shown.out
    assert "checkpoint: 2024-05-01 12:00:05, lag " in shown.out


LONG_ERROR_TABLE = "customers_archive_of_every_customer_we_ever_had"


def failed_and_succeeded(cli, setup) -> str:
    """A config whose job ran once, then failed with a long error naming a long word."""
    config = setup()
    assert cli("once", "-c", config).code == 0
    text = Path(config).read_text()
    Path(config).write_text(text.replace("table: customers", f"table: {LONG_ERROR_TABLE}"))
    assert cli("once", "-c", config).code == 1
    return config


def assert_readable(shown: Outcome, width: int, error: str) -> None:
    assert shown.code == 0, shown.text
    lines = shown.out.splitlines()
    too_long = [line for line in lines if len(line) > width]
    assert all(len(line.split()) == 1 for line in too_long), shown.out  # one word: kept whole
    words = set(shown.out.split())
    assert set(HEADERS) <= words, shown.out  # every column's name, whole
    assert LONG_ERROR_TABLE in error
    assert set(error.split()) <= words, shown.out  # every word of the error, whole
    assert any(re.search(r"\bonce\s+success\s+10\s+10\s+0\s+0\b", line) for line in lines)
    assert any(re.search(r"\bonce\s+failed\s+0\s+0\s+0\s+0\b", line) for line in lines)


@pytest.mark.parametrize("width", [80, 60])
def test_the_runs_table_fits_the_width_without_cutting_words(
    cli, setup, sandbox, monkeypatch, width
):
    config = failed_and_succeeded(cli, setup)
    error = status_json(cli, config)["runs"][0]["error"]
    monkeypatch.setenv("COLUMNS", str(width))  # a process of its own: rich reads it at start
    assert_readable(run_script("status", "-c", config), width, error)


def test_the_runs_table_piped_fits_80_columns(cli, setup, sandbox, monkeypatch):
    config = failed_and_succeeded(cli, setup)
    error = status_json(cli, config)["runs"][0]["error"]
    monkeypatch.delenv("COLUMNS", raising=False)  # piped, no terminal: rich's 80 columns
    assert_readable(run_script("status", "-c", config), 80, error)


def test_each_shard_says_which_it_is_and_what_its_last_run_did(cli, setup, sandbox, monkeypatch):
    """Issue 19, item 4 (a SQLite store here; three processes on PostgreSQL in
    tests/integration/test_shard_status.py)."""
    config = setup()
    doc = yaml.safe_load(Path(config).read_text())
    doc["jobs"][0]["shards"] = 3
    Path(config).write_text(yaml.safe_dump(doc))
    assert cli("once", "-c", config).code == 0
    shown = cli("status", "-c", config, "--json")
    assert shown.code == 0, shown.text
    docs = shown.json()
    assert [(d["job"], d["of_job"], d["shard"]) for d in docs] == [
        (f"customers#{i}/3", "customers", {"index": i, "of": 3}) for i in range(3)
    ]
    assert [d["rows_done"] for d in docs] == [3, 4, 3]  # ids 1..10 by id % 3
    assert all(d["running"] is False and d["rows_per_second"] > 0 for d in docs)
    monkeypatch.setenv("COLUMNS", "60")
    text = run_script("status", "-c", config)
    assert text.code == 0, text.text
    assert all(len(line) <= 60 for line in text.out.splitlines()), text.out
    flat = " ".join(text.out.split())
    for i, done in enumerate([3, 4, 3]):
        assert f"customers#{i}/3 (users, shard {i} of 3)" in flat
        assert re.search(
            rf"last run \(once, success\): {done} rows done \({done} sent, 0 unchanged, "
            rf"0 rejected\) in \d+s, [\d.]+ rows/s",
            flat,
        ), text.out


def test_an_unsharded_job_says_no_shard_and_its_last_run(cli, setup, sandbox):
    config = setup()
    assert cli("once", "-c", config).code == 0
    job = status_json(cli, config)
    assert (job["of_job"], job["shard"], job["running"], job["rows_done"]) == (
        "customers",
        None,
        False,
        10,
    )
    shown = cli("status", "-c", config)
    assert "customers (users)\n" in shown.out
    assert "last run (once, success): 10 rows done (10 sent, 0 unchanged, 0 rejected)" in (
        " ".join(shown.out.split())
    )
