"""The account's rate budget: each process's share, and cuts told to and taken from others.

A fake clock drives the pacing and the budget; the store is a fake that answers as
the test says (tests/state/test_senders.py tests the real one on both backends,
tests/integration/test_budget.py real processes on PostgreSQL).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sync.errors import StateError
from sync.load.budget import ACTIVE_S, Budget, grown, share
from sync.load.pacing import GROWTH, MARGIN, MIN_ANSWERS, Pacing
from sync.state.senders import Census
from tests.support import FakeClock


@dataclass
class FakeAccount:
    """The other senders as the test sets them; what this process told, beat by beat."""

    others: int = 0
    cut: tuple[float, float, float] | None = None  # rate, at, age
    beats: list[tuple[bool, float | None]] = field(default_factory=list)
    failing: bool = False
    left: bool = False

    def beat(self, sending: bool, cut: float | None) -> Census:
        if self.failing:
            raise StateError("state store db: failed while counting the senders: gone")
        self.beats.append((sending, cut))
        if self.cut is None:
            return Census(self.others)
        return Census(self.others, *self.cut)

    def leave(self) -> None:
        self.left = True


def budget_of(ceiling: float | None, others: int = 0) -> tuple[Budget, FakeAccount, FakeClock]:
    fake = FakeClock()
    account = FakeAccount(others)
    pacing = Pacing(ceiling, fake, fake.sleep)
    return Budget(pacing, account, fake), account, fake


@pytest.mark.parametrize(
    ("ceiling", "senders", "each"),
    [(90.0, 1, 90.0), (90.0, 3, 30.0), (90.0, 0, 90.0), (None, 3, None)],
)
def test_each_sender_takes_the_ceiling_divided_by_the_senders(
    ceiling: float | None, senders: int, each: float | None
) -> None:
    assert share(ceiling, senders) == each


def test_the_share_follows_the_senders_as_they_come_and_go() -> None:
    budget, account, fake = budget_of(90.0, others=2)
    budget.step()
    assert (budget.senders, budget.pacing.share, budget.pacing.rate) == (3, 30.0, 30.0)
    account.others = 1  # one left
    fake.advance(0.5)
    budget.step()
    assert (budget.pacing.share, budget.pacing.rate) == (45.0, 45.0)
    account.others = 0
    budget.step()
    assert budget.pacing.rate == 90.0  # alone: the whole ceiling


def test_the_first_step_comes_before_the_first_request() -> None:
    budget, _, _ = budget_of(90.0, others=2)
    budget.start()
    try:
        assert budget.pacing.rate == 30.0
    finally:
        budget.close()


def test_a_process_is_a_sender_while_it_sends_and_a_little_after() -> None:
    budget, account, fake = budget_of(90.0)
    budget.step()  # just started: about to send
    fake.advance(ACTIVE_S + 1)
    budget.step()  # started long ago and sent nothing
    budget.pacing.take()
    budget.step()
    fake.advance(ACTIVE_S + 1)
    budget.step()
    assert [sending for sending, _ in account.beats] == [True, False, True, False]


def test_a_cut_here_tells_the_account_its_rate_for_every_sender() -> None:
    budget, account, fake = budget_of(90.0, others=2)
    budget.step()
    pacing = budget.pacing
    for i in range(MIN_ANSWERS * 3):  # two in three answered 429, at 20/s: 6.7/s accepted
        fake.advance(0.05)
        pacing.answered(i % 3 != 0, sent_at=fake.now)
    assert pacing.rate is not None and pacing.rate < 30.0
    budget.step()
    told = account.beats[-1][1]
    assert told == pytest.approx(pacing.rate * 3)  # this process's cut, times 3 senders
    budget.step()
    assert account.beats[-1][1] is None  # told once


def test_a_cut_elsewhere_slows_this_process_to_its_part_of_it_once() -> None:
    budget, account, fake = budget_of(90.0, others=2)
    budget.step()
    account.cut = (30.0, 5000.0, 0.0)  # the account can take 30/s: 10 each
    budget.step()
    assert budget.pacing.rate == pytest.approx(10.0)
    for _ in range(MIN_ANSWERS + 1):  # a second of answers, none 429: it grows back
        fake.advance(1 / MIN_ANSWERS)
        budget.pacing.answered(False, sent_at=fake.now)
    rate = budget.pacing.rate
    assert rate is not None and rate > 10.0
    budget.step()  # the same cut again: already taken
    assert budget.pacing.rate == rate


def test_an_old_cut_is_taken_as_grown_since_and_fades_past_the_share() -> None:
    budget, account, _ = budget_of(90.0, others=2)
    account.cut = (30.0, 5000.0, 10.0)
    budget.step()
    assert budget.pacing.rate == pytest.approx(30.0 * (1 + GROWTH) ** 10 / 3)
    assert grown(30.0, 10.0) == pytest.approx(30.0 * (1 + GROWTH) ** 10)
    budget, account, _ = budget_of(90.0, others=2)
    account.cut = (30.0, 5000.0, 3600.0)  # an hour ago: grown far past 90
    budget.step()
    assert budget.pacing.rate == 30.0


def test_a_cut_without_a_ceiling_paces_what_was_unpaced() -> None:
    budget, account, _ = budget_of(None, others=1)
    budget.step()
    assert budget.pacing.rate is None
    account.cut = (40.0, 5000.0, 0.0)
    budget.step()
    assert budget.pacing.rate == pytest.approx(20.0)


def test_a_cut_rate_scales_with_the_senders_and_keeps_its_limit() -> None:
    fake = FakeClock()
    pacing = Pacing(90.0, fake, fake.sleep)
    pacing.set_share(30.0, 1 / 3)  # three senders
    assert pacing.adopt(12.0)
    pacing.set_share(45.0, 3 / 2)  # one of three left: the others' part of the cut grows
    assert pacing.rate == pytest.approx(18.0)
    pacing.set_share(22.5, 2 / 4)  # two came
    assert pacing.rate == pytest.approx(9.0)
    assert not pacing.adopt(9.0 / MARGIN)  # not under the rate in force: not taken


def test_a_store_that_does_not_answer_leaves_the_share_and_keeps_the_cut_to_tell() -> None:
    budget, account, _ = budget_of(90.0, others=2)
    budget.step()
    budget.cut(20.0)
    account.failing = True
    budget.step()
    assert budget.pacing.share == 30.0
    account.failing = False
    budget.step()
    assert account.beats[-1][1] == pytest.approx(60.0)


def test_closing_leaves_the_senders() -> None:
    budget, account, _ = budget_of(90.0)
    budget.start().close()
    assert account.left
