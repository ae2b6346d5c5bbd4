"""Rows in source order, while their requests finish in any order.

The runner adds a slot for every row it reads. A slot that needs no request (the row
is unchanged, or the mapper refused it) is finished at once; the others finish when
their request does. :meth:`Window.finished` hands back the longest finished prefix,
so the checkpoint only ever moves over rows that are done, however many requests are
in flight and whatever order their answers come in; :meth:`Window.done_ahead` hands
back what finished beyond it, so its outcome can be stored without waiting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

from sync.load.writer import Result
from sync.model import Position


@dataclass
class Slot:
    """One row on its way: what it is, where it stands, and how it ended."""

    key: str
    position: Position | None  # None: this row does not move the checkpoint
    fingerprint: str
    payload: dict[str, Any] = field(default_factory=dict)
    action: Literal["upsert", "update", "delete"] = "upsert"
    known: bool = False  # the payload's user_id is the identity map's (see Outgoing.known)
    reason: str | None = None  # refused by the mapper: never sent
    sent: bool = False  # a request was started: the slot finishes when it does
    outcome: Result | BaseException | None = None  # what the request came to
    recorded: bool = False  # its outcome is already in the state store
    awaited: bool = False  # the reading thread waits for it

    def done(self) -> bool:
        return not self.sent or self.outcome is not None

    def result(self) -> Result | None:
        if isinstance(self.outcome, BaseException):
            raise self.outcome  # a sending thread failed in a way no Result describes
        return self.outcome


class Window:
    """The slots not yet handed back, oldest first.

    The sending threads finish slots through :meth:`complete`; one lock and one
    condition serve the whole window (a ``concurrent.futures.Future`` per row, each
    with a lock and a condition of its own, cost a tenth of the reading thread's CPU).
    """

    def __init__(self) -> None:
        self._slots: deque[Slot] = deque()
        self._just_done: list[Slot] = []  # filled by the sending threads
        self._changed = threading.Condition(threading.Lock())
        self._awaited = 0  # slots the reading thread waits for, not yet finished
        self.pending = 0  # slots sent and not yet finished
        self._room_at: int | None = None  # the reading thread waits for pending <= this

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, slot: Slot) -> None:
        """Add a slot; if it was ``sent``, it finishes when :meth:`complete` is called."""
        if slot.sent:
            with self._changed:
                self.pending += 1
        self._slots.append(slot)

    def wait_for_room(self, pending: int) -> None:
        """Wait until at most ``pending`` slots are still being sent, wherever they stand.

        A slot waiting out a retry holds back the checkpoint, not the rows behind it.
        """
        with self._changed:
            while self.pending > pending:
                self._room_at = pending
                self._changed.wait()
            self._room_at = None

    def complete(self, slot: Slot, outcome: Result | BaseException) -> None:
        """A sending thread says how a slot's request ended."""
        with self._changed:
            slot.outcome = outcome
            self._just_done.append(slot)
            self.pending -= 1
            if self._room_at is not None and self.pending <= self._room_at:
                self._changed.notify()
            if slot.awaited:
                slot.awaited = False
                self._awaited -= 1
                if not self._awaited:
                    self._changed.notify()

    def finished(self, *, wait_for: int = 0) -> list[Slot]:
        """The finished prefix; first wait until the oldest ``wait_for`` slots are finished.

        Waiting for a chunk rather than for the oldest slot alone wakes the reading
        thread once a chunk instead of once a row: each wake-up is a thread switch.
        """
        if wait_for:
            self._wait(islice(self._slots, wait_for))
        prefix = []
        while self._slots and self._slots[0].done():
            prefix.append(self._slots.popleft())
        return prefix

    def done_ahead(self) -> list[Slot]:
        """Slots that finished since the last call, wherever they stand, not yet recorded.

        Their outcomes can be stored at once (so a crash does not resend them); only
        the checkpoint has to wait for the slots before them.
        """
        with self._changed:
            just_done, self._just_done = self._just_done, []
        return [slot for slot in just_done if not slot.recorded]

    def drain(self) -> list[Slot]:
        """Wait for every slot, then hand them all back."""
        self._wait(iter(self._slots))
        return self.finished()

    def _wait(self, slots: Iterator[Slot]) -> None:
        with self._changed:
            for slot in slots:
                if not slot.done():
                    slot.awaited = True
                    self._awaited += 1
            while self._awaited:
                self._changed.wait()
