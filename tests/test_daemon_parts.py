"""The daemon's pure parts, table-driven: backoff, triggers, job health, metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sync.config import Schedule
from sync.daemon import JobHealth, backoff, trigger_for
from sync.extract.query import Position
from sync.metrics import Metrics
from tests.support import FakeClock

MINUTE = timedelta(minutes=1)


@pytest.mark.parametrize(
    ("every", "failures", "ceiling", "extra"),
    [
        (60, 1, 15 * MINUTE, 0),  # the first failure waits for the next regular run
        (60, 2, 15 * MINUTE, 60),  # then each one doubles the wait
        (60, 3, 15 * MINUTE, 180),
        (60, 5, 15 * MINUTE, 900 - 60),  # up to the ceiling
        (60, 30, 15 * MINUTE, 900 - 60),
        (3600, 4, 15 * MINUTE, 0),  # a schedule slower than the ceiling is never delayed
    ],
)
def test_backoff_after_repeated_failures(
    every: int, failures: int, ceiling: timedelta, extra: float
) -> None:
    assert backoff(Schedule(every=timedelta(seconds=every)), failures, ceiling) == extra


def test_backoff_for_a_cron_schedule_counts_from_a_minute() -> None:
    assert backoff(Schedule(cron="*/5 * * * *"), 3, 15 * MINUTE) == 180


def test_triggers_follow_the_schedule() -> None:
    start = datetime(2026, 1, 1, 12, 0, 7, tzinfo=UTC)
    interval = trigger_for(Schedule(every=timedelta(seconds=90)))
    assert interval.get_next_fire_time(start, start + timedelta(seconds=1)) == start + timedelta(
        seconds=90
    )
    cron = trigger_for(Schedule(cron="*/5 * * * *"))
    assert cron.get_next_fire_time(None, start) == datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
    jittered = trigger_for(Schedule(every=timedelta(seconds=60), jitter=timedelta(seconds=10)))
    fires = {jittered.get_next_fire_time(start, start) for _ in range(20)}
    assert all(start + timedelta(seconds=60) <= f <= start + timedelta(seconds=70) for f in fires)


@pytest.mark.parametrize(
    ("health", "now", "state"),
    [
        (JobHealth(), 100.0, "waiting"),
        (JobHealth(last_success=50.0), 100.0, "ok"),
        (JobHealth(running_since=95.0, last_success=50.0), 100.0, "running"),
        (JobHealth(running_since=10.0), 100.0, "stuck"),
        (JobHealth(failures=2, last_error="boom"), 100.0, "failing"),
        (JobHealth(running_since=99.0, failures=1), 100.0, "failing"),
    ],
)
def test_job_health_states(health: JobHealth, now: float, state: str) -> None:
    assert health.state(now, stuck_after=60.0) == state


def test_metrics_render_in_prometheus_names_and_lag_grows_between_scrapes() -> None:
    wall = FakeClock(1_000_000.0)
    metrics = Metrics(wall=wall, objects={"vip": "audience"})
    metrics.rows_done("customers", "sent", 5)
    metrics.rows_done("customers", "rejected", 1)
    metrics.rows_done("customers", "unchanged", 7)
    metrics.rows_done("vip", "sent", 3)
    metrics.run_ended("vip", "success", 1.0)
    metrics.response(200, 0.02)
    metrics.response(None, 1.5)
    metrics.run_ended("customers", "success", 2.0)
    metrics.run_ended("customers", "failed", 1.0)
    metrics.runs_skipped.labels("customers").inc()
    metrics.checkpoint("customers", Position(datetime.fromtimestamp(999_000, UTC), 1))
    metrics.checkpoint("numbers", Position(42, 1))  # not a time: no lag
    text = metrics.render().decode()
    for line in (
        'personyze_sync_rows_total{job="customers",object="users",outcome="sent"} 5.0',
        'personyze_sync_rows_total{job="customers",object="users",outcome="rejected"} 1.0',
        'personyze_sync_rows_total{job="customers",object="users",outcome="unchanged"} 7.0',
        # the old name
        'personyze_sync_rows_total{job="customers",object="users",outcome="skipped"} 7.0',
        'personyze_sync_rows_total{job="vip",object="audience",outcome="sent"} 3.0',
        'personyze_sync_runs_total{job="vip",object="audience",outcome="success"} 1.0',
        'personyze_sync_requests_total{status="200"} 1.0',
        'personyze_sync_requests_total{status="error"} 1.0',
        "personyze_sync_request_seconds_count 2.0",
        'personyze_sync_run_seconds_count{job="customers",object="users"} 2.0',
        'personyze_sync_runs_total{job="customers",object="users",outcome="failed"} 1.0',
        'personyze_sync_runs_skipped_total{job="customers"} 1.0',
        'personyze_sync_last_success_timestamp_seconds{job="customers",object="users"} 1e+06',
        'personyze_sync_lag_seconds{job="customers"} 1000.0',
    ):
        assert line in text.splitlines(), line
    assert 'job="numbers"' not in text
    wall.advance(60)
    assert 'personyze_sync_lag_seconds{job="customers"} 1060.0' in metrics.render().decode()
