"""One call's attempts: tenacity decides whether and when to try again; the caller waits.

tenacity's ``Retrying`` sleeps in the thread that called. A sending thread that sleeps
out a backoff or a ``Retry-After`` holds its place while the other rows wait, so under
a few percent of 429s and 5xx a backfill ran at the pace of the waits. Here tenacity's
policy (how many attempts, which failures, how long between) is driven one attempt at
a time: :meth:`Attempts.attempt` hands back how long to wait before the next, so the
sending threads park the call and go on with other rows, and the client's own calls
wait where a stop ends the wait at once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Generic, TypeVar

from tenacity import DoSleep, RetryCallState, Retrying

T = TypeVar("T")
log = logging.getLogger("sync.load")


class Attempts(Generic[T]):
    """The attempts of one call to ``fn`` under ``policy``, made one at a time."""

    def __init__(self, policy: Retrying, fn: Callable[[], T], *, what: str, of: int) -> None:
        self._policy = policy
        self._fn = fn
        self._state = RetryCallState(policy, fn, (), {})
        self.what = what  # e.g. "POST users", for the log line of each retry
        self._of = of  # the most attempts the policy makes, for that line
        self.made = 0  # attempts made so far
        self.last_error: BaseException | None = None
        self._result: T | None = None
        self._done = False

    def attempt(self) -> float | None:
        """Make the next attempt: None when the call succeeded (see :attr:`result`), else
        the seconds to wait before the next. The last failure is raised when the policy
        gives up (or does not retry it)."""
        self.made += 1
        try:
            self._result = self._fn()
            self._done = True
            return None
        except BaseException as exc:  # noqa: BLE001 - the policy below decides: retry or raise
            self.last_error = exc
            self._state.set_exception(sys.exc_info())  # type: ignore[arg-type]
        self._policy.begin()  # tenacity keeps statistics per thread: start this thread's
        do = self._policy.iter(self._state)  # raises the failure when it is not retried
        assert isinstance(do, DoSleep), do
        self._state.prepare_for_next_attempt()
        wait = float(do)
        log.info(
            "request failed; retrying",
            extra={
                "request": self.what,
                "error": str(self.last_error),
                "attempt": self.made,
                "attempts": self._of,
                "wait_s": round(wait, 1),
            },
        )
        return wait

    @property
    def result(self) -> T:
        assert self._done, "the call has not succeeded"
        return self._result  # type: ignore[return-value]
