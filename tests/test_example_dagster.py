"""examples/dagster_assets.py end to end: a Dagster asset materialized in process, which
runs a personyze-sync job against SQLite and the sandbox over HTTP, and fails the
Dagster run when the sync fails."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import dagster as dg
import pytest
from sqlalchemy import text

from sync.sandbox import SandboxServer
from tests.support import API_KEY, config_doc, execute, make_customers, write_config

EXAMPLE = Path(__file__).parents[1] / "examples" / "dagster_assets.py"


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("PERSONYZE_SYNC_CONFIG", str(tmp_path / "sync.yaml"))
    monkeypatch.setenv("TEST_API_KEY", API_KEY)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    spec = importlib.util.spec_from_file_location("dagster_assets", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_asset_runs_the_job_and_fails_the_dagster_run_when_the_sync_fails(
    example: ModuleType, tmp_path: Path, sqlite_url: str, state_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 51))
    doc = config_doc(source_url=sqlite_url, api_url=sandbox.url, state_url=state_url)
    write_config(tmp_path / "sync.yaml", doc)
    assert [a.key.to_user_string() for a in example.defs.assets] == ["personyze_customers"]

    done = dg.materialize([example.customers])
    assert done.success
    (materialized,) = done.asset_materializations_for_node("personyze_customers")
    metadata = {k: v.value for k, v in materialized.metadata.items()}
    assert (metadata["read"], metadata["sent"], metadata["rejected"]) == (50, 50, 0)
    assert len(sandbox.users()) == 50

    execute(sqlite_url, text("DROP TABLE customers"))  # the source breaks
    failed = dg.materialize([example.customers], raise_on_error=False)
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert failure.step_failure_data.error is not None
    assert "customers" in failure.step_failure_data.error.message
    assert API_KEY not in str([e.message for e in failed.all_events])
