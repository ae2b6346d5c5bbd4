"""The pace: a token bucket at the rate in force, which follows 429s that follow our rate.

The windows are driven by a fake clock and answers told to the pacing directly: what
is tested is the decision, window by window. bench/hostile.py measures it against a
sandbox that limits for real (target C) and one that answers 429 at random (A).
"""

from __future__ import annotations

import random

import pytest

from sync.load.pacing import FLOOR, MIN_ANSWERS, Pacing
from tests.support import FakeClock


def window(
    pacing: Pacing, fake: FakeClock, answers: int, limited: int, seconds: float = 1.0
) -> None:
    """One window of ``answers`` evenly spread over ``seconds``, ``limited`` of them 429."""
    start = fake.now
    for i in range(answers):
        fake.now = start + seconds * (i + 1) / answers
        refused = (i + 1) * limited // answers > i * limited // answers  # spread evenly
        pacing.answered(refused, sent_at=fake.now)


def server_limited(
    pacing: Pacing, fake: FakeClock, limit: float, windows: int
) -> tuple[float, float]:
    """Windows against a server limiting at ``limit``/s: we send at the pacing's rate (or
    at 10× the limit when unpaced); the answers past the limit are 429. Returns the
    mean rate sent and the share of 429s over the last half of the windows."""
    sent = limited = 0.0
    for at in range(windows):
        rate = pacing.rate or limit * 10
        answers = max(MIN_ANSWERS, round(rate))
        over = max(0, answers - round(limit))
        window(pacing, fake, answers, over)
        if at >= windows // 2:
            sent, limited = sent + answers, limited + over
    half = windows - windows // 2
    return sent / half, limited / sent


def test_a_real_limit_is_found_in_one_window_and_held_with_few_429s() -> None:
    fake = FakeClock()
    pacing = Pacing(None, fake, fake.sleep)
    window(pacing, fake, 1000, 900)  # unpaced: 1000/s against a limit of 100/s
    assert pacing.rate == pytest.approx(100 * 0.95)
    rate, share = server_limited(pacing, fake, 100.0, 120)
    assert 90 <= rate <= 110 and share < 0.02


def test_random_429s_that_do_not_follow_our_rate_do_not_slow_us() -> None:
    fake = FakeClock()
    pacing = Pacing(50.0, fake, fake.sleep)
    draw = random.Random(7)
    rates = []
    for _ in range(120):
        answers = round(pacing.rate or 50)
        limited = sum(draw.random() < 0.05 for _ in range(answers))
        window(pacing, fake, answers, limited)
        rates.append(pacing.rate or 0.0)
    assert pacing.background > 0  # learned: those 429s were not ours
    assert sum(rates) / len(rates) >= 0.9 * 50  # the old halving sat at the floor


def test_a_cut_that_did_not_lessen_the_429s_is_undone() -> None:
    fake = FakeClock()
    pacing = Pacing(50.0, fake, fake.sleep)
    window(pacing, fake, 50, 5)  # 10 %: once may be chance
    assert pacing.rate == 50.0
    window(pacing, fake, 50, 5)  # twice: a cut
    assert pacing.rate == pytest.approx(45 * 0.95)
    window(pacing, fake, 43, 4)  # still 9 %: a limit's burst may have lent some: again
    assert pacing.rate == pytest.approx(39 * 0.95)
    window(pacing, fake, 37, 3)  # still 8 %: they were not ours
    assert pacing.rate == 50.0 and pacing.background == pytest.approx(3 / 37)


def test_without_429s_the_rate_climbs_back_with_time_up_to_the_ceiling() -> None:
    fake = FakeClock()
    pacing = Pacing(50.0, fake, fake.sleep)
    window(pacing, fake, 50, 25)  # half the answers 429: at once
    cut = pacing.rate
    assert cut is not None and cut < 25
    window(pacing, fake, max(MIN_ANSWERS, round(cut)), 0)  # the cut helped: kept
    for _ in range(200):
        window(pacing, fake, max(MIN_ANSWERS, round(pacing.rate or 50)), 0)
    assert pacing.rate == 50.0


def test_the_rate_never_falls_below_the_floor() -> None:
    """A server that allows one request in five seconds: we stay at the floor."""
    fake = FakeClock()
    pacing = Pacing(50.0, fake, fake.sleep)
    for _ in range(20):
        rate = pacing.rate or 50.0
        seconds = MIN_ANSWERS / rate
        accepted = min(MIN_ANSWERS, round(0.2 * seconds))
        window(pacing, fake, MIN_ANSWERS, MIN_ANSWERS - accepted, seconds=seconds)
        assert (pacing.rate or 0) >= FLOOR
    assert pacing.rate == FLOOR


def test_without_a_ceiling_or_429s_nothing_is_paced() -> None:
    fake = FakeClock()
    pacing = Pacing(None, fake, fake.sleep)
    window(pacing, fake, 500, 0)
    for _ in range(100):
        pacing.take()
    assert pacing.rate is None and fake.sleeps == []


@pytest.mark.parametrize(
    ("rate", "gaps", "advance", "expected"),
    [
        (None, [0, 0, 0, 0], True, []),
        (10.0, [0, 0, 0, 0, 0], True, [0.1, 0.1, 0.1, 0.1]),
        (2.0, [0, 0, 0], True, [0.5, 0.5]),
        (10.0, [0, 0.1, 0.1, 0.1], True, []),  # already at the ceiling: never waits
        (10.0, [0, 0.05, 0.05], True, [0.05, 0.05]),  # slots at 0, 0.1, 0.2
        (4.0, [10, 0, 0, 0, 0], True, [0.25, 0.25, 0.25, 0.25]),  # idle: a burst of 1 at 4/s
        (100.0, [10] + [0] * 11, True, [0.01, 0.01]),  # ... of a tenth of a second at 100/s
        (10.0, [0, 0, 0, 0], False, [0.1, 0.2, 0.3]),  # threads reserving at once
        (0.5, [0, 0], True, [2.0]),
    ],
)
def test_the_token_bucket_spaces_requests_at_the_rate_in_force(
    rate: float | None, gaps: list[float], advance: bool, expected: list[float]
) -> None:
    fake = FakeClock(advance_on_sleep=advance)
    bucket = Pacing(rate, fake, fake.sleep)
    for gap in gaps:
        fake.now += gap
        bucket.take()
    assert fake.sleeps == pytest.approx(expected)
