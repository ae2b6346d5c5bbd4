"""Send a batch of payloads concurrently and say, row by row, what became of each.

A payload that carries ``user_id``, ``email`` or ``fb_id`` merges on Personyze's side,
so resending it is harmless and the client retries it freely. One that carries only
``internal_id`` would create a second user if resent after a lost answer (the live
service does not merge on internal_id). Such a payload is retried only after
failures that certainly changed nothing; after any other failure, the users changed
since it was sent are read back (by ``data_last_modified``) and a user whose
internal_id matches is adopted before anything is sent again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
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
MERGING_IDENTIFIERS = ("user_id", "email", "fb_id")
CLOCK_MARGIN_S = 2.0  # Date headers have one-second resolution
UNKNOWN_CLOCK_MARGIN_S = 300.0  # when no Date header was ever seen


@dataclass
class Outgoing:
    """One row's payload on its way to Personyze.

    ``action``: ``upsert`` POSTs (creates or merges); ``update`` PUTs to the user
    ``payload["user_id"]`` and never creates one; ``delete`` deletes that user.
    """

    key: str
    payload: dict[str, Any]
    action: Literal["upsert", "update", "delete"] = "upsert"

    @property
    def repeatable(self) -> bool:
        return self.action != "upsert" or any(name in self.payload for name in MERGING_IDENTIFIERS)


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
class Failed:
    error: SyncError


Result = Delivered | Refused | Missing | Failed


def reconcile(client: PersonyzeClient, wanted: dict[str, str], since: float) -> dict[str, int]:
    """Find users created for ``wanted`` (internal_id -> row key) since ``since``.

    Returns row key -> user_id for each internal_id found (the lowest user_id if a
    duplicate already exists).
    """
    found: dict[str, int] = {}
    for user in client.users_changed_since(int(since), ["internal_id"]):
        internal_id = user.get("internal_id")
        key = wanted.get(str(internal_id)) if internal_id is not None else None
        if key is not None:
            user_id = int(user["user_id"])
            found[key] = min(found.get(key, user_id), user_id)
    return found


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
        max_rounds: int,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        stop: threading.Event | None = None,
        backoff: Callable[[int], float] = lambda round_no: min(0.5 * 2 ** (round_no - 1), 30.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._client = client
        self._backoff = backoff  # seconds to wait before reconciliation round n
        self._stop = stop or threading.Event()
        self._pool = pool
        self._max_rounds = max_rounds
        self._wall = wall
        self._sleep = sleep
        self._fatal: FatalError | None = None
        self._aborted = threading.Event()

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
        """Send one item, reconciling it first whenever an answer was lost."""
        for round_no in range(1, self._max_rounds + 1):
            sent_at = self._wall()
            result = self._one(item)
            if item.repeatable or not _lost_answer(result) or round_no == self._max_rounds:
                return result
            self._sleep(self._backoff(round_no))
            try:
                self.adopt_found([item], sent_at)
            except SyncError as exc:
                return Failed(exc)
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

    def adopt_found(self, items: Iterable[Outgoing], sent_at: float) -> dict[str, int]:
        """Give each item whose user Personyze already made that user's id."""
        by_internal_id = {str(it.payload["internal_id"]): it for it in items}
        if not by_internal_id:
            return {}
        if not self._client.knows_server_time:
            self._client.check_key()  # any answer's Date header tells Personyze's clock
        since = self.server_since(sent_at)
        found = reconcile(self._client, {k: it.key for k, it in by_internal_id.items()}, since)
        for item in by_internal_id.values():
            if item.key in found:
                item.payload["user_id"] = found[item.key]
        return found

    def server_since(self, sent_at: float) -> float:
        if self._client.knows_server_time:
            return self._client.server_time(sent_at) - CLOCK_MARGIN_S
        return sent_at - UNKNOWN_CLOCK_MARGIN_S

    def _one(self, item: Outgoing) -> Result:
        if self._fatal is not None:  # e.g. the key was refused: send nothing more
            return Failed(self._fatal)
        if self._stop.is_set():  # a clean stop: what is in flight finishes, nothing new starts
            return Failed(Stopped("stopping"))
        if self._aborted.is_set():
            return Failed(Stopped("not sent: an earlier row could not be delivered"))
        try:
            return self._apply(item)
        except RejectedError as exc:
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
