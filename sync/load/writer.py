"""Send a batch of payloads concurrently and say, row by row, what became of each.

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

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial
from queue import SimpleQueue
from typing import Any, Literal, TypeVar

from sync.errors import FatalError, RejectedError, RetriableError, Stopped, SyncError
from sync.load.client import PersonyzeClient
from sync.load.inflight import InFlightLimit

T = TypeVar("T")
R = TypeVar("R")
MERGING_IDENTIFIERS = ("user_id", "email")  # the only ones the live service resolves


def merges(payload: Mapping[str, Any]) -> bool:
    """Whether Personyze merges a resend of this payload into the user it made."""
    return any(payload.get(name) not in (None, "") for name in MERGING_IDENTIFIERS)


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

    @property
    def repeatable(self) -> bool:
        return self.action != "upsert" or merges(self.payload)


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


class SenderThreads(Executor):
    """A fixed set of threads that run what is given them, in the order given.

    ThreadPoolExecutor keeps a semaphore of idle threads that every submit and every
    finished call take in turn; with tens of threads sending hundreds of requests a
    second, contention on that one lock cost a tenth of the CPU of a request. These
    threads only share a queue. :meth:`run` hands a call's outcome to a callback,
    without the lock and condition a ``Future`` is built with. When the round trip is
    short, only a few of the threads work at once (:class:`InFlightLimit`).
    """

    def __init__(self, threads: int, name: str) -> None:
        self.in_flight = InFlightLimit(threads)
        self._calls: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}") for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable[[T], R], arg: T, then: Callable[[R | BaseException], None]) -> None:
        """Call ``fn(arg)`` on a sending thread, then ``then`` with its result or exception."""
        self._calls.put(partial(_call_then, fn, arg, then))

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        future: Future[R] = Future()
        self._calls.put(partial(_settle, future, partial(fn, *args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let every thread finish what was given it, then end."""
        for _ in self._threads:
            self._calls.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

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


def _call_then(fn: Callable[[T], R], arg: T, then: Callable[[R | BaseException], None]) -> None:
    try:
        outcome: R | BaseException = fn(arg)
    except BaseException as exc:  # noqa: BLE001 - handed to the callback, which re-raises it
        outcome = exc
    then(outcome)


def _settle(future: Future[R], call: Callable[[], R]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as exc:  # noqa: BLE001 - the future hands it to its waiter
        future.set_exception(exc)


class Writer:
    """Sends payloads through a shared pool of threads, ``concurrency`` at a time."""

    def __init__(
        self,
        client: PersonyzeClient,
        pool: SenderThreads,
        *,
        stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._client = client
        self._stop = stop  # true: a clean stop, or the run lost its lease
        self._pool = pool
        self._fatal: FatalError | None = None
        self._aborted = threading.Event()

    @property
    def client(self) -> PersonyzeClient:
        return self._client

    def send(self, items: list[Outgoing]) -> list[Result]:
        """Deliver a batch through the pool; results in the items' order."""
        return list(self._pool.map(self.deliver, items))

    def start(self, item: Outgoing, then: Callable[[Result | BaseException], None]) -> None:
        """Deliver one item on the pool; ``then`` gets its result in the sending thread."""
        self._pool.run(self._deliver_timed, item, then)

    def _deliver_timed(self, item: Outgoing) -> Result:
        """:meth:`deliver`, telling the pool's in-flight limit how long a delivery took."""
        started = self._clock()
        result = self.deliver(item)
        if isinstance(result, Delivered):
            self._pool.in_flight.delivered(self._clock() - started)
        return result

    def deliver(self, item: Outgoing) -> Result:
        """Send one item; one that cannot merge and lost its answer ends unresolved."""
        result = self._one(item)
        if not item.repeatable and _lost_answer(result):
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

    def _one(self, item: Outgoing) -> Result:
        if self._fatal is not None:  # e.g. the key was refused: send nothing more
            return Failed(self._fatal, sent=False)
        if self._stop():  # a clean stop: what is in flight finishes, nothing new starts
            return Failed(Stopped("stopping"), sent=False)
        if self._aborted.is_set():
            return Failed(Stopped("not sent: an earlier row could not be delivered"), sent=False)
        try:
            return self._apply(item)
        except RejectedError as exc:
            if item.known and ROW_NOT_FOUND in exc.reason.lower():
                return Gone()
            return Refused(exc.reason, exc.status)
        except FatalError as exc:
            self._fatal = exc
            return Failed(exc)
        except SyncError as exc:
            return Failed(exc)

    def _apply(self, item: Outgoing) -> Delivered | Missing:
        if item.action == "upsert":
            return Delivered(self._client.upsert(item.payload, repeatable=item.repeatable))
        user_id = int(item.payload["user_id"])
        if item.action == "delete":
            self._client.delete(user_id)  # 0: already gone, as wanted
            return Delivered(user_id)
        changes = {k: v for k, v in item.payload.items() if k != "user_id"}
        return Delivered(user_id) if self._client.update("user_id", user_id, changes) else Missing()


def _lost_answer(result: Result) -> bool:
    return (
        isinstance(result, Failed)
        and isinstance(result.error, RetriableError)
        and not result.error.unapplied
    )
