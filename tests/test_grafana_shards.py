"""The Grafana dashboard shows a sharded job's shards (issue 19, item 4), with only the
labels the daemon's series carry: every label a query matches on or groups by is one
that /metrics shows for that metric (or one Prometheus adds to each scrape)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sync.metrics import Metrics
from sync.model import Position
from tests.support import FakeClock

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "personyze-sync.json"
SCRAPE_LABELS = {"instance", "job"}  # Prometheus's own, on every series it scrapes


def exposed_labels() -> dict[str, set[str]]:
    """Each series name /metrics shows, with the labels it carries, for a sharded job
    and an unsharded one."""
    metrics = Metrics(wall=FakeClock(1_000_000.0), objects={"customers": "users"})
    for part in ("customers#0/2", "customers#1/2", "single"):
        metrics.rows_done(part, "sent", 1)
        metrics.checkpoint(part, Position(datetime(2026, 1, 1, tzinfo=UTC), 1))
    metrics.run_ended("customers", "success", 1.0)
    metrics.runs_skipped.labels("customers").inc()
    metrics.response(200, 0.1)
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def test_every_label_the_dashboard_uses_is_one_the_daemon_shows() -> None:
    exposed = exposed_labels()
    dashboard = json.loads(DASHBOARD.read_text())
    checked = 0
    for expr in exprs(dashboard):
        for name, matchers in re.findall(r"\b(personyze_sync_\w+)\{([^}]*)\}", expr):
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert used <= exposed[name] | SCRAPE_LABELS, (name, used, exposed[name])
            checked += 1
        for grouped in re.findall(r"\bby \(([^)]*)\)", expr):
            names = {g.strip() for g in grouped.split(",")}
            metric = re.search(r"\b(personyze_sync_\w+)", expr.split(f"by ({grouped})", 1)[1])
            assert metric is not None, expr
            assert names <= exposed[metric.group(1)] | SCRAPE_LABELS | {"le"}, (expr, names)
    assert checked > 10


def test_a_sharded_job_has_its_shards_shown() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "shard" in variables["shard"]["definition"]
    assert variables["shard"]["allValue"] == ".*"  # All: unsharded jobs too (no label)
    by_shard = {
        p["title"]: [t["expr"] for t in p["targets"]]
        for p in dashboard["panels"]
        if any("shard)" in t["expr"] or "shard, " in t["expr"] for t in p["targets"])
    }
    rows = [e for es in by_shard.values() for e in es if "personyze_sync_rows_total" in e]
    lags = [e for es in by_shard.values() for e in es if "personyze_sync_lag_seconds" in e]
    assert rows and lags, by_shard
    table = next(p for p in dashboard["panels"] if p["type"] == "table")
    assert any("instance" in t["expr"] for t in table["targets"])  # which replica runs it
    assert all(t["instant"] and t["format"] == "table" for t in table["targets"])
