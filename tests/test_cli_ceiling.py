"""The summary says when personyze.requests_per_second is what held the run back.

Decided from the time requests waited for the ceiling (sync/load/pacing.py), not from
the rate: a run at a ceiling it never waited for says nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sync.sandbox import SandboxServer
from tests.support import Outcome, config_doc, make_customers, write_config


@pytest.mark.parametrize(("ceiling", "said"), [(20, True), (100_000, False), (None, False)])
def test_once_says_when_the_ceiling_held_it_back(
    cli: Callable[..., Outcome],
    tmp_path: Path,
    sqlite_url: str,
    sandbox: SandboxServer,
    ceiling: int | None,
    said: bool,
) -> None:
    make_customers(sqlite_url, range(1, 41))  # 2 s at 20/s
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        personyze={"requests_per_second": ceiling, "concurrency": 8},
    )
    config = write_config(tmp_path / "sync.yaml", doc)
    ran = cli("once", "-c", str(config))
    assert ran.code == 0, ran.text
    lines = ran.out.splitlines()
    assert lines[0].startswith("customers: read 40, sent 40"), ran.text
    note = [line for line in lines if "ceiling" in line]
    if said:
        assert len(note) == 1 and note[0].startswith(
            "at the 20/s ceiling: personyze.requests_per_second (requests waited for it "
        ), ran.text
        assert lines[-1] == note[0]  # after the summary
    else:
        assert note == [], ran.text
