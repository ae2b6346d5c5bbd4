"""How many requests to keep in flight: enough to cover the round trip, at most ``concurrency``.

A process that sends as fast as its CPU allows gains nothing from more requests in
flight than it takes to cover the round trip while it prepares the next ones: the
unloaded round trip (the 10th percentile of the delivered rows' round trips: a few
answers that come back at once, such as refusals, do not count) divided by the
process's CPU time per row, plus one. Against a remote API (tens of milliseconds)
that is always more than ``concurrency``, so nothing changes there. On loopback or
within a host, where an answer comes back in less time than the process spends on a
row, it is a handful: the other sending threads would only take turns at the
interpreter's lock (32 in flight on loopback cost 15 % more CPU per row than 3, and
were slower). Each window of ``WINDOW`` delivered rows sets the limit again, so it
follows the API when its round trip changes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

HEADROOM = 1  # requests beyond the estimate: the next is ready when an answer comes
WINDOW = 256  # delivered rows between two estimates


def needed(round_trip_s: float, cpu_per_request_s: float, ceiling: int) -> int:
    """Requests in flight that keep the process busy: round trip ÷ CPU per request."""
    if cpu_per_request_s <= 0 or not math.isfinite(round_trip_s):
        return ceiling
    wanted = math.ceil(round_trip_s / cpu_per_request_s) + HEADROOM
    return max(1, min(ceiling, wanted))


def unloaded(round_trips: list[float]) -> float:
    """The round trip of a request that did not queue: the 10th percentile."""
    return sorted(round_trips)[len(round_trips) // 10] if round_trips else math.inf


class InFlightLimit:
    """How many sending threads may be at work at once; the limit follows :func:`needed`.

    A thread ``enter``s before it takes work and ``leave``s when it stops; it keeps its
    place from one request to the next, so the same few threads stay busy and the
    others sleep, instead of all of them taking turns. Each delivered row's round trip
    is ``delivered``; every ``WINDOW`` of them the limit is set again from their
    :func:`unloaded` round trip and the process CPU time per row; a thread over the
    limit (``over``) leaves.
    """

    def __init__(self, ceiling: int, cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self._cpu_clock = cpu_clock
        self._active = 0
        self._changed = threading.Condition(threading.Lock())
        self._window_started = cpu_clock()
        self._round_trips: list[float] = []

    def enter(self) -> None:
        with self._changed:
            while self._active >= self.limit:
                self._changed.wait()
            self._active += 1

    def leave(self) -> None:
        with self._changed:
            self._active -= 1
            self._changed.notify()

    def over(self) -> bool:
        return self._active > self.limit

    def delivered(self, round_trip_s: float) -> None:
        """A row was delivered after ``round_trip_s``."""
        with self._changed:
            self._round_trips.append(round_trip_s)
            if len(self._round_trips) < WINDOW:
                return
            cpu = self._cpu_clock()
            per_row = (cpu - self._window_started) / len(self._round_trips)
            limit = needed(unloaded(self._round_trips), per_row, self.ceiling)
            raised, self.limit = limit > self.limit, limit
            self._window_started, self._round_trips = cpu, []
            if raised:
                self._changed.notify_all()
