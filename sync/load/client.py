"""The Personyze Users API client.

HTTP statuses are mapped to our error kinds in one place (:mod:`sync.load.answers`),
httpx's exceptions are translated where they enter, and the retry policy (exponential
backoff and jitter, honouring ``Retry-After``) is tenacity's, driven one attempt at a
time (:mod:`sync.load.retries`) so that no wait holds a sending thread and a stop ends
any wait. The pace is :mod:`sync.load.pacing`'s. The transport is injected, so tests can
run against the sandbox over real HTTP or anything else.

The API key travels only in the ``Authorization`` header, never in a URL, log or
message. Values spliced into a URL path are percent-encoded one by one.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from sync.config.models import PersonyzeSettings
from sync.errors import FatalError, RetriableError, Stopped
from sync.load.answers import (
    certificate_refused,
    check_base_url,
    count,
    raise_for_status,
    ssl_reason,
)
from sync.load.pacing import Pacing
from sync.load.retries import Attempts
from sync.load.transport import AnswerTooLarge, BoundedConnection, ConnectionPerThread

T = TypeVar("T")

USER_AGENT = "personyze-sync/0.1"
PAGE = 1000  # the live API refuses reads past offset+limit 1000: page by keyset instead
RANGE_PAGE = 50  # ... and reads whose where holds >, <, >= or <= past 50 rows
ID_CHUNK = 200  # user_ids per users_by_id request: under PAGE, and a URL of a few KB
CONNECT_S = 10.0  # the longest wait for a connection (within timeout_s)


class PersonyzeClient:
    """One account's Users API, with retries; thread-safe."""

    def __init__(
        self,
        settings: PersonyzeSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_response: Callable[[int | None, float], None] | None = None,
        mask: Callable[[str], str] = lambda text: text,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop``: once set, every wait ends at once with :class:`Stopped` (a request in
        flight is given until its deadline). ``sleep``: how to wait (tests count waits)."""
        check_base_url(settings)
        key = settings.require_key().get_secret_value()  # none: a ConfigError saying why
        self._mask = mask  # hides secrets in what an answer's text says
        self._settings = settings
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._stop.wait
        self._clock = clock
        self._on_response = on_response
        self.pacing = Pacing(settings.requests_per_second, clock, self._pause)
        parts = urlsplit(settings.base_url)
        self._where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        # "Full jitter" (a wait drawn between 0 and a cap that doubles): of the
        # backoffs compared in AWS's "Exponential Backoff And Jitter", the one with the
        # least waiting for the same load on the server; it halved the tail of a
        # backfill under 15 % of 5xx and 429 (bench/hostile.py, target B).
        self._backoff = wait_random_exponential(
            multiplier=settings.backoff_initial_s, max=settings.backoff_max_s
        )
        self._retrying = self._retrier(repeatable=True)
        self._retrying_unapplied = self._retrier(repeatable=False)
        # The transport is httpx's I/O seam: requests are built here and handed to it
        # directly (no cookies, redirects or auth flows to run), which saves a third of
        # the CPU each request costs. Certificates are always verified; over TLS,
        # HTTP/2 is used where the server picks it (ALPN), HTTP/1.1 keep-alive otherwise.
        tls = httpx.create_ssl_context()  # one for all: each costs a CA bundle's load
        self._transport = transport or ConnectionPerThread(
            lambda: BoundedConnection(
                tls,
                deadline_s=settings.timeout_s,
                max_answer_bytes=settings.max_answer_mb * 2**20,
            )
        )
        self._base_url = settings.base_url + "/"
        self._urls: dict[str, httpx.URL] = {}
        token = base64.b64encode(f"api:{key}".encode()).decode()
        headers = {
            "Authorization": f"Basic {token}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        self._headers = httpx.Headers(headers)  # normalised once, copied by each request
        self._json_headers = httpx.Headers({**headers, "Content-Type": "application/json"})
        timeout = httpx.Timeout(settings.timeout_s, connect=min(CONNECT_S, settings.timeout_s))
        self._extensions = {"timeout": timeout.as_dict()}

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> PersonyzeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------

    def upsert(self, payload: dict[str, Any], *, repeatable: bool = True) -> int:
        """POST one user (created, or merged by identifier); returns its user_id.

        A payload that is not ``repeatable`` (it would create a user that nothing
        merges on) is retried only after failures that certainly changed nothing;
        after any other failure the caller must reconcile before sending it again.
        """
        call = partial(self.upsert_once, payload)
        return self.finish(self.attempts(call, "POST users", repeatable))

    def upsert_once(self, payload: dict[str, Any]) -> int:
        """One attempt at :meth:`upsert`."""
        answer = self._send("POST", "users", payload)
        if isinstance(answer, int) and not isinstance(answer, bool) and answer > 0:
            return answer
        if isinstance(answer, str) and answer.isdigit():
            return int(answer)
        raise FatalError(
            f"Personyze answered {str(answer)[:100]!r} where a user_id was expected: "
            "is personyze.base_url the Users API (https://app.personyze.com/rest)?"
        )

    def update(self, identifier: str, value: Any, payload: dict[str, Any]) -> int:
        """PUT to the users whose ``identifier`` equals ``value``; how many were changed.

        Never creates a user: 0 means Personyze has no such user.
        """
        call = partial(self.update_once, identifier, value, payload)
        return self.finish(self.attempts(call, "PUT users"))

    def update_once(self, identifier: str, value: Any, payload: dict[str, Any]) -> int:
        """One attempt at :meth:`update`."""
        where = f"{identifier}={quote(str(value), safe='')}"
        return count(self._send("PUT", f"users/where/{where}", payload))

    def delete(self, user_id: int) -> int:
        """DELETE the user with this user_id; how many were deleted (0: already gone)."""
        return self.finish(self.attempts(partial(self.delete_once, user_id), "DELETE users"))

    def delete_once(self, user_id: int) -> int:
        """One attempt at :meth:`delete`."""
        return count(self._send("DELETE", f"users/where/user_id={int(user_id)}", None))

    def users_by_email(self, emails: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
        """The users with these emails, asked for in chunks."""
        cols = ",".join(dict.fromkeys(["user_id", "email", *columns]))
        wanted = list(dict.fromkeys(emails))
        found: list[dict[str, Any]] = []
        for at in range(0, len(wanted), ID_CHUNK):
            values = ",".join(quote(e, safe="") for e in wanted[at : at + ID_CHUNK])
            found += self._list("GET", f"users/where/email:{values}/columns/{cols}/limit/{PAGE}")
        return found

    def check_key(self, *, once: bool = False) -> None:
        """``GET /rest/account``: changes nothing, answers 401 for a bad key.

        ``once``: one attempt, no retries (``validate --connect`` fails fast)."""
        if once:
            self._send("GET", "account", None)
        else:
            self._call("GET", "account")

    def users_changed_since(self, since: int, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
        """Users whose data_last_modified >= since, paged by keyset (never by offset).

        A range read: the live service refuses it past 50 rows, so 50 a page.
        """
        cols = ",".join(dict.fromkeys(["user_id", "data_last_modified", *columns]))
        where = f"data_last_modified>={since}"
        while True:
            page = self._list(
                "GET",
                f"users/where/{where}/order_by/data_last_modified,user_id/limit/{RANGE_PAGE}"
                f"/columns/{cols}",
            )
            yield from page
            if len(page) < RANGE_PAGE:
                return
            last = page[-1]
            stamp, uid = int(last["data_last_modified"]), int(last["user_id"])
            where = f"data_last_modified>{stamp}|data_last_modified={stamp}&user_id>{uid}"

    def highest_user_id(self) -> int | None:
        """The largest user_id Personyze holds (None: no user): the size of an adoption."""
        page = self._list("GET", "users/order_by_desc/user_id/limit/1/columns/user_id")
        return int(page[0]["user_id"]) if page else None

    def newest_change(self) -> int | None:
        """The newest data_last_modified Personyze holds (None: no user).

        Personyze's own value, from its database's clock: a reconciliation that reads
        users changed since it is defeated by no host clock and no Date header.
        """
        page = self._list(
            "GET", "users/order_by_desc/data_last_modified/limit/1/columns/data_last_modified"
        )
        return int(page[0]["data_last_modified"]) if page else None

    def users_after(self, user_id: int, columns: Sequence[str]) -> list[dict[str, Any]]:
        """One keyset page of users whose user_id is above ``user_id``, in user_id order.

        ``user_id>N`` is a range read: the live service refuses it past 50 rows.
        """
        cols = ",".join(dict.fromkeys(["user_id", *columns]))
        return self._list(
            "GET",
            f"users/where/user_id>{int(user_id)}/order_by/user_id/limit/{RANGE_PAGE}/columns/{cols}",
        )

    def users_by_id(self, user_ids: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
        """The users with these ids, in user_id order within each chunk of ids asked for.

        Asked for in chunks (a read returns at most ``PAGE`` rows, and URLs have limits).
        """
        cols = ",".join(dict.fromkeys(["user_id", *columns]))
        wanted = list(dict.fromkeys(user_ids))
        found: list[dict[str, Any]] = []
        for at in range(0, len(wanted), ID_CHUNK):
            ids = ",".join(quote(str(u), safe="") for u in wanted[at : at + ID_CHUNK])
            found += self._list("GET", f"users/where/user_id:{ids}/columns/{cols}/limit/{PAGE}")
        return found

    # -- plumbing --------------------------------------------------------------

    def call(self, method: str, path: str, *, json: Any = None, repeatable: bool = True) -> Any:
        """One call to any object (audiences: :mod:`sync.load.audiences`), with retries."""
        return self._call(method, path, json=json, repeatable=repeatable)

    def read(self, path: str) -> list[dict[str, Any]]:
        """A GET of any object, whose answer must be a JSON array of objects."""
        return self._list("GET", path)

    def send_once(self, method: str, path: str, body: Any = None) -> Any:
        """One attempt at one request to any object (products: :mod:`sync.load.products`)."""
        return self._send(method, path, body)

    def _list(self, method: str, path: str) -> list[dict[str, Any]]:
        """A read's answer, which must be a JSON array of objects."""
        answer = self._call(method, path)
        if not isinstance(answer, list) or not all(isinstance(u, dict) for u in answer):
            raise FatalError(
                f"Personyze answered a read of users with {type(answer).__name__} "
                f"({str(answer)[:80]!r}) where a list of users was expected; nothing was "
                "changed: is personyze.base_url the Users API (https://app.personyze.com/rest)?"
            )
        return answer

    def attempts(self, fn: Callable[[], T], what: str, repeatable: bool = True) -> Attempts[T]:
        """The attempts of one call, under the retry policy: whoever holds them waits."""
        policy = self._retrying if repeatable else self._retrying_unapplied
        return Attempts(policy, fn, what=what, of=self._settings.max_attempts)

    def finish(self, attempts: Attempts[T]) -> T:
        """Make every attempt a call needs, waiting here between them."""
        while (wait := attempts.attempt()) is not None:
            self._pause(wait)
        return attempts.result

    def _pause(self, seconds: float) -> None:
        """Wait, unless a stop comes first: then :class:`Stopped`."""
        if self._stop.is_set():
            raise Stopped("stopping")
        self._sleep(seconds)
        if self._stop.is_set():
            raise Stopped("stopping")

    def _call(self, method: str, path: str, *, json: Any = None, repeatable: bool = True) -> Any:
        """Send, retrying as the policy says."""
        call = partial(self._send, method, path, json)
        return self.finish(self.attempts(call, f"{method} {path.split('/')[0]}", repeatable))

    def _retrier(self, *, repeatable: bool) -> Retrying:
        """Retries for calls that may be repeated freely, or only after certain failures.

        Built once and shared by every thread (each call's state is its own
        :class:`Attempts`); building one per call cost a few percent of a request's CPU.
        tenacity never sleeps here: the holder of the attempts waits.
        """

        def worth_retrying(exc: BaseException) -> bool:
            return isinstance(exc, RetriableError) and (repeatable or exc.unapplied)

        return Retrying(
            stop=stop_after_attempt(self._settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(worth_retrying),
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetriableError) and exc.retry_after is not None:
            return min(max(exc.retry_after, backoff / 4), 300.0)
        return backoff

    def _send(self, method: str, path: str, body: Any) -> Any:
        """One request; its answer's JSON, or the error that says what to do next."""
        self.pacing.take()
        started = self._clock()
        where = self._where
        try:
            response = self._request(method, path, body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._observe(None, started)
            if certificate_refused(exc):
                raise FatalError(
                    f"the TLS certificate of {where} could not be verified "
                    f"({ssl_reason(exc)}); personyze-sync always verifies certificates"
                ) from None
            raise RetriableError(
                f"could not connect to Personyze at {where} ({self._reason(exc)})",
                unapplied=True,
            ) from None
        except httpx.TimeoutException as exc:
            self._observe(None, started)
            raise RetriableError(
                f"Personyze at {where} did not answer within {self._settings.timeout_s:g} s "
                f"({self._reason(exc)})"
            ) from None
        except AnswerTooLarge as exc:
            self._observe(None, started)
            raise RetriableError(f"Personyze at {where}: {self._reason(exc)}") from None
        except httpx.TransportError as exc:
            self._observe(None, started)
            raise RetriableError(
                f"the connection to Personyze at {where} failed ({self._reason(exc)})"
            ) from None
        self._observe(response.status_code, started)
        self.pacing.answered(response.status_code == 429, started)
        raise_for_status(response, self._mask)
        try:
            return response.json()
        except ValueError:
            raise FatalError(
                f"Personyze answered {response.status_code} with something that is not JSON "
                f"({response.text[:80]!r}): is personyze.base_url the Users API "
                "(https://app.personyze.com/rest)?"
            ) from None

    def _request(self, method: str, path: str, body: Any) -> httpx.Response:
        url = self._urls.get(path) or httpx.URL(self._base_url + path)
        if "/" not in path:
            self._urls[path] = url  # an object's own URL, where every write of it goes
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = self._headers if content is None else self._json_headers
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions=self._extensions
        )
        response = self._transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response

    def _reason(self, exc: Exception) -> str:
        text = str(exc).strip()
        return self._mask(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)

    def _observe(self, status: int | None, started: float) -> None:
        if self._on_response is not None:
            self._on_response(status, self._clock() - started)
