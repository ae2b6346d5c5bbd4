"""Alerts, posted to a real webhook receiver on loopback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sync.alerts import Alerter, unusual_row_count
from sync.config import AlertSettings
from tests.support import Receiver, free_port

TOKEN = "XYZsecretTOKEN"  # the part of a Slack webhook URL that is the secret


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(TOKEN) as server:
        yield server


def alerter(url: str | None, **settings: Any) -> Alerter:
    return Alerter(AlertSettings(webhook_url=url, timeout_s=2, **settings))


def test_failure_is_told_once_then_recovery_once(receiver: Receiver) -> None:
    with alerter(receiver.url) as alerts:
        alerts.run_failed("customers", "source database unreachable")
        alerts.run_failed("customers", "source database unreachable")
        alerts.run_failed("orders", "Personyze refused the API key")
        alerts.run_succeeded("customers", 10, [])
        alerts.run_succeeded("customers", 10, [])
        alerts.run_failed("customers", "again")
    assert receiver.texts == [
        "personyze-sync: job customers failed: source database unreachable",
        "personyze-sync: job orders failed: Personyze refused the API key",
        "personyze-sync: job customers recovered",
        "personyze-sync: job customers failed: again",
    ]


def test_success_of_a_job_never_seen_is_quiet(receiver: Receiver) -> None:
    with alerter(receiver.url) as alerts:
        alerts.run_succeeded("customers", 10, [])
    assert receiver.texts == []


@pytest.mark.parametrize(
    ("on_failure", "on_recovery", "expected"),
    [
        (False, True, ["personyze-sync: job customers recovered"]),
        (True, False, ["personyze-sync: job customers failed: boom"]),
        (False, False, []),
    ],
)
def test_kinds_can_be_switched_off(
    receiver: Receiver, on_failure: bool, on_recovery: bool, expected: list[str]
) -> None:
    with alerter(receiver.url, on_failure=on_failure, on_recovery=on_recovery) as alerts:
        alerts.run_failed("customers", "boom")
        alerts.run_succeeded("customers", 1, [])
    assert receiver.texts == expected


def test_without_a_webhook_nothing_is_sent_but_state_is_kept(receiver: Receiver) -> None:
    with alerter(None) as alerts:
        alerts.run_failed("customers", "boom")
        assert alerts.failing() == {"customers"}
        alerts.run_succeeded("customers", 10**6, [1] * 10)
        assert alerts.failing() == frozenset()
    assert receiver.texts == []


# (case id, rows sent, recent runs newest first, factor, min runs, alert expected)
ROW_COUNTS = [
    ("below min runs", 50_000, [120] * 4, 10.0, 5, False),
    ("normal", 130, [120, 110, 125, 119, 121], 10.0, 5, False),
    ("exactly the factor", 1200, [120] * 5, 10.0, 5, False),
    ("far above", 52_000, [120, 110, 125, 119, 121, 5000, 118, 122, 120, 117], 10.0, 5, True),
    ("median 0 counts as 1", 11, [0, 0, 0, 0, 0], 10.0, 5, True),
    ("median 0, a few rows", 10, [0, 0, 0, 0, 0], 10.0, 5, False),
    ("rule off", 52_000, [120] * 10, None, 5, False),
    ("no history at all", 52_000, [], 10.0, 0, False),
]


@pytest.mark.parametrize(
    ("rows", "recent", "factor", "min_runs", "alert"),
    [case[1:] for case in ROW_COUNTS],
    ids=[case[0] for case in ROW_COUNTS],
)
def test_unusual_row_count(
    receiver: Receiver,
    rows: int,
    recent: list[int],
    factor: float | None,
    min_runs: int,
    alert: bool,
) -> None:
    settings = {"row_count_factor": factor, "row_count_min_runs": min_runs}
    with alerter(receiver.url, **settings) as alerts:
        alerts.run_succeeded("customers", rows, recent)
    assert len(receiver.texts) == int(alert)
    assert (unusual_row_count(rows, recent, factor, min_runs) is not None) is alert


def test_unusual_row_count_message(receiver: Receiver) -> None:
    recent = [120, 110, 125, 119, 121, 5000, 118, 122, 120, 117]
    with alerter(receiver.url) as alerts:
        alerts.run_failed("customers", "boom")
        alerts.run_succeeded("customers", 52_000, recent)
    assert receiver.texts == [
        "personyze-sync: job customers failed: boom",
        "personyze-sync: job customers recovered",
        "personyze-sync: job customers sent 52000 rows, usually 120 "
        "(median of the last 10 runs): a broken source query or a mass update?",
    ]


@pytest.mark.parametrize("webhook", ["answers 500", "unreachable"])
def test_webhook_failure_only_warns_without_the_url(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, webhook: str
) -> None:
    receiver.status = 500
    url = receiver.url
    if webhook == "unreachable":
        url = f"http://127.0.0.1:{free_port()}/services/T0/B0/{TOKEN}"
    with caplog.at_level(logging.WARNING, logger="sync.alerts"), alerter(url) as alerts:
        alerts.run_failed("customers", "boom")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.name == "sync.alerts"
    assert record.getMessage() == "alert not delivered"
    assert record.job == "customers"  # type: ignore[attr-defined]
    reason: str = record.reason  # type: ignore[attr-defined]
    assert ("500" in reason) is (webhook == "answers 500")
    everything = " ".join(str(value) for value in record.__dict__.values())
    assert TOKEN not in everything


def test_alerts_after_close_are_dropped(receiver: Receiver) -> None:
    alerts = alerter(receiver.url)
    alerts.close()
    alerts.run_failed("customers", "boom")
    assert receiver.texts == []


def test_secrets_are_masked_in_alert_text(receiver: Receiver) -> None:
    from sync.logs import set_secrets

    set_secrets(["sk-TOPSECRET-4242"])
    try:
        with alerter(receiver.url) as alerts:
            alerts.run_failed("customers", "key sk-TOPSECRET-4242 refused")
    finally:
        set_secrets(())
    assert receiver.texts == ["personyze-sync: job customers failed: key *** refused"]


def test_many_threads_one_failure_alert(receiver: Receiver) -> None:
    with alerter(receiver.url) as alerts:
        threads = [
            threading.Thread(target=alerts.run_failed, args=("customers", "boom")) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert receiver.texts == ["personyze-sync: job customers failed: boom"]
