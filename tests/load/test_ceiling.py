"""Whether the rate ceiling is what limits a run: from the time requests waited for it.

A fake clock drives the pacing; a sender that waits as told is one sending thread.
"""

from __future__ import annotations

import pytest

from sync.load.pacing import CeilingWatch, Pacing
from tests.support import FakeClock


def send(pacing: Pacing, fake: FakeClock, requests: int, gap: float = 0.0) -> None:
    """``requests`` in a row, each ``gap`` seconds of work after the last one's turn."""
    for _ in range(requests):
        fake.now += gap
        pacing.take()


def test_threads_waiting_at_once_count_once() -> None:
    fake = FakeClock(advance_on_sleep=False)
    pacing = Pacing(10.0, fake, fake.sleep)
    for _ in range(4):  # four threads at once: turns at 0, 0.1, 0.2, 0.3
        pacing.take()
    assert pacing.held_s() == 0.0  # nothing has been waited yet
    fake.now += 0.15
    assert pacing.held_s() == pytest.approx(0.15)
    fake.now += 10
    assert pacing.held_s() == pytest.approx(0.3)  # not 0.1 + 0.2 + 0.3


@pytest.mark.parametrize(
    ("ceiling", "gap", "limiting"),
    [
        (10.0, 0.0, True),  # a sender faster than the ceiling waits all the time
        (10.0, 0.04, True),  # ... 60 % of its time: the ceiling still sets the pace
        (10.0, 0.2, False),  # a sender slower than the ceiling never waits for it
        (None, 0.0, False),  # no ceiling, nothing to wait for
    ],
)
def test_the_ceiling_limits_a_run_when_requests_wait_for_it(
    ceiling: float | None, gap: float, limiting: bool
) -> None:
    fake = FakeClock()
    pacing = Pacing(ceiling, fake, fake.sleep)
    watch = CeilingWatch(pacing)
    send(pacing, fake, 50, gap)
    assert watch.limiting() is limiting
    if ceiling is not None:
        assert watch.share() == pytest.approx(max(0.0, 1.0 - gap * ceiling), abs=0.05)


def test_a_short_span_is_not_judged() -> None:
    fake = FakeClock()
    pacing = Pacing(10.0, fake, fake.sleep)
    watch = CeilingWatch(pacing)
    send(pacing, fake, 5)  # half a second, all of it waiting
    assert watch.share() == pytest.approx(1.0, abs=0.25) and not watch.limiting()


def test_waiting_under_a_rate_cut_below_the_ceiling_is_not_the_ceiling() -> None:
    """429s that follow our rate cut it under the ceiling: then Personyze limits, not it."""
    fake = FakeClock()
    pacing = Pacing(50.0, fake, fake.sleep)
    for _ in range(40):  # most answers 429: the rate is cut at once
        fake.now += 0.01
        pacing.answered(True, sent_at=fake.now)
    for _ in range(40):
        fake.now += 0.01
        pacing.answered(False, sent_at=fake.now)
    assert pacing.rate is not None and pacing.rate < 50.0
    watch = CeilingWatch(pacing)
    send(pacing, fake, 40)
    assert fake.sleeps and not watch.limiting() and watch.share() == 0.0
