"""The daemon's Prometheus metrics, in a registry of its own (no module globals).

Names follow DESIGN.md: rows per job and outcome, requests by status, request
latency, run duration and outcome, each job's last success, skipped runs, and lag
(now minus the checkpoint's cursor time, computed when scraped so it grows while
nothing moves). Rows, runs, run durations and last successes also carry ``object``:
what the job feeds (users, products or audience; ``objects`` names each job's).

Rows and lag, whose unit is a part, carry ``shard`` too: ``job="customers",
shard="0/3"`` for the part the state store knows as ``customers#0/3``. A job that is
not sharded has no ``shard`` label (to PromQL, ``shard=""``): its series are the lines
they were. Runs are the daemon's runs of a whole job: they carry no shard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from sync.model import Position


def split_part(name: str) -> tuple[str, str]:
    """A part's name as (job, shard): ``customers#0/3`` -> ``("customers", "0/3")``,
    ``customers`` -> ``("customers", "")``."""
    job, mark, shard = name.rpartition("#")
    if mark and "/" in shard:
        return job, shard
    return name, ""


LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400)


def _labels(part: str, **more: str) -> dict[str, str]:
    """A part's labels: ``job`` (and ``more``), then ``shard`` only for a shard."""
    job, shard = split_part(part)
    return {"job": job, **more} | ({"shard": shard} if shard else {})


class _Rows(Collector):
    """personyze_sync_rows_total{job,object,outcome[,shard]}: a counter whose series of
    a shard carry ``shard`` and those of an unsharded job do not (a plain Counter has
    one set of label names)."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._counts: dict[tuple[str, str, str], tuple[float, float]] = {}  # value, created
        self._lock = threading.Lock()

    def inc(self, part: str, feeds: str, outcome: str, count: int) -> None:
        with self._lock:
            value, created = self._counts.get((part, feeds, outcome), (0.0, self._wall()))
            self._counts[(part, feeds, outcome)] = (value + count, created)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("personyze_sync_rows", "Rows by job (and shard) and outcome.")
        with self._lock:
            for (part, feeds, outcome), (value, created) in self._counts.items():
                labels = _labels(part, object=feeds, outcome=outcome)
                family.samples.append(Sample("personyze_sync_rows_total", labels, value))
                family.samples.append(Sample("personyze_sync_rows_created", labels, created))
        yield family


class _Lag(Collector):
    """personyze_sync_lag_seconds{job[,shard]}: now minus each part's checkpoint cursor time."""

    def __init__(self, wall: Callable[[], float]) -> None:
        self._wall = wall
        self._cursor_times: dict[str, float] = {}
        self._lock = threading.Lock()

    def set(self, job: str, cursor_time: float) -> None:
        with self._lock:
            self._cursor_times[job] = cursor_time

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "personyze_sync_lag_seconds",
            "Now minus the time of the checkpoint cursor of the job (or of its shard).",
        )
        now = self._wall()
        with self._lock:
            for part, cursor_time in sorted(self._cursor_times.items()):
                lag = max(0.0, now - cursor_time)
                family.samples.append(Sample("personyze_sync_lag_seconds", _labels(part), lag))
        yield family


class Metrics:
    """Counters and gauges the daemon updates; ``render()`` is the /metrics body."""

    def __init__(
        self, wall: Callable[[], float] = time.time, objects: Mapping[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self._wall = wall
        self.objects = dict(objects or {})  # job name -> its object (default: users)
        r = self.registry
        self.rows = _Rows(wall)
        r.register(self.rows)
        self.requests = Counter(
            "personyze_sync_requests", "Personyze API requests by status.", ["status"], registry=r
        )
        self.request_seconds = Histogram(
            "personyze_sync_request_seconds",
            "Personyze API request latency.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.run_seconds = Histogram(
            "personyze_sync_run_seconds",
            "Run duration by job.",
            ["job", "object"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.runs = Counter(
            "personyze_sync_runs",
            "Runs by job and outcome.",
            ["job", "object", "outcome"],
            registry=r,
        )
        self.runs_skipped = Counter(
            "personyze_sync_runs_skipped",
            "Runs skipped because the job's last run was still going.",
            ["job"],
            registry=r,
        )
        self.last_success = Gauge(
            "personyze_sync_last_success_timestamp_seconds",
            "When each job last finished a run successfully.",
            ["job", "object"],
            registry=r,
        )
        self._lag = _Lag(wall)
        r.register(self._lag)

    # -- RunObserver ----------------------------------------------------------

    def rows_done(self, job: str, outcome: str, count: int) -> None:
        """``job``: the part's name (``customers`` or ``customers#0/3``)."""
        feeds = self.object_of(job)
        self.rows.inc(job, feeds, outcome, count)
        if outcome == "unchanged":  # the label's old name, counted too for one version
            self.rows.inc(job, feeds, "skipped", count)

    def object_of(self, job: str) -> str:
        """What a job (or a shard of one: ``customers#0/2``) feeds."""
        return self.objects.get(split_part(job)[0], "users")

    def checkpoint(self, job: str, position: Position) -> None:
        cursor = position.cursor
        if isinstance(cursor, datetime):
            aware = cursor if cursor.tzinfo is not None else cursor.replace(tzinfo=UTC)
            self._lag.set(job, aware.timestamp())

    # -- the client's on_response -----------------------------------------------

    def response(self, status: int | None, seconds: float) -> None:
        self.requests.labels("error" if status is None else str(status)).inc()
        self.request_seconds.observe(seconds)

    # -- runs -------------------------------------------------------------------

    def run_ended(self, job: str, outcome: str, seconds: float) -> None:
        feeds = self.object_of(job)
        self.runs.labels(job, feeds, outcome).inc()
        self.run_seconds.labels(job, feeds).observe(seconds)
        if outcome == "success":
            self.last_success.labels(job, feeds).set(self._wall())

    def render(self) -> bytes:
        return generate_latest(self.registry)
