"""-v and -vv through the real CLI: what a run does (run started, each retry and its
reason, the checkpoint moved; at -vv each batch read and each checkpoint commit)."""

from __future__ import annotations

import json
import re
from typing import Any

from sync.sandbox import Faults
from tests.support import Outcome


def events(result: Outcome) -> list[dict[str, Any]]:
    """The JSON log lines on stderr."""
    return [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]


def names(result: Outcome) -> list[str]:
    return [e["event"] for e in events(result)]


def test_verbose_says_what_a_run_does(cli, setup, sandbox):
    config = setup(personyze={"max_attempts": 8})
    sandbox.faults = Faults(error_rate=0.3, writes_only=True, seed=3)
    result = cli("once", "-c", config, "-v", "--log-format", "json")
    assert result.code == 0, result.text
    said = events(result)
    started = next(e for e in said if e["event"] == "run started")
    assert (started["job"], started["kind"], started["checkpoint"]) == ("customers", "once", None)
    retried = [e for e in said if e["event"] == "request failed; retrying"]
    assert retried and all(re.search(r"\b50[03]\b", e["error"]) for e in retried), retried
    moved = next(e for e in said if e["event"] == "checkpoint moved")
    assert moved["job"] == "customers"
    assert (moved["from"], moved["to"]) == (None, {"cursor": "2024-05-01 12:00:10", "key": 10})
    assert "run finished" in names(result)
    assert "batch read" not in names(result)  # that is -vv's


def test_very_verbose_adds_each_batch_and_each_checkpoint_commit(cli, setup, sandbox):
    config = setup(rows=range(1, 121))  # batches of 50: three
    result = cli("once", "-c", config, "-vv", "--log-format", "json")
    assert result.code == 0, result.text
    batches = [e for e in events(result) if e["event"] == "batch read"]
    assert [b["rows"] for b in batches] == [50, 50, 20]
    assert all(b["job"] == "customers" for b in batches)
    commits = [e["to"] for e in events(result) if e["event"] == "checkpoint committed"]
    assert commits and commits == sorted(commits, key=lambda c: (c["cursor"], c["key"]))
    (moved,) = [e for e in events(result) if e["event"] == "checkpoint moved"]
    assert moved["to"] == {"cursor": "2024-05-01 12:01:59", "key": 119}  # the last in order


def test_verbosity_adds_up_across_both_places(cli, setup, sandbox):
    config = setup(rows=range(1, 61))
    result = cli("-v", "once", "-c", config, "-v", "--log-format", "json")
    assert "batch read" in names(result)  # -v twice: -vv
