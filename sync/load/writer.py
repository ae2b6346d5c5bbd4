"""Send a batch of payloads concurrently and say, row by row, what became of each.

How a payload is sent is its object's (:mod:`sync.load.targets`); what follows is the
users'. A products POST patches by internal_id, so it is always retried freely.

A payload that carries ``user_id`` or ``email`` merges on Personyze's side, so
resending it is harmless and the client retries it freely. One that carries
neither (``internal_id`` or ``fb_id`` only: the live service merges on neither)
would create a second user if resent after a lost answer. Such a payload is retried
only after failures that certainly changed nothing (a 429, a connection never made);
after any other failure its answer may still be applied later, so it is never sent
again in this run: it ends :class:`Unresolved`, its mark stays in the state store,
and the next run reconciles it (:mod:`sync.load.reconcile`) before anything else.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from queue import SimpleQueue
from typing import Any, Literal, TypeVar

from sync.errors import FatalError, RejectedError, RetriableError, Stopped, SyncError
from sync.load.client import PersonyzeClient
from sync.load.inflight import InFlightLimit
from sync.load.retries import Attempts
from sync.load.targets import MERGING_IDENTIFIERS, USERS, Target, merges

__all__ = ["MERGING_IDENTIFIERS", "merges"]  # their home is sync.load.targets
T = TypeVar("T")
R = TypeVar("R")
ROW_NOT_FOUND = "row not found"  # Personyze's answer to a write naming a user_id it lacks


@dataclass
class Outgoing:
    """One row's payload on its way to Personyze.

    ``action``: ``upsert`` POSTs (creates or merges); ``update`` PUTs to the user
    ``payload["user_id"]`` and never creates one; ``delete`` deletes that user.
    ``known``: the payload's user_id is the one the identity map keeps for the row
    (not a mapped column), so "Row not found" means Personyze deleted that user.
    """

    key: str
    payload: dict[str, Any]
    action: Literal["upsert", "update", "delete"] = "upsert"
    known: bool = False


@dataclass(frozen=True)
class Delivered:
    user_id: int


@dataclass(frozen=True)
class Refused:
    reason: str
    status: int


@dataclass(frozen=True)
class Missing:
    """An update found no such user in Personyze (it was not created)."""


@dataclass(frozen=True)
class Gone:
    """The user the identity map named was deleted in Personyze: send the row as new."""


@dataclass(frozen=True)
class Unresolved:
    """A write that cannot merge got no certain answer: it may still be applied.

    Never resent in this run; the next run reconciles it from its mark.
    """

    error: SyncError


@dataclass(frozen=True)
class Failed:
    error: SyncError
    sent: bool = True  # False: refused before a request went out (a stop, an abort)


Result = Delivered | Refused | Missing | Gone | Unresolved | Failed
PARKED_POLL_S = 0.25  # how often parked calls look for a stop
_Parked = tuple[float, int, Callable[[], None], Callable[[Any], None]]  # due, order, call, then


@dataclass(frozen=True)
class Later:
    """Call ``resume`` again in ``seconds``: a retry waiting out its backoff, parked."""

    seconds: float
    resume: Callable[[], Any]


class SenderThreads:
    """A fixed set of threads that run what is given them, in the order given.

    ThreadPoolExecutor keeps a semaphore of idle threads that every submit and every
    finished call take in turn; with tens of threads sending hundreds of requests a
    second, contention on that one lock cost a tenth of the CPU of a request. These
    threads only share a queue. :meth:`run` hands a call's outcome to a callback,
    without the lock and condition a ``Future`` is built with. When the round trip is
    short, only a few of the threads work at once (:class:`InFlightLimit`).

    A call that answers :class:`Later` is parked, not slept: the thread goes on with
    the next, and one timer thread puts the call back in the queue when it is due,
    or at once when ``stop()`` turns true.
    """

    def __init__(self, threads: int, name: str, stop: Callable[[], bool] = lambda: False) -> None:
        self.in_flight = InFlightLimit(threads)
        self._stop = stop
        self._calls: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._parked: list[_Parked] = []
        self._order = itertools.count()
        self._parked_changed = threading.Condition(threading.Lock())
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}") for i in range(threads)
        ]
        self._timer = threading.Thread(target=self._unpark, name=f"{name}-timer")
        for thread in [*self._threads, self._timer]:
            thread.start()

    def run(self, fn: Callable[[T], Any], arg: T, then: Callable[[Any], None]) -> None:
        """Call ``fn(arg)`` on a sending thread, then ``then`` with its result or exception.

        A :class:`Later` result parks the call: its ``resume`` runs on its turn, and so on.
        """
        self._calls.put(partial(self._call_then, partial(fn, arg), then))

    def __enter__(self) -> SenderThreads:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()

    def shutdown(self, wait: bool = True) -> None:
        """Let every thread finish what was given it, then end; parked calls are stopped."""
        with self._parked_changed:
            self._closing = True
            parked, self._parked = self._parked, []
            self._parked_changed.notify()
        for _, _, _, then in parked:
            then(Stopped("not retried: the run ended"))
        for _ in self._threads:
            self._calls.put(None)
        if wait:
            for thread in [*self._threads, self._timer]:
                thread.join()

    def _call_then(self, call: Callable[[], Any], then: Callable[[Any], None]) -> None:
        try:
            outcome = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the callback, which re-raises it
            outcome = exc
        if not isinstance(outcome, Later):
            then(outcome)
            return
        resume = partial(self._call_then, outcome.resume, then)
        with self._parked_changed:
            if not self._closing:
                due = time.monotonic() + outcome.seconds
                entry: _Parked = (due, next(self._order), resume, then)
                heapq.heappush(self._parked, entry)
                self._parked_changed.notify()
                return
        then(Stopped("not retried: the run ended"))

    def _unpark(self) -> None:
        """Put parked calls back in the queue when they are due, or at once on a stop."""
        with self._parked_changed:
            while not self._closing:
                if not self._parked:
                    self._parked_changed.wait()
                    continue
                now = time.monotonic()
                stopping = self._stop()
                while self._parked and (stopping or self._parked[0][0] <= now):
                    self._calls.put(heapq.heappop(self._parked)[2])
                if self._parked:
                    self._parked_changed.wait(min(self._parked[0][0] - now, PARKED_POLL_S))

    def _work(self) -> None:
        """Take calls while this thread has a place under the in-flight limit."""
        limit = self.in_flight
        while True:
            limit.enter()
            try:
                while not limit.over():
                    call = self._calls.get()
                    if call is None:
                        return
                    call()
            finally:
                limit.leave()


class Writer:
    """Sends payloads through a shared pool of threads, ``concurrency`` at a time."""

    def __init__(
        self,
        client: PersonyzeClient,
        pool: SenderThreads,
        *,
        stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float],
        target: Target = USERS,
    ) -> None:
        self._clock = clock
        self._client = client
        self.target = target  # how each payload is sent: users, or products
        self._stop = stop  # true: a clean stop, or the run lost its lease
        self._pool = pool
        self._fatal: FatalError | None = None
        self._aborted = threading.Event()

    @property
    def client(self) -> PersonyzeClient:
        return self._client

    def send(self, items: list[Outgoing]) -> list[Result]:
        """Deliver a batch through the pool and wait for it; results in the items' order."""
        outcomes: list[Result | BaseException | None] = [None] * len(items)
        finished = threading.Semaphore(0)

        def keep(at: int, outcome: Result | BaseException) -> None:
            outcomes[at] = outcome
            finished.release()

        for at, item in enumerate(items):
            self.start(item, partial(keep, at))
        for _ in items:
            finished.acquire()
        results: list[Result] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            assert outcome is not None
            results.append(outcome)
        return results

    def start(self, item: Outgoing, then: Callable[[Result | BaseException], None]) -> None:
        """Deliver one item on the pool; ``then`` gets its result in a sending thread."""
        self._pool.run(self._step, _Sending(item), then)

    def _step(self, sending: _Sending) -> Result | Later:
        """One attempt at an item; :class:`Later` parks it for its backoff.

        The in-flight limit hears how long the delivering attempt took; an item that
        cannot merge and lost its answer ends unresolved.
        """
        started = self._clock()
        result = self._attempt(sending)
        if isinstance(result, Later):
            return result
        if isinstance(result, Delivered):
            self._pool.in_flight.delivered(self._clock() - started)
        if not self._repeatable(sending.item) and _lost_answer(result):
            assert isinstance(result, Failed)
            return Unresolved(result.error)
        return result

    def find_by_email(self, emails: list[str]) -> dict[str, int]:
        """Lower-cased email -> user_id of the users Personyze has with these emails."""
        found: dict[str, int] = {}
        for user in self._client.users_by_email(emails, []):
            email, user_id = str(user.get("email", "")).lower(), int(user["user_id"])
            found[email] = min(found.get(email, user_id), user_id)
        return found

    def abort(self) -> None:
        """Start nothing more (a row could not be delivered): what is in flight finishes."""
        self._aborted.set()

    def _attempt(self, sending: _Sending) -> Result | Later:
        item = sending.item
        if sending.attempts is None:  # nothing sent yet
            if self._fatal is not None:  # e.g. the key was refused: send nothing more
                return Failed(self._fatal, sent=False)
            if self._stop():  # a clean stop: what is in flight finishes, nothing new starts
                return Failed(Stopped("stopping"), sent=False)
            if self._aborted.is_set():
                return Failed(Stopped("not sent: an earlier row could not be delivered"), False)
            what = f"sending row {item.key}"
            sending.attempts = self._client.attempts(
                partial(self._apply, item), what, self._repeatable(item)
            )
        elif self._stop() or self._fatal is not None or self._aborted.is_set():
            error = sending.attempts.last_error  # the failure it was waiting to retry
            return Failed(error if isinstance(error, SyncError) else Stopped("stopping"))
        try:
            wait = sending.attempts.attempt()
        except RejectedError as exc:
            if item.known and ROW_NOT_FOUND in exc.reason.lower():
                return Gone()
            return Refused(exc.reason, exc.status)
        except FatalError as exc:
            self._fatal = exc
            return Failed(exc)
        except SyncError as exc:
            return Failed(exc)
        if wait is not None:
            return Later(wait, partial(self._step, sending))
        return sending.attempts.result

    def _apply(self, item: Outgoing) -> Delivered | Missing:
        """One attempt at an item's request."""
        found = self.target.apply(self._client, item.action, item.payload)
        return Missing() if found is None else Delivered(found)

    def _repeatable(self, item: Outgoing) -> bool:
        return self.target.repeatable(item.action, item.payload)


@dataclass
class _Sending:
    """An item on its way, with the attempts made at it (None: none yet)."""

    item: Outgoing
    attempts: Attempts[Delivered | Missing] | None = None


def _lost_answer(result: Result) -> bool:
    return (
        isinstance(result, Failed)
        and isinstance(result.error, RetriableError)
        and not result.error.unapplied
    )
