"""What a run's summary counts, through the real CLI: every row read ends in one count,
and a rejected row is named with its reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sync.sandbox import SandboxServer
from tests.support import (
    DEFAULT_MAPPING,
    Outcome,
    change_customers,
    config_doc,
    customers,
    make_customers,
    write_config,
)


def config(tmp_path: Path, sqlite_url: str, sandbox: SandboxServer, **job: Any) -> str:
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"mapping": dict(DEFAULT_MAPPING), **job},
    )
    return str(write_config(tmp_path / "sync.yaml", doc))


def test_a_dry_run_does_not_count_a_row_deleted_before_it_was_synced_as_unchanged(
    cli: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 6))
    change_customers(sqlite_url, customers.c.id == 5, password_hash="gone")
    path = config(tmp_path, sqlite_url, sandbox, delete_when="password_hash = 'gone'")
    result = cli("once", "-c", path, "--dry-run", "--json")
    assert result.code == 0, result.text
    counts = result.json()["jobs"]["customers"]
    assert (counts["read"], counts["unchanged"], counts["deleted_before_sync"]) == (5, 0, 1)
    assert len(counts["would_send"]) == 4
    text = cli("once", "-c", path, "--dry-run")
    assert "unchanged 0" in text.out
    assert "deleted at the source before it was ever synced 1" in text.out


def test_a_rejected_row_is_named_with_its_reason_and_a_retry_counts_as_read(
    cli: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 6))
    change_customers(sqlite_url, customers.c.id == 3, email="not-an-email")
    path = config(tmp_path, sqlite_url, sandbox)
    first = cli("once", "-c", path, "--json")
    assert first.code == 0, first.text
    counts = first.json()["jobs"]["customers"]
    assert (counts["read"], counts["sent"], counts["rejected"]) == (5, 4, 1)
    ((rejected),) = counts["rejected_rows"]
    assert rejected["key"] == "3" and "email" in rejected["reason"]

    change_customers(sqlite_url, customers.c.id == 3, email="fixed@example.com")
    second = cli("once", "-c", path)
    assert second.code == 0, second.text
    # row 3 retried (read again by key) and sent; row 5, at the checkpoint's own cursor
    # value, read again and unchanged: two rows read, each in one count
    assert "read 2, sent 1, unchanged 1, rejected 0" in second.out, second.out


def test_the_text_summary_names_each_rejected_row(
    cli: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_customers(sqlite_url, range(1, 4))
    change_customers(sqlite_url, customers.c.id == 2, email="not-an-email")
    result = cli("once", "-c", str(config(tmp_path, sqlite_url, sandbox)))
    assert result.code == 0, result.text
    assert "rejected 1" in result.out
    (line,) = [line for line in result.out.splitlines() if line.strip().startswith("rejected 2:")]
    assert "email" in line
