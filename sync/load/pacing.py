"""How fast to send: the ceiling the config sets, and the rate Personyze's 429s show it allows.

A 429 means one of two things. Either Personyze limits this account and we went past
the limit (the 429s follow our rate: slow down and they stop), or the service sheds
load now and then whatever we do (the 429s do not follow our rate: slowing down
only loses time). Halving on every 429 treats both as the first, so random 429s
drove a sync to its floor and kept it there. Here 429s are judged over windows of at
least a second and :data:`MIN_ANSWERS` answers:

- a window whose share of 429s stands more than :data:`TRIGGER` above the background
  (and above its chance ups and downs) cuts the rate to a little under the rate
  Personyze accepted in it (a real limit is found in one step, not by halving);
- if the next window's share did not fall by half, those 429s were not ours: their
  share becomes the background (ignored from then on) and the rate is put back;
- every window without a cut wins back :data:`GROWTH` of the rate per second (while
  the rate is what holds the sync back), up to the ceiling; the background falls
  when windows show fewer 429s than it (it never rises but by an undone cut, or
  429s of a real limit would teach it to tolerate them).

The retried request itself waits as its 429's ``Retry-After`` says (the client's
retries); the others go on at the paced rate. Without a ceiling nothing is paced
until a window shows 429s that follow our rate.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

FLOOR = 1.0  # requests/s: never slower, so a run always finishes
WINDOW_S = 1.0  # 429s are judged over at least this long...
MIN_ANSWERS = 20  # ... and this many answers
TRIGGER = 0.02  # a share of 429s this far above the background slows the sync...
SIGNIFICANCE = 2.0  # ... plus this many standard deviations of the background's noise
MARGIN = 0.95  # a cut goes to this share of the rate Personyze accepted
GROWTH = 0.02  # each second without a cut, the rate grows by this share
BACKGROUND_WEIGHT = 0.2  # how fast the background falls when windows show fewer 429s
BURST_S = 0.1  # an idle client may send a tenth of a second's worth at once


class Pacing:
    """The rate in force for every sending thread of one client, and its token bucket."""

    def __init__(
        self,
        ceiling: float | None,
        clock: Callable[[], float],
        wait: Callable[[float], None],
    ) -> None:
        self.ceiling = ceiling
        self._rate = ceiling  # None: nothing is paced
        self._clock = clock
        self._wait = wait
        self._lock = threading.Lock()
        self._tokens = 1.0
        self._last = clock()
        self.background = 0.0  # the share of 429s that did not follow our rate
        self._cut_from: tuple[float | None, float] | None = None  # (rate before, its 429s)
        self._window_start = self._last
        self._answers = 0
        self._limited = 0

    @property
    def rate(self) -> float | None:
        return self._rate

    def take(self) -> None:
        """Wait for the next request's turn under the rate in force."""
        if self._rate is None:
            return
        with self._lock:
            rate = self._rate
            if rate is None:
                return
            now = self._clock()
            burst = max(1.0, rate * BURST_S)
            self._tokens = min(burst, self._tokens + (now - self._last) * rate)
            self._last = now
            self._tokens -= 1.0
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._wait(wait)

    def answered(self, limited: bool) -> None:
        """Personyze answered a request; ``limited``: with a 429."""
        with self._lock:
            self._answers += 1
            self._limited += limited
            now = self._clock()
            elapsed = now - self._window_start
            if elapsed < WINDOW_S or self._answers < MIN_ANSWERS:
                return
            self._judge(self._limited / self._answers, self._answers, elapsed)
            self._window_start, self._answers, self._limited = now, 0, 0

    def _judge(self, share: float, answers: int, elapsed: float) -> None:
        """A window closed with ``share`` of its ``answers`` answered 429."""
        if self._cut_from is not None:
            before, share_then = self._cut_from
            self._cut_from = None
            helpless = share > 0 and share >= share_then / 2  # slowing down did not help
            if helpless and self._rate != FLOOR:  # (at the floor, it could not show)
                self.background = share
                self._rate = before
                return
        noise = math.sqrt(self.background * (1 - self.background) / answers)
        if share - self.background > TRIGGER + SIGNIFICANCE * noise:
            accepted = answers * (1 - share) / elapsed
            self._cut_from = (self._rate, share)
            self._rate = self._capped(max(FLOOR, accepted * MARGIN))
            return
        if share < self.background:  # 429s that stopped are forgotten; new ones must show
            self.background += (share - self.background) * BACKGROUND_WEIGHT  # they are not ours
        sent = answers / elapsed
        if self._rate is not None and sent >= self._rate * 0.8:  # the rate holds us back
            self._rate = self._capped(self._rate * (1 + GROWTH * elapsed))

    def _capped(self, rate: float) -> float:
        return rate if self.ceiling is None else min(self.ceiling, rate)
