"""The sandbox's faults: what goes wrong, the seeded draw, the rate limit, slow writes.

:class:`Faults` says what goes wrong and how often; :class:`FaultDrawer` decides, for
each request, which fault (if any) it gets; :func:`trickle` and :func:`endless` write
the two answers that are not a plain status and body. Nothing here knows HTTP routing
or the store: ``server.py`` serves what the draw decided.

Order per request in the fault scope: first the ``limit_rps`` gate (a token bucket; a
request beyond it is answered 429 at once, with no latency and no draw), then the
latency, then one seeded draw that picks at most one of the exclusive kinds.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

FaultKind: TypeAlias = Literal[
    "error",
    "rate_limit",
    "drop",
    "lost_answer",
    "wrong_shape",
    "late_apply",
    "trickle",
    "endless",
    "limit_rps",
]

OBJECTS = frozenset({"users", "products", "user_lists", "user_list_users"})
"""The REST objects (``/rest/<object>``) every fault hits alike."""

ENDLESS_CHUNK = b'{"user_id":1},' * (64 * 1024 // len(b'{"user_id":1},'))
"""One chunk of an endless body (just under 64 KiB of JSON-looking bytes)."""


@dataclass(frozen=True)
class Faults:
    """What goes wrong, and how often; each rate a fraction of requests (0..1).

    The kinds are exclusive per request (one draw decides), so their rates must add
    up to at most 1. ``latency_s`` (plus up to ``latency_jitter_s``) is added to every
    affected request. Faults hit the objects (``/rest/users``, ``/rest/products``,
    ``/rest/user_lists``, ``/rest/user_list_users``: :data:`OBJECTS`) alike, and
    ``/rest/account`` too when ``include_account`` is set. ``lost_answer_rate``
    applies the request, then answers 500 or drops the connection: the change is
    made, the answer lost.

    ``wrong_shape_rate``: a GET on an object is answered 200 with the JSON object
    ``{"result": "ok"}`` instead of an array. ``late_apply_rate``: a POST, PUT or
    DELETE on an object gets no answer for ``late_apply_s`` seconds (the client
    should time out first), then the write is applied and the connection closed,
    still unanswered: the change lands after the client gave up (see
    :meth:`SandboxServer.late_pending`). A request of another method drawn for either
    of these two is served normally (and logged with no fault).

    ``trickle_rate``: the request is served normally (a write IS applied), but the
    whole answer, status line, headers and body, is written one byte at a time,
    ``trickle_s`` seconds apart: a slow server that never trips a per-read timeout.
    ``endless_rate``: the request is not applied; the answer is ``200`` with
    ``Transfer-Encoding: chunked`` and chunks of ``[{"user_id":1},{"user_id":1},...``
    (64 KiB each) written until the client closes the connection (or the sandbox
    stops, or a write blocks for the idle timeout); it is logged with status 200.

    ``limit_rps``: a real rate limit, not part of the draw and applied before it: a
    token bucket holding ``limit_burst`` tokens (default: one second's worth,
    ``max(1, limit_rps)``), refilled at ``limit_rps`` tokens a second and full at the
    start (and whenever faults are set). Every request in the fault scope (the same
    ``include_account`` and ``writes_only`` rules) takes a token; one that finds none
    is answered ``429`` with ``Retry-After`` set to the whole seconds until a token is
    free (rounded up, at least 1; ``retry_after_s`` is for ``rate_limit_rate`` only),
    is not applied, gets no latency, consumes no draw, and is logged as ``limit_rps``
    (and counted by :meth:`SandboxServer.limited`). A refused request takes no token.
    """

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float | None = 1.0
    drop_rate: float = 0.0
    lost_answer_rate: float = 0.0
    wrong_shape_rate: float = 0.0
    late_apply_rate: float = 0.0
    late_apply_s: float = 3.0
    trickle_rate: float = 0.0
    trickle_s: float = 0.5
    endless_rate: float = 0.0
    limit_rps: float | None = None
    limit_burst: float | None = None  # None: max(1, limit_rps), one second's worth
    include_account: bool = False
    writes_only: bool = False  # faults hit POST, PUT and DELETE only; reads are served
    seed: int | None = None

    def __post_init__(self) -> None:
        rates = {
            "error_rate": self.error_rate,
            "rate_limit_rate": self.rate_limit_rate,
            "drop_rate": self.drop_rate,
            "lost_answer_rate": self.lost_answer_rate,
            "wrong_shape_rate": self.wrong_shape_rate,
            "late_apply_rate": self.late_apply_rate,
            "trickle_rate": self.trickle_rate,
            "endless_rate": self.endless_rate,
        }
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Faults.{name} must be between 0 and 1, got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(
                "Faults: error, rate-limit, drop, lost-answer, wrong-shape, late-apply, "
                "trickle and endless rates exceed 1"
            )
        if self.latency_s < 0 or self.latency_jitter_s < 0:
            raise ValueError("Faults: latency must not be negative")
        if self.late_apply_s < 0:
            raise ValueError("Faults: late_apply_s must not be negative")
        if self.trickle_s < 0:
            raise ValueError("Faults: trickle_s must not be negative")
        if self.limit_rps is not None and not (0 < self.limit_rps < math.inf):
            raise ValueError(f"Faults: limit_rps must be a positive number, got {self.limit_rps}")
        if self.limit_burst is not None and not (1 <= self.limit_burst < math.inf):
            raise ValueError(f"Faults: limit_burst must be at least 1, got {self.limit_burst}")

    @property
    def burst(self) -> float:
        """The bucket's size: ``limit_burst``, or one second's worth (at least 1)."""
        if self.limit_burst is not None:
            return self.limit_burst
        return max(1.0, self.limit_rps or 1.0)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held, full at the start. Not locked."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        """Take one token; False (and none taken) when there is none."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until a token is free, rounded up, at least 1."""
        self._refill()
        return max(1, math.ceil((1.0 - self._tokens) / self.rate - 1e-9))


@dataclass(frozen=True)
class Draw:
    """What one request gets: added latency, at most one fault, and its details."""

    latency: float
    fault: FaultKind | None
    drop_instead: bool
    """For ``error`` (503, not 500) and ``lost_answer`` (drop, not 500)."""
    faults: Faults
    retry_after: int = 0
    """For ``limit_rps``: the Retry-After seconds."""


class FaultDrawer:
    """The seeded draw and the rate limit, thread-safe; reconfigured by ``configure``."""

    def __init__(self, faults: Faults, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._limited = 0
        self.configure(faults)

    @property
    def faults(self) -> Faults:
        return self._faults

    def configure(self, faults: Faults) -> None:
        """New faults: the generator restarts from the seed, the bucket starts full."""
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._bucket = (
                None
                if faults.limit_rps is None
                else TokenBucket(faults.limit_rps, faults.burst, self._clock)
            )

    def limited(self) -> int:
        with self._lock:
            return self._limited

    def reset_limited(self) -> None:
        with self._lock:
            self._limited = 0

    def draw(self, path: str, method: str = "GET") -> Draw:
        """The fate of one request to ``/rest/<path>``: the gate, then the one draw."""
        with self._lock:
            f = self._faults
            affected = path in OBJECTS or (path == "account" and f.include_account)
            if f.writes_only and method not in ("POST", "PUT", "DELETE"):
                affected = False
            if not affected:
                return Draw(0.0, None, False, f)
            if self._bucket is not None and not self._bucket.take():
                self._limited += 1
                return Draw(0.0, "limit_rps", False, f, self._bucket.retry_after())
            latency = f.latency_s
            if f.latency_jitter_s:
                latency += self._rng.uniform(0.0, f.latency_jitter_s)
            roll = self._rng.random()
            drop = self._rng.random() < 0.5
            fault: FaultKind | None = None
            kinds: tuple[tuple[FaultKind, float], ...] = (
                ("drop", f.drop_rate),
                ("error", f.error_rate),
                ("rate_limit", f.rate_limit_rate),
                ("lost_answer", f.lost_answer_rate),
                ("wrong_shape", f.wrong_shape_rate),
                ("late_apply", f.late_apply_rate),
                ("trickle", f.trickle_rate),
                ("endless", f.endless_rate),
            )
            for kind, rate in kinds:
                if roll < rate:
                    fault = kind
                    break
                roll -= rate
            if fault == "wrong_shape" and not (path in OBJECTS and method == "GET"):
                fault = None
            if fault == "late_apply" and not (
                path in OBJECTS and method in ("POST", "PUT", "DELETE")
            ):
                fault = None
            return Draw(latency, fault, drop, f)


def trickle(
    send: Callable[[bytes], object], data: bytes, pause_s: float, stopping: threading.Event
) -> bool:
    """Send ``data`` one byte at a time, ``pause_s`` apart; False when stopped early.

    A socket error (the client went away) propagates as OSError.
    """
    for i in range(len(data)):
        if i and pause_s and stopping.wait(pause_s):
            return False
        send(data[i : i + 1])
    return True


def endless(
    send: Callable[[bytes], object], head: bytes, stopping: threading.Event, body: bool = True
) -> int:
    """Send ``head`` (a chunked answer's status line and headers), then chunks forever.

    Returns the bytes sent after ``head`` (chunk framing included) once the client is
    gone (a socket error: broken pipe, reset, a write blocked past the socket's
    timeout) or ``stopping`` is set; with ``body=False`` (HEAD) only the head is sent.
    """
    sent = 0
    try:
        send(head)
        first = b"[" + ENDLESS_CHUNK
        chunk = b"%x\r\n%s\r\n" % (len(first), first)
        rest = b"%x\r\n%s\r\n" % (len(ENDLESS_CHUNK), ENDLESS_CHUNK)
        while body and not stopping.is_set():
            send(chunk)
            sent += len(chunk)
            chunk = rest
    except OSError:
        pass
    return sent


__all__ = [
    "OBJECTS",
    "Draw",
    "FaultDrawer",
    "FaultKind",
    "Faults",
    "TokenBucket",
    "endless",
    "trickle",
]
