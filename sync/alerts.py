"""Alerts to a Slack-compatible webhook: a job failed, recovered, or moved too many rows.

A failure is told once, when a job goes from working (or not yet run) to failing,
not on every failed retry; a recovery once, on the first success after that. A run
that sends more than ``row_count_factor`` times the median of the job's recent
successful runs is told too: a broken source query or a mass update looks like this.

Alerts are a side road: a webhook that is down or refuses is logged as a warning
and never stops a job. The webhook URL is itself a secret and is never logged, and
alert text passes through :func:`sync.logs.redact` like every log line.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
from collections.abc import Sequence

import httpx

from sync.config.models import AlertSettings
from sync.logs import redact

log = logging.getLogger(__name__)

PREFIX = "personyze-sync"
MAX_ERROR_CHARS = 1000  # a chat message, not a log file


def unusual_row_count(
    rows_sent: int, recent: Sequence[int], factor: float | None, min_runs: int
) -> float | None:
    """The usual (median) row count when ``rows_sent`` is far above it, else None."""
    if factor is None or not recent or len(recent) < min_runs:
        return None
    usual = statistics.median(recent)
    return usual if rows_sent > factor * max(usual, 1) else None


class Alerter:
    """Tells a Slack-compatible webhook when a job fails, recovers, or moves an unusual
    number of rows.

    Without a webhook URL it posts nothing but still tracks which jobs are failing.
    Safe to call from several job threads at once.
    """

    def __init__(
        self, settings: AlertSettings, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._closed = False
        self._url = settings.webhook_url
        self._client = (
            None
            if self._url is None
            else httpx.Client(timeout=settings.timeout_s, transport=transport)
        )

    def run_failed(self, job: str, error: str) -> None:
        """Alert once when ``job`` starts failing; not again while it stays down."""
        with self._lock:
            started = job not in self._failing
            self._failing.add(job)
        if started and self._settings.on_failure:
            self._post(job, "failure", f"{PREFIX}: job {job} failed: {_shorten(error)}")

    def run_succeeded(self, job: str, rows_sent: int, recent: Sequence[int]) -> None:
        """Alert on recovery, and on a row count far above the usual.

        ``recent`` holds the rows sent by the job's previous successful runs, newest first.
        """
        with self._lock:
            recovered = job in self._failing
            self._failing.discard(job)
        if recovered and self._settings.on_recovery:
            self._post(job, "recovery", f"{PREFIX}: job {job} recovered")
        settings = self._settings
        usual = unusual_row_count(
            rows_sent, recent, settings.row_count_factor, settings.row_count_min_runs
        )
        if usual is not None:
            text = (
                f"{PREFIX}: job {job} sent {rows_sent} rows, usually {_number(usual)} "
                f"(median of the last {len(recent)} runs): "
                "a broken source query or a mass update?"
            )
            self._post(job, "row_count", text)

    def failing(self) -> frozenset[str]:
        """The jobs whose last run failed."""
        with self._lock:
            return frozenset(self._failing)

    def close(self) -> None:
        """Release the HTTP connections; alerts after this are dropped."""
        with self._lock:
            self._closed = True
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Alerter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, job: str, kind: str, text: str) -> None:
        if self._client is None or self._url is None or self._closed:
            return
        url = self._url.get_secret_value()
        try:
            response = self._client.post(url, json={"text": redact(text)})
        except RuntimeError:
            if self._closed:  # close() won the race: the alert is dropped, as documented
                return
            raise
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = _without(f"{type(exc).__name__}: {exc}", url)
            log.warning("alert not delivered", extra={"job": job, "kind": kind, "reason": reason})
            return
        if not response.is_success:
            body = _without(" ".join(response.text.split())[:200], url)
            reason = f"webhook answered {response.status_code}" + (f": {body}" if body else "")
            log.warning("alert not delivered", extra={"job": job, "kind": kind, "reason": reason})


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _shorten(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _without(text: str, url: str) -> str:
    """``text`` with the webhook URL, as given or as httpx writes it, taken out."""
    forms = {url, url.rstrip("/")}
    with contextlib.suppress(httpx.InvalidURL):
        forms.add(str(httpx.URL(url)))
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, "<webhook>")
    return redact(text)
