"""``personyze-sync run``: every job on its schedule until a signal says stop.

APScheduler fires the runs (never two of one job at once: a run still going when the
next is due is skipped, logged and counted). A failing job does not stop the others,
and retries less often the longer it keeps failing. SIGTERM or SIGINT stops
scheduling, lets the batch in flight finish within the grace period (its checkpoint
is saved) and exits 0; a second signal exits at once, losing nothing by the
checkpoint rule. SIGHUP reloads the config if it is valid and keeps the old one if not.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from sync.alerts import Alerter
from sync.config.jobs import DEFAULT_SCHEDULE_EVERY, JobSettings, Schedule
from sync.config.load import Config, load_config
from sync.errors import ConfigError, StateError, Stopped, SyncError
from sync.health import HealthServer
from sync.logs import secrets_of, set_secrets
from sync.metrics import Metrics
from sync.model import RunOptions
from sync.run import run_job
from sync.signals import stop_on_signals
from sync.wiring import Wiring

log = logging.getLogger(__name__)


@dataclass
class JobHealth:
    """What the daemon knows of one job between runs (for /readyz and backoff)."""

    running_since: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    failures: int = 0  # consecutive
    retry_after: float = 0.0

    def state(self, now: float, stuck_after: float) -> str:
        if self.running_since is not None and now - self.running_since > stuck_after:
            return "stuck"
        if self.failures:
            return "failing"
        if self.running_since is not None:
            return "running"
        return "ok" if self.last_success is not None else "waiting"


def schedule_of(job: JobSettings) -> Schedule:
    return job.schedule or Schedule(every=DEFAULT_SCHEDULE_EVERY)


def trigger_for(schedule: Schedule) -> Any:
    jitter = int(schedule.jitter.total_seconds()) if schedule.jitter else None
    if schedule.cron is not None:
        trigger = CronTrigger.from_crontab(schedule.cron, timezone=UTC)
        trigger.jitter = jitter
        return trigger
    assert schedule.every is not None
    return IntervalTrigger(seconds=schedule.every.total_seconds(), jitter=jitter, timezone=UTC)


def backoff(schedule: Schedule, failures: int, ceiling: timedelta) -> float:
    """Seconds beyond the normal schedule before a job that keeps failing runs again."""
    base: float = schedule.every.total_seconds() if schedule.every else 60.0
    return max(0.0, min(base * 2.0 ** (failures - 1), ceiling.total_seconds()) - base)


class Daemon:
    """The long-lived process: scheduler, health server, signals, reloads."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        *,
        http_port: int | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.wall = wall
        self.metrics = Metrics(wall, {job.name: job.object for job in config.jobs})
        self.app = self._build_app(config)
        self.alerter = Alerter(config.alerts)
        self._retired: list[Wiring] = []
        self._health: dict[str, JobHealth] = {job.name: JobHealth() for job in config.jobs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(4, len(config.jobs)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self.scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES)
        port = config.daemon.http_port if http_port is None else http_port
        self.health = HealthServer(
            config.daemon.http_host, port, ready=self.readiness, metrics=self.metrics.render
        )

    def _build_app(self, config: Config) -> Wiring:
        return Wiring(
            config,
            observer=self.metrics,
            on_response=self.metrics.response,
            config_path=self.config_path,
        )

    # -- the process ---------------------------------------------------------------

    def serve(self) -> int:
        """Run until stopped; the exit code."""
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        with stop_on_signals(self._on_stop_signal, at_once=_exiting_at_once):
            self.health.start()
            self._seed_lag()
            self._schedule(self.config)
            self.scheduler.start()
            log.info(
                "daemon started",
                extra={
                    "jobs": [j.name for j in self.config.jobs],
                    "http_port": self.health.port,
                    "pid": os.getpid(),
                },
            )
            while not self._stop.wait(0.2):
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
            return self._shutdown()

    def _on_stop_signal(self, name: str) -> None:
        log.info(
            "stopping: no new runs; the batches in flight finish",
            extra={
                "signal": name,
                "grace_seconds": self.config.daemon.grace_period.total_seconds(),
            },
        )
        for app in (self.app, *self._retired):
            app.stopping.set()
        self._stop.set()

    def _shutdown(self) -> int:
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + self.config.daemon.grace_period.total_seconds()
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.05)
        still = self._running()
        if still:
            log.warning(
                "grace period over with runs still going; exiting (their checkpoints "
                "stand before any unacknowledged row)",
                extra={"jobs": still},
            )
            logging.shutdown()
            os._exit(0)
        self.health.stop()
        self.alerter.close()
        for app in (self.app, *self._retired):
            app.close()
        log.info("daemon stopped")
        return 0

    def _seed_lag(self) -> None:
        """Lag from the stored checkpoints, before any run has moved them."""
        try:
            for job in self.config.jobs:
                position = self.app.store.part(job.name).checkpoint()
                if position is not None:
                    self.metrics.checkpoint(job.name, position)
        except StateError as exc:
            log.error("state store unreachable at start-up", extra={"error": str(exc)})

    def _running(self) -> list[str]:
        with self._lock:
            return [name for name, h in self._health.items() if h.running_since is not None]

    # -- scheduling ------------------------------------------------------------------

    def _schedule(self, config: Config) -> None:
        self.scheduler.remove_all_jobs()
        now = datetime.now(UTC)
        self.metrics.objects = {job.name: job.object for job in config.jobs}
        for job in config.jobs:
            schedule = schedule_of(job)
            extra = {"next_run_time": now} if schedule.run_at_start else {}
            self.scheduler.add_job(
                self._tick,
                trigger_for(schedule),
                args=[job.name],
                id=job.name,
                name=job.name,
                replace_existing=True,
                **extra,
            )

    def _skipped(self, event: JobSubmissionEvent) -> None:
        self.metrics.runs_skipped.labels(event.job_id).inc()
        log.warning(
            "run skipped: the last run of this job is still going", extra={"job": event.job_id}
        )

    def _tick(self, name: str) -> None:
        """One scheduled run; never raises (the scheduler must go on)."""
        app, now = self.app, self.wall()
        with self._lock:
            health = self._health.setdefault(name, JobHealth())
            if now < health.retry_after:
                log.info(
                    "run skipped: backing off after failures",
                    extra={"job": name, "failures": health.failures},
                )
                return
            health.running_since = now
        began = time.monotonic()
        outcome, error, sent = "failed", None, 0
        try:
            job = app.config.job(name)
            stats = run_job(app, job, RunOptions(kind="scheduled"))
            sent = stats.sent
            everywhere = len(stats.held_elsewhere) == len(app.parts(job))
            outcome = "held elsewhere" if everywhere else "success"
        except Stopped:
            outcome = "stopped"
        except SyncError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not stop the other jobs: logged, counted as failed
            log.exception("unexpected error in a run", extra={"job": name})
            error = f"unexpected error: {type(exc).__name__}: {exc}"
        self._ended(app, name, outcome, error, sent, time.monotonic() - began)

    def _ended(
        self, app: Wiring, name: str, outcome: str, error: str | None, sent: int, seconds: float
    ) -> None:
        now = self.wall()
        if outcome == "held elsewhere":  # another replica runs it: nothing to judge here
            self.metrics.runs_skipped.labels(name).inc()
            with self._lock:
                self._health.setdefault(name, JobHealth()).running_since = None
            return
        self.metrics.run_ended(name, outcome, seconds)
        with self._lock:
            health = self._health.setdefault(name, JobHealth())
            health.running_since = None
            if outcome == "success":
                health.last_success, health.failures, health.retry_after = now, 0, 0.0
            elif outcome == "failed":
                health.failures += 1
                health.last_error = error
                try:
                    schedule = schedule_of(app.config.job(name))
                except ConfigError:
                    schedule = Schedule(every=DEFAULT_SCHEDULE_EVERY)
                health.retry_after = now + backoff(
                    schedule, health.failures, self.config.daemon.failure_backoff_max
                )
        if outcome == "success":
            self.alerter.run_succeeded(name, sent, self._recent_sent(app, name))
        elif outcome == "failed":
            self.alerter.run_failed(name, error or "failed")

    def _recent_sent(self, app: Wiring, name: str) -> list[int]:
        """Rows sent by the job's previous successful runs, newest first."""
        try:
            runs = app.store.part(name).runs(limit=11)[1:]
        except StateError:
            return []
        return [r.rows_sent for r in runs if r.outcome == "success"]

    # -- reload and readiness ----------------------------------------------------------

    def reload(self) -> bool:
        """Load the config again; keep the running one if the new one is not valid."""
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "config reload refused; the running config stays in force",
                extra={"error": str(exc)},
            )
            return False
        set_secrets(secrets_of(config))
        old_app, old_alerter = self.app, self.alerter
        self.app, self.alerter, self.config = (
            self._build_app(config),
            Alerter(config.alerts),
            config,
        )
        self._retired.append(old_app)  # its runs may still be going; closed at exit
        old_alerter.close()
        with self._lock:
            self._health = {
                job.name: self._health.get(job.name, JobHealth()) for job in config.jobs
            }
        self._schedule(config)
        log.info("config reloaded", extra={"jobs": [j.name for j in config.jobs]})
        return True

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: config loaded, state store reachable, no job failing or stuck."""
        now, stuck_after = self.wall(), self.config.daemon.stuck_after.total_seconds()
        try:
            self.app.store.ping()
            store = "ok"
        except StateError as exc:
            store = f"unreachable: {exc}"
        with self._lock:
            jobs = {
                name: {
                    "state": h.state(now, stuck_after),
                    "last_success": h.last_success,
                    "consecutive_failures": h.failures,
                    "last_error": h.last_error,
                    "running_since": h.running_since,
                }
                for name, h in self._health.items()
            }
        ok = store == "ok" and not any(j["state"] in ("failing", "stuck") for j in jobs.values())
        return ok, {
            "ready": ok,
            "config": str(self.config_path),
            "state_store": store,
            "jobs": jobs,
        }


def _exiting_at_once(name: str) -> None:
    log.warning(
        "second signal: exiting at once; checkpoints stand before any unacknowledged row",
        extra={"signal": name},
    )
