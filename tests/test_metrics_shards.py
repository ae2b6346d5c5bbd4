"""The daemon's series of a sharded job carry ``shard`` (issue 19, item 4); those of a job
that is not sharded are the lines they were, so a scrape that matches them exactly still
does. A daemon's real sharded run: tests/integration/test_shard_status.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync.metrics import Metrics, split_part
from sync.model import Position
from tests.support import FakeClock


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("customers", ("customers", "")),
        ("customers#0/3", ("customers", "0/3")),
        ("customers#12/16", ("customers", "12/16")),
        ("odd#name#1/2", ("odd#name", "1/2")),
        ("odd#name", ("odd#name", "")),
    ],
)
def test_a_part_name_splits_into_job_and_shard(name: str, parts: tuple[str, str]) -> None:
    assert split_part(name) == parts


def test_a_shard_has_its_own_label_and_an_unsharded_job_none() -> None:
    wall = FakeClock(1_000_000.0)
    metrics = Metrics(wall=wall, objects={"customers": "users", "catalog": "products"})
    metrics.rows_done("catalog", "sent", 2)
    for i, sent in enumerate((5, 6, 7)):
        metrics.rows_done(f"customers#{i}/3", "sent", sent)
        metrics.rows_done(f"customers#{i}/3", "unchanged", 1)
        metrics.checkpoint(
            f"customers#{i}/3", Position(datetime.fromtimestamp(999_000 + i, UTC), 1)
        )
    metrics.checkpoint("catalog", Position(datetime.fromtimestamp(999_990, UTC), 1))
    metrics.run_ended("customers", "success", 2.0)
    text = metrics.render().decode()
    lines = text.splitlines()
    for line in (
        'personyze_sync_rows_total{job="catalog",object="products",outcome="sent"} 2.0',
        'personyze_sync_rows_total{job="customers",object="users",outcome="sent",shard="0/3"} 5.0',
        'personyze_sync_rows_total{job="customers",object="users",outcome="sent",shard="2/3"} 7.0',
        'personyze_sync_rows_total{job="customers",object="users",outcome="unchanged",shard="1/3"}'
        " 1.0",
        'personyze_sync_rows_total{job="customers",object="users",outcome="skipped",shard="1/3"}'
        " 1.0",
        'personyze_sync_lag_seconds{job="catalog"} 10.0',
        'personyze_sync_lag_seconds{job="customers",shard="0/3"} 1000.0',
        'personyze_sync_lag_seconds{job="customers",shard="2/3"} 998.0',
        # a run is the daemon's run of the whole job
        'personyze_sync_runs_total{job="customers",object="users",outcome="success"} 1.0',
    ):
        assert line in lines, line
    assert "customers#" not in text
    wall.advance(60)
    assert 'personyze_sync_lag_seconds{job="customers",shard="1/3"} 1059.0' in (
        metrics.render().decode().splitlines()
    )


def test_the_body_parses_as_prometheus_text_with_one_family_a_name() -> None:
    metrics = Metrics(wall=FakeClock(1_000_000.0))
    metrics.rows_done("customers", "sent", 1)
    metrics.rows_done("customers#0/2", "sent", 2)
    metrics.rows_done("customers#1/2", "rejected", 3)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    rows = families["personyze_sync_rows"]
    assert rows.type == "counter"
    totals = {
        (s.labels["job"], s.labels.get("shard"), s.labels["outcome"]): s.value
        for s in rows.samples
        if s.name == "personyze_sync_rows_total"
    }
    assert totals == {
        ("customers", None, "sent"): 1.0,
        ("customers", "0/2", "sent"): 2.0,
        ("customers", "1/2", "rejected"): 3.0,
    }
    created = families["personyze_sync_rows_created"].samples  # as a Counter's are
    assert [s.value for s in created] == [1_000_000.0] * 3
