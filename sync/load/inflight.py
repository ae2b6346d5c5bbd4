"""How many requests to keep in flight: enough to cover the round trip, at most ``concurrency``.

A process that sends as fast as its CPU allows gains nothing from more requests in
flight than it takes to cover the round trip while it prepares the next ones: the
unloaded round trip divided by the process's CPU time per request, plus a little
headroom. Against a remote API (tens of milliseconds) that is always more than
``concurrency``, so nothing changes there. On loopback or within a host, where an
answer comes back in less time than the process spends on a row, it is a handful:
the other sending threads would only take turns at the interpreter's lock (32 in
flight on loopback cost 15 % more CPU per row than 3, and were slower).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

HEADROOM = 1  # requests beyond the estimate: the next is ready when an answer comes
WINDOW = 256  # completed requests between two estimates


def needed(least_round_trip_s: float, cpu_per_request_s: float, ceiling: int) -> int:
    """Requests in flight that keep the process busy: round trip ÷ CPU per request."""
    if cpu_per_request_s <= 0 or not math.isfinite(least_round_trip_s):
        return ceiling
    wanted = math.ceil(least_round_trip_s / cpu_per_request_s) + HEADROOM
    return max(1, min(ceiling, wanted))


class InFlightLimit:
    """How many sending threads may be at work at once; the limit follows :func:`needed`.

    A thread ``enter``s before it takes work and ``leave``s when it stops; it keeps its
    place from one request to the next (``ended`` after each), so the same few threads
    stay busy and the others sleep, instead of all of them taking turns. Every
    ``WINDOW`` requests the limit is set again from the least round trip and the process
    CPU time per request seen in that window; a thread over the limit (``over``) leaves.
    """

    def __init__(self, ceiling: int, cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self._cpu_clock = cpu_clock
        self._active = 0
        self._changed = threading.Condition(threading.Lock())
        self._window_started = cpu_clock()
        self._ended = 0
        self._least = math.inf

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

    def ended(self, round_trip_s: float) -> None:
        """One request ended after ``round_trip_s``."""
        with self._changed:
            self._least = min(self._least, round_trip_s)
            self._ended += 1
            if self._ended < WINDOW:
                return
            cpu = self._cpu_clock()
            per_request = (cpu - self._window_started) / self._ended
            raised = (limit := needed(self._least, per_request, self.ceiling)) > self.limit
            self.limit = limit
            self._window_started, self._ended, self._least = cpu, 0, math.inf
            if raised:
                self._changed.notify_all()
