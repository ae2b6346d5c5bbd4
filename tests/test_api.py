"""The Python API, used only by its public names (``from sync import ...``), against a
real SQLite source, state store and the sandbox over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync import ConfigError, JobResult, Sync, SyncError, SyncResult, load_config
from sync.sandbox import SandboxServer
from tests.support import API_KEY, config_doc, execute, make_customers, write_config

ENV = {"TEST_API_KEY": API_KEY}


@pytest.fixture
def doc(sqlite_url: str, state_url: str, sandbox: SandboxServer) -> dict[str, Any]:
    make_customers(sqlite_url, range(1, 121))
    make_customers(sqlite_url, [121], email="not-an-email")  # Personyze refuses it
    return config_doc(source_url=sqlite_url, api_url=sandbox.url, state_url=state_url)


def test_a_config_loads_from_a_dict_or_a_file_and_is_checked_the_same(
    doc: dict[str, Any], tmp_path: Path
) -> None:
    from_dict = load_config(doc, environ=ENV)
    from_file = load_config(write_config(tmp_path / "sync.yaml", doc), environ=ENV)
    assert from_dict.jobs[0].name == from_file.jobs[0].name == "customers"
    doc["jobs"][0]["source"]["batch_size"] = "many"
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(doc, environ=ENV)


def test_once_gives_typed_counts_rejected_rows_checkpoint_and_run_id(
    doc: dict[str, Any], sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_API_KEY", API_KEY)
    with Sync(doc) as sync:
        dry = sync.dry_run()
        assert dry.ok and sandbox.users() == []  # a dry run sends nothing
        result = sync.once()
        again = sync.once("customers")
    assert isinstance(result, SyncResult) and result.ok
    first = result["customers"]
    assert isinstance(first, JobResult)
    assert (first.outcome, first.read, first.sent, first.rejected) == ("success", 121, 120, 1)
    assert [(r.key, "email" in r.reason.lower()) for r in first.rejected_rows] == [("121", True)]
    assert first.checkpoint is not None and first.checkpoint.key == 121
    assert first.run_ids["customers"] >= 1 and first.error is None
    assert len(sandbox.users()) == 120
    assert again["customers"].sent == 0 and again["customers"].read <= 1  # the cursor's tie
    assert again["customers"].run_ids["customers"] > first.run_ids["customers"]


def test_backfill_full_sends_only_what_changed_and_a_failure_is_raised_on_request(
    doc: dict[str, Any], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_API_KEY", API_KEY)
    with Sync(doc) as sync:
        assert sync.backfill()["customers"].sent == 120
        full = sync.backfill("customers", full=True)["customers"]
        # the refused row too: the same payload Personyze refused is not resent
        assert (full.read, full.sent, full.unchanged) == (121, 0, 121)
        execute(sqlite_url, text("DROP TABLE customers"))  # the source breaks
        broken = sync.once()
    assert not broken.ok
    failed = broken["customers"]
    assert failed.outcome == "failed" and isinstance(failed.error, SyncError)
    assert "customers" in str(failed.error)
    with pytest.raises(SyncError):
        broken.raise_for_failure()
    with pytest.raises(ConfigError, match="since and full"):
        Sync(doc).backfill(since="2024-01-01", full=True)
