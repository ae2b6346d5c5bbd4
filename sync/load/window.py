"""Rows in source order, while their requests finish in any order.

The runner adds a slot for every row it reads. A slot that needs no request (the row
is unchanged, or the mapper refused it) is finished at once; the others finish when
their request does. :meth:`Window.finished` hands back the longest finished prefix,
so the checkpoint only ever moves over rows that are done, however many requests are
in flight and whatever order their answers come in; :meth:`Window.done_ahead` hands
back what finished beyond it, so its outcome can be stored without waiting.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from itertools import islice
from queue import SimpleQueue
from typing import Any, Literal

from sync.extract.query import Position
from sync.load.writer import Result


@dataclass
class Slot:
    """One row on its way: what it is, where it stands, and how it ended."""

    key: str
    position: Position | None  # None: this row does not move the checkpoint
    fingerprint: str
    payload: dict[str, Any] = field(default_factory=dict)
    action: Literal["upsert", "update", "delete"] = "upsert"
    reason: str | None = None  # refused by the mapper: never sent
    future: Future[Result] | None = None  # None and no reason: unchanged, nothing to send
    recorded: bool = False  # its outcome is already in the state store

    def done(self) -> bool:
        return self.future is None or self.future.done()

    def result(self) -> Result | None:
        return None if self.future is None else self.future.result()


class Window:
    """The slots not yet handed back, oldest first."""

    def __init__(self) -> None:
        self._slots: deque[Slot] = deque()
        self._just_done: SimpleQueue[Slot] = SimpleQueue()  # filled by the sending threads

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, slot: Slot) -> None:
        self._slots.append(slot)
        if slot.future is not None:
            slot.future.add_done_callback(lambda _: self._just_done.put(slot))

    def finished(self, *, wait_for: int = 0) -> list[Slot]:
        """The finished prefix; first wait until the oldest ``wait_for`` slots are finished.

        Waiting for a chunk rather than for the oldest slot alone wakes the reading
        thread once a chunk instead of once a row: each wake-up is a thread switch.
        """
        if wait_for:
            wait([s.future for s in islice(self._slots, wait_for) if s.future is not None])
        prefix = []
        while self._slots and self._slots[0].done():
            prefix.append(self._slots.popleft())
        return prefix

    def done_ahead(self) -> list[Slot]:
        """Slots that finished since the last call, wherever they stand, not yet recorded.

        Their outcomes can be stored at once (so a crash does not resend them); only
        the checkpoint has to wait for the slots before them.
        """
        ahead = []
        while not self._just_done.empty():
            slot = self._just_done.get()
            if not slot.recorded:
                ahead.append(slot)
        return ahead

    def drain(self) -> list[Slot]:
        """Wait for every slot, then hand them all back."""
        wait([s.future for s in self._slots if s.future is not None])
        return self.finished()
