"""How fast to send: the ceiling the config sets, and the rate Personyze's 429s show it allows.

A 429 means one of two things. Either Personyze limits this account and we went past
the limit (the 429s follow our rate: slow down and they stop), or the service sheds
load now and then whatever we do (the 429s do not follow our rate: slowing down
only loses time). Halving on every 429 treats both as the first, so random 429s
drove a sync to its floor and kept it there. Here 429s are judged over windows of at
least a second and :data:`MIN_ANSWERS` answers (a window where most answers are 429
is judged as soon as it has that many, so an unpaced start does not spend a second
of requests on a limit):

- two windows in a row whose share of 429s stands more than :data:`TRIGGER` above the
  background (and above its chance ups and downs) cut the rate to a little under the rate
  Personyze accepted in it (a real limit is found in one step, not by halving);
- if the next window's share did not fall by half, the rate is cut once more (a
  limit's burst may have lent more than it allows); if it still did not, those 429s
  were not ours: their share becomes the background (ignored from then on) and the
  rate is put back;
- every window without a cut wins back :data:`GROWTH_FAR` of the rate per second,
  :data:`GROWTH` near the rate accepted at the last cut (while the rate is what holds
  the sync back), up to the ceiling; the background falls
  when windows show fewer 429s than it (it never rises but by an undone cut, or
  429s of a real limit would teach it to tolerate them).

The retried request itself waits as its 429's ``Retry-After`` says (the client's
retries); the others go on at the paced rate. Without a ceiling nothing is paced
until a window shows 429s that follow our rate.

The ceiling is the account's: processes that share a state store share it
(:mod:`sync.load.budget` says what this one's ``share`` is, and hands it the cuts
other processes made: :meth:`Pacing.adopt`); a cut made here is told to ``on_cut``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

log = logging.getLogger("sync.load")
FLOOR = 1.0  # requests/s: never slower, so a run always finishes
WINDOW_S = 1.0  # 429s are judged over at least this long...
MIN_ANSWERS = 20  # ... and this many answers
TRIGGER = 0.02  # a share of 429s this far above the background slows the sync...
SIGNIFICANCE = 2.0  # ... plus this many standard deviations of the background's noise
MARGIN = 0.95  # a cut goes to this share of the rate Personyze accepted
GROWTH = 0.02  # each second without a cut, the rate grows by this share near the limit...
GROWTH_FAR = 0.10  # ... and by this share below NEAR of the rate accepted at the last cut
NEAR = 0.9
BACKGROUND_WEIGHT = 0.2  # how fast the background falls when windows show fewer 429s
BURST_S = 0.1  # an idle client may send a tenth of a second's worth at once
HEAVY = 0.5  # a share of 429s at which a window is judged early and a cut never undone
CUTS_BEFORE_UNDO = 2  # cuts in a row that did not lessen the 429s before they are undone
LIMITING = 0.5  # requests held back by the ceiling this share of a span: the ceiling limits it
LIMITING_SPAN_S = 1.0  # ... judged over at least this long (a start's burst says nothing)


class Pacing:
    """The rate in force for every sending thread of one client, and its token bucket.

    ``ceiling``: personyze.requests_per_second, the account's; ``share``: the part of it
    this process may send (all of it unless :meth:`set_share` says otherwise)."""

    def __init__(
        self,
        ceiling: float | None,
        clock: Callable[[], float],
        wait: Callable[[float], None],
        on_cut: Callable[[float], None] | None = None,
    ) -> None:
        self.ceiling = ceiling
        self.share = ceiling
        self._rate = ceiling  # None: nothing is paced
        self.on_cut = on_cut  # told each cut made here (under the lock: it must not call back)
        self._clock = clock
        self._wait = wait
        self._lock = threading.Lock()
        self._tokens = 1.0
        self._last = clock()
        self.background = 0.0  # the share of 429s that did not follow our rate
        self._limit: float | None = None  # the rate Personyze accepted at the last cut
        self._over = False  # the last window's 429s stood above the background
        self._cut_from: tuple[float | None, float, int] | None = None  # rate, 429s, cuts
        self._window_start = self._last
        self._changed_at = self._last  # when the rate last changed
        self._answers = 0
        self._limited = 0
        self._held_s = 0.0  # time during which the ceiling held a request back, up to...
        self._held_until = self._last  # ... the end of the last wait it imposed
        self.last_take = -math.inf  # when a request last took its turn

    @property
    def rate(self) -> float | None:
        return self._rate

    def held_s(self) -> float:
        """Seconds so far during which a request waited for the ceiling (not for a rate
        cut to under it): the union of the waits, so threads waiting at once count once."""
        with self._lock:
            return self._held_s - max(0.0, self._held_until - self._clock())

    def now(self) -> float:
        return self._clock()

    def watch(self) -> CeilingWatch:
        """A watch of whether the ceiling limits the requests sent from now on."""
        return CeilingWatch(self)

    def take(self) -> None:
        """Wait for the next request's turn under the rate in force."""
        if self._rate is None:
            self.last_take = self._clock()
            return
        with self._lock:
            now = self.last_take = self._clock()
            rate = self._rate
            if rate is None:
                return
            burst = max(1.0, rate * BURST_S)
            self._tokens = min(burst, self._tokens + (now - self._last) * rate)
            self._last = now
            self._tokens -= 1.0
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
            if wait > 0 and rate == self.share:
                end = now + wait
                self._held_s += max(0.0, end - max(now, self._held_until))
                self._held_until = max(end, self._held_until)
        if wait > 0:
            self._wait(wait)

    def answered(self, limited: bool, sent_at: float) -> None:
        """Personyze answered a request sent at ``sent_at``; ``limited``: with a 429.

        Answers to requests sent before the last change of rate say nothing about it:
        they are not counted."""
        if sent_at < self._changed_at:
            return
        with self._lock:
            self._answers += 1
            self._limited += limited
            now = self._clock()
            elapsed = now - self._window_start
            if self._answers < MIN_ANSWERS:
                return
            heavy = self._limited >= self._answers * HEAVY
            if elapsed < WINDOW_S and not (heavy and self._answers - self._limited >= MIN_ANSWERS):
                return  # (most answers 429: judged at once, once enough were accepted)
            self._judge(self._limited / self._answers, self._answers, elapsed)
            self._window_start, self._answers, self._limited = now, 0, 0

    def set_share(self, share: float | None, factor: float = 1.0) -> None:
        """This process's part of the ceiling is now ``share``, the senders having changed
        in number by ``factor`` (as many before as after: 1): a rate at the old share goes
        to the new one, a rate under it (a cut) and the limit found scale by ``factor``."""
        with self._lock:
            before, self.share = self.share, share
            if self._limit is not None:
                self._limit *= factor
            if self._rate is None:
                return
            at_share = before is not None and self._rate >= before
            rate = share if at_share and share is not None else self._rate * factor
            self._rate = self._capped(max(FLOOR, rate))

    def adopt(self, rate: float) -> bool:
        """Another process sharing the account cut its rate: ``rate`` is this process's
        part of what it found. Taken (True) when under the rate in force, as a cut here
        would be, except that it is not undone here (its maker judges it)."""
        with self._lock:
            rate = self._capped(max(FLOOR, rate))
            if self._rate is not None and rate >= self._rate:
                return False
            self._limit = rate / MARGIN
            self._over, self._cut_from = False, None
            self._set(rate, by="another process")
            self._window_start, self._answers, self._limited = self._clock(), 0, 0
            return True

    def _judge(self, share: float, answers: int, elapsed: float) -> None:
        """A window closed with ``share`` of its ``answers`` answered 429."""
        accepted = answers * (1 - share) / elapsed
        if self._cut_from is not None:
            before, share_then, cuts = self._cut_from
            self._cut_from = None
            helped = share < share_then / 2 and share <= self.background + TRIGGER
            helpless = share > 0 and not helped  # slowing down did not lessen the 429s
            # (at the floor it could not show; when most answers were 429, the rate
            # accepted may have been a burst the server allowed: cut again instead)
            if helpless and self._rate != FLOOR and share_then < HEAVY:
                if cuts < CUTS_BEFORE_UNDO:  # the first cut may not have gone below a
                    self._cut_from = (before, share_then, cuts + 1)  # limit whose burst
                    self._cut(self._capped(max(FLOOR, accepted * MARGIN)))  # lent a little
                    return
                self.background = share
                self._limit = None
                self._set(None if before is None else self._capped(before))
                return
        noise = math.sqrt(self.background * (1 - self.background) / answers)
        over = share - self.background > TRIGGER + SIGNIFICANCE * noise
        sustained, self._over = over and (self._over or share >= HEAVY), over
        if sustained:  # (two windows in a row, or one where most answers were 429)
            self._over = False
            self._cut_from = (self._rate, share, 1)
            self._limit = accepted
            self._cut(self._capped(max(FLOOR, accepted * MARGIN)))
            return
        if over:  # once may be chance: wait for the next window
            return
        if share < self.background:  # 429s that stopped are forgotten; new ones must show
            self.background += (share - self.background) * BACKGROUND_WEIGHT  # they are not ours
        sent = answers / elapsed
        if self._rate is not None and sent >= self._rate * 0.8:  # the rate holds us back
            near = self._limit is not None and self._rate >= self._limit * NEAR
            growth = GROWTH if near else GROWTH_FAR
            self._rate = self._capped(self._rate * (1 + growth * elapsed))

    def _cut(self, rate: float) -> None:
        self._set(rate)
        if self.on_cut is not None:
            self.on_cut(rate)

    def _set(self, rate: float | None, by: str = "this process") -> None:
        log.info(
            "pace changed",
            extra={
                "requests_per_second": None if rate is None else round(rate, 1),
                "was": None if self._rate is None else round(self._rate, 1),
                "background_429_share": round(self.background, 3),
                "cut_by": by,
            },
        )
        self._rate = rate
        self._changed_at = self._clock()

    def _capped(self, rate: float) -> float:
        return rate if self.share is None else min(self.share, rate)


class CeilingWatch:
    """Whether the ceiling is what limits the requests sent since the watch began.

    It does when requests were held back waiting for it during :data:`LIMITING` of the
    time or more: then the run would go faster with a higher ceiling, not otherwise."""

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing
        self._held = pacing.held_s()
        self._start = pacing.now()

    def share(self) -> float:
        """The share of the time since the start that requests waited for the ceiling."""
        elapsed = self.pacing.now() - self._start
        return (self.pacing.held_s() - self._held) / elapsed if elapsed > 0 else 0.0

    def limiting(self) -> bool:
        return (
            self.pacing.ceiling is not None
            and self.pacing.now() - self._start >= LIMITING_SPAN_S
            and self.share() >= LIMITING
        )
