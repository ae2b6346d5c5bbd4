"""A row's delivery history and a run's record, through the binary: ``history`` and ``runs``.

The store side (written with each commit, retention, shards) is in the contract suite,
tests/state/test_store_contract.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from sync.config import parse_config
from sync.errors import ConfigError
from tests.support import (
    BASE_TIME,
    Outcome,
    assert_no_secret,
    change_customers,
    customers,
    state_bytes,
)

SECRET = "sk_live_51HistoryNeverStored"  # a secret-looking value in an unmapped column
CHANGED = "Renamed-Value-9c2e"  # a mapped value: the history keeps its hash, never it


def test_history_names_the_changed_column_and_runs_names_the_rejected_row(
    cli: Callable[..., Outcome], setup: Callable[..., str], sqlite_url: str, tmp_path: Path
) -> None:
    config = setup()
    change_customers(sqlite_url, customers.c.id == 3, password_hash=SECRET)
    change_customers(sqlite_url, customers.c.id == 4, email="not-an-email")
    backfill = cli("backfill", "-c", config, "customers")
    assert backfill.code == 0, backfill.text
    later = BASE_TIME + timedelta(days=1)
    change_customers(sqlite_url, customers.c.id == 5, first_name=CHANGED, updated_at=later)
    once = cli("once", "-c", config)
    assert once.code == 0, once.text
    assert "sent 1" in once.flat

    shown = cli("history", "-c", config, "customers", "5", "--json", key=None)
    assert shown.code == 0, shown.text
    newest, first = json.loads(shown.out)
    assert (newest["operation"], newest["outcome"], newest["changed"]) == (
        "POST",
        "sent",
        ["first_name"],
    )
    assert (first["operation"], first["outcome"], first["changed"]) == ("POST", "sent", None)
    assert newest["user_id"] == first["user_id"] and isinstance(first["user_id"], int)
    assert newest["run_id"] > first["run_id"]
    assert newest["key"] == "5" and newest["at"].endswith("Z")
    assert "first_name" in newest["columns"] and "password_hash" not in newest["columns"]

    text = cli("history", "-c", config, "customers", "5", key=None)
    assert text.code == 0, text.text
    assert "customers key 5: 2 deliveries, newest first (the last 30 days are kept)" in text.out
    assert "changed: first_name" in text.out and "(no earlier delivery kept)" in text.out

    run = cli("runs", "-c", config, "customers", str(first["run_id"]), key=None)
    assert run.code == 0, run.text
    assert f"run {first['run_id']} of customers: backfill, success" in run.out
    assert "rows: read 10, sent 9, unchanged 0, rejected 1" in run.out
    assert "deliveries: rejected 1, sent 9" in run.out
    assert "rejected 4 (mapping): email 'not-an-email' is not a valid email address" in run.flat
    doc = json.loads(
        cli("runs", "-c", config, "customers", str(first["run_id"]), "--json", key=None).out
    )
    assert doc["deliveries"] == {"rejected": 1, "sent": 9} and doc["error"] is None
    assert [r["key"] for r in doc["rejected_rows"]] == ["4"]

    missing = cli("runs", "-c", config, "customers", "999", key=None)
    assert missing.code == 2 and "job customers has no run 999" in missing.flat
    nothing = cli("history", "-c", config, "customers", "no-such-key", key=None)
    assert nothing.code == 0 and "no delivery of key no-such-key is kept" in nothing.out

    stored = state_bytes(tmp_path)
    assert_no_secret(stored, "the state store", [SECRET, CHANGED])


def test_with_the_history_off_nothing_is_kept(
    cli: Callable[..., Outcome], setup: Callable[..., str]
) -> None:
    config = setup()
    doc = yaml.safe_load(Path(config).read_text())
    doc["state"]["history"] = {"enabled": False}
    Path(config).write_text(yaml.safe_dump(doc))
    assert cli("once", "-c", config).code == 0
    shown = cli("history", "-c", config, "customers", "1", "--json", key=None)
    assert shown.code == 0 and json.loads(shown.out) == []
    text = cli("history", "-c", config, "customers", "1", key=None)
    assert "the history is off: history.enabled is false" in text.out


def parsed(text: str, tmp_path: Path) -> ConfigError | None:
    try:
        parse_config(text, source="c.yaml", environ={}, base_dir=tmp_path)
    except ConfigError as exc:
        return exc
    return None


CONFIG = """\
personyze: {{api_key: k}}
state:
  url: sqlite:///s.db
  history: {state}
jobs:
  - name: customers
    source: {{url: "sqlite:///x.db", table: t, key: id, cursor: u}}
    mapping: {{id: internal_id}}
    history: {job}
"""


@pytest.mark.parametrize(
    ("state", "job", "problem"),
    [
        ("{keep_for: 7d}", "{keep_per_row: 3}", None),
        ("{enabled: false}", "null", None),
        (
            "{keep_for: 7d, keep_per_row: 3}",
            "null",
            "c.yaml:4: state.history: give one of keep_for (a duration) or keep_per_row",
        ),
        ("{keep_for: soon}", "null", "c.yaml:4: state.history.keep_for: expected a duration"),
        ("{keep_for: 0s}", "null", "c.yaml:4: state.history.keep_for: expected a duration longer"),
        ("{}", "{keep_per_row: 0}", "c.yaml:9: jobs[0].history.keep_per_row: expected a whole"),
        ("{keep: 3}", "null", "c.yaml:4: state.history.keep: "),
    ],
)
def test_the_retention_is_checked_at_its_line(
    state: str, job: str, problem: str | None, tmp_path: Path
) -> None:
    found = parsed(CONFIG.format(state=state, job=job), tmp_path)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in str(found), str(found)
