"""The checkpoint rule on its own (``sync.run.commit``), against a fake part state.

Rows enter the window in source order and finish in any order; the checkpoint moves
only over the longest prefix of rows that are done (acknowledged, unchanged, rejected),
never past a row that could not be delivered, while every finished row's outcome is
recorded at once. The end-to-end suites show the same through real servers.
"""

from __future__ import annotations

import pytest

from sync.errors import FatalError, RetriableError
from sync.load.writer import Delivered, Failed, Gone, Refused, Unresolved
from sync.model import Position, RunStats
from sync.run.commit import Commits
from sync.run.window import Slot, Window
from sync.state.records import BatchOutcome


class FakePart:
    """Records each commit; the real one writes it in one transaction."""

    name = "customers"

    def __init__(self) -> None:
        self.commits: list[BatchOutcome] = []

    def commit(self, outcome: BatchOutcome) -> None:
        self.commits.append(outcome)

    @property
    def checkpoints(self) -> list[Position]:
        return [c.checkpoint for c in self.commits if c.checkpoint is not None]

    @property
    def acked(self) -> list[str]:
        return [a.key for c in self.commits for a in c.acks]

    @property
    def rejected(self) -> list[str]:
        return [r.key for c in self.commits for r in c.rejected]


def at(n: int) -> Position:
    return Position(n, n)


def sent(window: Window, n: int) -> Slot:
    """A row read at position n whose request is in flight."""
    slot = Slot(str(n), at(n), f"f{n}", payload={"internal_id": n}, sent=True)
    window.add(slot)
    return slot


def unchanged(window: Window, n: int) -> Slot:
    """A row skipped as unchanged: finished as soon as it is read."""
    slot = Slot(str(n), at(n), f"f{n}")
    window.add(slot)
    return slot


def make(batch_size: int = 1000) -> tuple[FakePart, Window, Commits, list[str]]:
    part, window, aborted = FakePart(), Window(), []
    commits = Commits(
        part,
        window,
        RunStats(),
        batch_size=batch_size,
        abort=lambda: aborted.append("abort"),
        clock=lambda: 0.0,  # no half second ever passes: commits come by count alone
    )
    return part, window, commits, aborted


def test_answers_out_of_order_move_the_checkpoint_only_over_the_done_prefix() -> None:
    part, window, commits, _ = make()
    first, second, third = sent(window, 1), sent(window, 2), sent(window, 3)
    window.complete(third, Delivered(103))
    window.complete(second, Delivered(102))
    commits.collect()
    commits.commit()  # what collect took, now (a real run commits by count or time)
    assert part.checkpoints == []  # row 1 is still in flight
    assert sorted(part.acked) == ["2", "3"]  # but what finished is recorded already
    window.complete(first, Delivered(101))
    commits.collect()
    commits.commit()
    assert part.checkpoints == [at(3)]
    assert sorted(part.acked) == ["1", "2", "3"]  # each acknowledged once
    assert commits.stats.sent == 3


def test_unchanged_and_rejected_rows_are_done_and_move_the_checkpoint() -> None:
    part, window, commits, _ = make()
    unchanged(window, 1)
    commits.unchanged += 1
    refused = sent(window, 2)
    by_mapper = Slot("3", at(3), "f3", payload={"x": 1}, reason="email is not valid")
    window.add(by_mapper)
    window.complete(refused, Refused("Invalid email", 400))
    commits.finish()
    assert part.checkpoints == [at(3)]
    assert sorted(part.rejected) == ["2", "3"]
    assert (commits.stats.unchanged, commits.stats.rejected) == (1, 2)


def test_a_failure_mid_window_stops_the_checkpoint_before_it_for_the_rest_of_the_run() -> None:
    part, window, commits, aborted = make()
    ok, broken, after = sent(window, 1), sent(window, 2), sent(window, 3)
    window.complete(ok, Delivered(101))
    window.complete(after, Delivered(103))
    window.complete(broken, Failed(RetriableError("Personyze answered 503"), sent=True))
    with pytest.raises(RetriableError, match="could not be delivered"):
        commits.finish()
    assert part.checkpoints == [at(1)]  # never past row 2
    assert sorted(part.acked) == ["1", "3"]  # row 3's ack is kept: no resend after a crash
    assert aborted  # nothing more is started
    later = unchanged(window, 4)
    assert later.done()
    with pytest.raises(RetriableError):
        commits.finish()
    assert part.checkpoints == [at(1)]


def test_a_row_never_sent_loses_its_mark_and_a_fatal_error_is_raised_as_is() -> None:
    part, window, commits, _ = make()
    slot = sent(window, 1)
    window.complete(slot, Failed(FatalError("the API key was refused"), sent=False))
    with pytest.raises(FatalError, match="the API key was refused"):
        commits.finish()
    assert [c.unsent for c in part.commits] == [["1"]]
    assert part.checkpoints == []


def test_an_unresolved_or_gone_row_holds_the_checkpoint_for_the_whole_run() -> None:
    part, window, commits, _ = make()
    unresolved, gone, fine = sent(window, 1), sent(window, 2), sent(window, 3)
    window.complete(unresolved, Unresolved(RetriableError("timed out")))
    window.complete(gone, Gone())
    window.complete(fine, Delivered(103))
    commits.finish()
    assert part.checkpoints == []
    assert commits.held and commits.again == ["2"]  # sent again as new before the run ends
    assert commits.stats.unresolved == 1
    assert [k for c in part.commits for k in c.deleted] == ["2"]


def test_rows_at_the_starting_checkpoint_do_not_move_it_back() -> None:
    part, window, commits, _ = make()
    commits.floor = at(5)
    unchanged(window, 3)  # read again at the checkpoint's own cursor value
    commits.finish()
    assert part.checkpoints == []
    unchanged(window, 6)
    commits.finish()
    assert part.checkpoints == [at(6)]


def test_a_later_version_read_in_the_same_run_wins_over_an_earlier_answer() -> None:
    part, window, commits, _ = make()
    retried = Slot("7", None, "old", payload={"internal_id": 7}, sent=True)
    window.add(retried)
    commits.superseded.add(("7", "old"))  # the row was read again, changed, since
    window.complete(retried, Delivered(107))
    commits.finish()
    assert part.acked == []


def test_commits_wait_for_a_batch_of_finished_rows() -> None:
    part, window, commits, _ = make(batch_size=4)
    for n in range(1, 4):
        unchanged(window, n)
    commits.collect()
    assert part.commits == []  # three rows of four: not yet (unless half a second passed)
    unchanged(window, 4)
    commits.collect()
    assert part.checkpoints == [at(4)]
