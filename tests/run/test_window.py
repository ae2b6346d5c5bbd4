"""The window keeps rows in source order while their answers come in any order."""

from __future__ import annotations

import time
from functools import partial

import pytest

from sync.extract.query import Position
from sync.load.writer import Delivered, SenderThreads
from sync.run.window import Slot, Window


def sent(key: str, at: int) -> Slot:
    return Slot(key, Position(at, at), "fp", sent=True)


def test_the_window_hands_back_only_the_finished_prefix_in_order() -> None:
    window = Window()
    slots = [sent(str(i), i) for i in range(4)]
    for slot in slots:
        window.add(slot)
    window.complete(slots[2], Delivered(12))  # answers arrive out of order
    window.complete(slots[1], Delivered(11))
    assert window.finished() == []  # the first is still owed: nothing moves
    assert {s.key for s in window.done_ahead()} == {"1", "2"}  # but these can be stored
    assert window.done_ahead() == []  # each is handed over once
    window.complete(slots[0], Delivered(10))
    assert [s.key for s in window.finished()] == ["0", "1", "2"]
    assert [s.result() for s in slots[:3]] == [Delivered(10), Delivered(11), Delivered(12)]
    assert len(window) == 1
    window.complete(slots[3], Delivered(13))
    assert [s.key for s in window.drain()] == ["3"]


def test_rows_with_nothing_to_send_finish_at_once() -> None:
    window = Window()
    window.add(Slot("a", Position(1, 1), "fp"))  # unchanged: no request
    b = sent("b", 2)
    window.add(b)
    window.add(Slot("c", Position(1, 3), "fp", reason="no identifier"))
    assert [s.key for s in window.finished()] == ["a"]
    window.complete(b, Delivered(5))
    assert [s.key for s in window.finished()] == ["b", "c"]


def test_waiting_for_a_chunk_returns_when_the_last_of_it_finishes() -> None:
    window = Window()
    slots = [sent(str(i), i) for i in range(6)]
    for slot in slots:
        window.add(slot)
    with SenderThreads(3, name="test-window") as threads:
        for i in (3, 1, 0, 2):  # the oldest four, out of order, from other threads
            # each send takes 10 ms (the scenario: the wait below has something to wait for)
            threads.run(lambda slot: time.sleep(0.01) or Delivered(int(slot.key)), slots[i],
                        partial(window.complete, slots[i]))  # fmt: skip
        prefix = window.finished(wait_for=4)
    assert [s.key for s in prefix] == ["0", "1", "2", "3"]
    assert not slots[4].done() and len(window) == 2


def test_an_exception_in_a_sending_thread_is_raised_where_the_result_is_read() -> None:
    window = Window()
    slot = sent("a", 1)
    window.add(slot)

    def broken(_: Slot) -> Delivered:
        raise RuntimeError("a bug, not a Personyze answer")

    with SenderThreads(1, name="test-window") as threads:
        threads.run(broken, slot, partial(window.complete, slot))
        (done,) = window.drain()
    with pytest.raises(RuntimeError, match="a bug"):
        done.result()
