"""The account's rate budget, shared by every process that sends on one state store.

``personyze.requests_per_second`` is a budget for the Personyze account, not for a
process: replicas of a Deployment, the children of ``backfill --processes`` and any
other run on the same (PostgreSQL) state store send within it together. Every
:data:`PERIOD_S` each process tells the store whether it sends (it took a turn to send
in the last :data:`ACTIVE_S`, or it just started) and learns how many others do; its
:class:`~sync.load.pacing.Pacing` then paces at ``ceiling / senders`` (:func:`share`).

A cut after 429s is the account's too: the process that made it writes the rate the
account can take (its own cut rate times the senders it knew), and each other process
takes its part of that rate (:meth:`Pacing.adopt`), grown by what the pacing would have
won back since (:func:`grown`), so an old cut fades instead of holding forever.

A store that cannot be read leaves the last share in force and says so once. A SQLite
state store serves one process: the wiring builds no budget, the local ceiling is all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from sync.errors import SyncError
from sync.load.pacing import GROWTH, Pacing

log = logging.getLogger("sync.load")
PERIOD_S = 0.5  # how often the senders are counted and cuts looked for
ACTIVE_S = 3.0  # a process that took a turn to send this recently is a sender


class Census(Protocol):
    """What the store says of the other senders (their clock is the store's)."""

    @property
    def others(self) -> int:
        """Processes other than this one that send now."""

    @property
    def cut_rate(self) -> float | None:
        """The account's rate after the newest cut another process made (None: none)."""

    @property
    def cut_at(self) -> float | None:
        """When it was made; what tells one cut from the next."""

    @property
    def cut_age_s(self) -> float:
        """How long ago it was made."""


class Account(Protocol):
    """The store's side: a row per sending process."""

    def beat(self, sending: bool, cut: float | None) -> Census:
        """Say whether this process sends (and the account's rate after a cut it just
        made); the others, as they stand."""

    def leave(self) -> None:
        """This process sends no more."""


def share(ceiling: float | None, senders: int) -> float | None:
    """One process's part of the account's ``ceiling`` among ``senders`` (itself included)."""
    return None if ceiling is None else ceiling / max(1, senders)


def grown(rate: float, age_s: float) -> float:
    """A cut's ``rate`` after ``age_s`` seconds of winning back :data:`GROWTH` a second."""
    return float(rate * (1 + GROWTH) ** max(0.0, age_s))


class Budget:
    """Feeds one process's pacing its share of the account's rate, and the cuts of others.

    :meth:`step` is one look at the store (the thread :meth:`start` begins calls it every
    :data:`PERIOD_S`, and at once after a cut here); ``clock`` is the pacing's.
    """

    def __init__(
        self,
        pacing: Pacing,
        account: Account,
        clock: Callable[[], float],
        *,
        period_s: float = PERIOD_S,
    ) -> None:
        self.pacing = pacing
        self.senders = 1  # this process and the others that send, as last counted
        self._account = account
        self._clock = clock
        self._period_s = period_s
        self._started = clock()
        self._cut: float | None = None  # this process's cut not told yet: its rate
        self._seen: float | None = None  # the newest cut of another process taken
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        pacing.on_cut = self.cut

    def cut(self, rate: float) -> None:
        """The pacing cut this process's rate to ``rate``: tell the others at once."""
        with self._lock:
            self._cut = rate
        self._wake.set()

    def sending(self) -> bool:
        now = self._clock()
        return now - self.pacing.last_take < ACTIVE_S or now - self._started < ACTIVE_S

    def step(self) -> None:
        """Count the senders, tell a cut made here, take one made elsewhere."""
        sending = self.sending()
        with self._lock:
            cut, self._cut = self._cut, None
        told = None if cut is None else cut * self.senders  # the account's rate after it
        try:
            census = self._account.beat(sending, told)
        except SyncError as exc:
            with self._lock:
                self._cut = self._cut if self._cut is not None else cut  # tell it next time
            if not self._failing:
                log.warning(
                    "rate budget: the state store did not answer", extra={"error": str(exc)}
                )
            self._failing = True
            return
        self._failing = False
        senders = census.others + 1  # this process, sending or about to
        if senders != self.senders:
            log.info(
                "rate share changed",
                extra={
                    "senders": senders,
                    "requests_per_second": share(self.pacing.ceiling, senders),
                },
            )
            self.pacing.set_share(share(self.pacing.ceiling, senders), self.senders / senders)
            self.senders = senders
        if census.cut_rate is not None and census.cut_at != self._seen:
            self._seen = census.cut_at
            self.pacing.adopt(grown(census.cut_rate, census.cut_age_s) / senders)

    def start(self) -> Budget:
        """One step now (the first request goes at the right share), then every period.

        When others send already, their shares are still counted without this process
        until their next step: it waits for that (a period, and a little) before its
        first request, so that together they never send more than the ceiling."""
        self.step()
        if self.senders > 1:
            self._stop.wait(self._period_s * 1.2)
        self._thread = threading.Thread(target=self._run, name="rate budget", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop looking, and leave the senders (the others' shares grow at once)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._account.leave()
        except SyncError as exc:  # the row fades by itself
            log.warning("rate budget: could not leave", extra={"error": str(exc)})

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._period_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.step()
