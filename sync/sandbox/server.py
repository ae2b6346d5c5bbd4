"""The sandbox's HTTP face: a Personyze-compatible Users API on loopback.

Real HTTP (``ThreadingHTTPServer``, HTTP/1.1 keep-alive) so the sync's own client,
retries and timeouts are exercised exactly as against the live service. Faults
(latency, 5xx, 429, dropped connections, lost answers, answers of the wrong shape,
writes that land after the client gave up, answers trickled a byte at a time, endless
bodies, a real rate limit) can be switched at runtime and are drawn from a seeded
generator, so a test sees the same sequence every run (see ``faults.py``).

This module holds the lifecycle, the request log and the users' routing; reading,
faulting and answering one request is :mod:`sync.sandbox.handler`'s (it hands the
other objects to their :mod:`sync.sandbox.rest` resources), the users are
:mod:`sync.sandbox.users`'s, the products :mod:`sync.sandbox.products`'s, the
audiences :mod:`sync.sandbox.audiences`'s.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sync.errors import port_unavailable
from sync.sandbox.audiences import AudienceStore
from sync.sandbox.faults import FaultDrawer, FaultKind, Faults
from sync.sandbox.handler import (
    Answer,
    Handler,
    RecordedRequest,
    Resource,
    SandboxHTTPServer,
    bare_answer,
    json_answer,
    text_answer,
)
from sync.sandbox.products import ProductStore
from sync.sandbox.query import RequestError, parse_modifiers
from sync.sandbox.rest import parse_body
from sync.sandbox.users import UserStore

POLL_INTERVAL_S = 0.05
"""How soon ``stop()`` is noticed by the serving loop."""


class SandboxServer:
    """A local Personyze Users API: ``with SandboxServer() as api: ... api.url ...``.

    ``wall`` is the database's clock: it stamps ``data_last_modified`` (and nothing
    else), while the HTTP ``Date`` header always carries the real time, so a test can
    run the data clock behind (or ahead of) the Date header, e.g.
    ``SandboxServer(wall=lambda: time.time() - 10)`` stamps changes 10 s behind it.
    ``internal_id_merges=True`` is the wiki's behaviour (internal_id and fb_id merge
    and are found by ``where``); the default is the live service's (only email and
    user_id do).
    """

    def __init__(
        self,
        api_key: str = "sandbox-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        internal_id_merges: bool = False,
        faults: Faults | None = None,
        wall: Callable[[], float] = time.time,
        request_log_limit: int | None = 100_000,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.store = UserStore(internal_id_merges=internal_id_merges, wall=wall)
        self.catalog = ProductStore()
        self.audiences = AudienceStore(self.store)
        self.objects: dict[str, Resource] = {
            **self.catalog.resources(),
            **self.audiences.resources(),
        }
        self._drawer = FaultDrawer(faults or Faults())
        self._log: deque[RecordedRequest] = deque(maxlen=request_log_limit)
        self._log_lock = threading.Lock()
        self._late = 0
        self._late_lock = threading.Lock()
        self._httpd: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    @property
    def url(self) -> str:
        """The base URL to configure the sync with (valid once started)."""
        return f"http://{self.host}:{self.port}/rest"

    def start(self) -> SandboxServer:
        """Bind and serve in a background daemon thread.

        A port it cannot take (in use, say) raises :class:`~sync.errors.PortUnavailable`.
        """
        httpd = self._bind()
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_S},
            name="personyze-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind and serve in this thread until interrupted (for the CLI)."""
        httpd = self._bind()
        try:
            httpd.serve_forever(poll_interval=POLL_INTERVAL_S)
        finally:
            httpd.stopping.set()
            httpd.close_all()
            httpd.server_close()
            self._httpd = None

    def stop(self) -> None:
        """Stop serving and close every open connection.

        Late writes still waiting (``late_apply``) are abandoned, never applied, and
        stop() does not wait for them.
        """
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.close_all()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> SandboxHTTPServer:
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        try:
            httpd = SandboxHTTPServer((self.host, self.port), Handler, self)
        except OSError as exc:  # in use, say: the CLI names the option that moves it
            raise port_unavailable(self.host, self.port, exc) from None
        self.port = httpd.server_address[1]
        self._httpd = httpd
        return httpd

    # faults

    @property
    def faults(self) -> Faults:
        return self._drawer.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Switch faults: the draw restarts from the seed, the rate limit's bucket is full."""
        self._drawer.configure(faults)

    def limited(self) -> int:
        """How many requests the ``limit_rps`` gate refused (429) since start or reset().

        Counted even when the request log is off (``request_log_limit=0``).
        """
        return self._drawer.limited()

    def late_pending(self) -> int:
        """How many ``late_apply`` requests are still waiting to be applied."""
        with self._late_lock:
            return self._late

    def _late_count(self, step: int) -> None:
        with self._late_lock:
            self._late += step

    # request log and inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first."""
        with self._log_lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._log_lock:
            self._log.clear()

    def _record(self, entry: RecordedRequest) -> None:
        with self._log_lock:
            self._log.append(entry)

    def users(self) -> list[dict[str, Any]]:
        """Copies of every stored user, ordered by user_id."""
        return self.store.users()

    def products(self) -> list[dict[str, Any]]:
        """Copies of every stored product, ordered by id."""
        return self.catalog.products()

    def user_lists(self) -> list[dict[str, Any]]:
        """Copies of every stored list (audience), ordered by id."""
        return self.audiences.lists()

    def members(self, list_id: int) -> list[int]:
        """The user_ids in one list, ascending."""
        return self.audiences.members(list_id)

    def reset(self) -> None:
        """Forget every user, product, list and membership, the request log and the
        limited() count (faults stay)."""
        self.store.reset()
        self.catalog.reset()
        self.audiences.reset()
        self.clear_requests()
        self._drawer.reset_limited()

    # the API

    def _authorized(self, header: str | None) -> Answer | None:
        """None when the Basic credentials carry the right key, else the 401."""
        challenge = {"WWW-Authenticate": 'Basic realm="Personyze"'}
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            return text_answer(401, "Please, log in", challenge)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return text_answer(401, "Please, log in", challenge)
        user, colon, key = decoded.partition(":")
        if not colon or user != "api":
            return text_answer(401, "Please, log in", challenge)
        if not hmac.compare_digest(key.encode("utf-8"), self.api_key.encode("utf-8")):
            return text_answer(401, "Invalid API key", challenge)
        return None

    def _dispatch(self, method: str, segments: list[str], raw: bytes) -> Answer:
        """Route one authorised request; RequestError becomes a plain-text (or bare) 400."""
        head, rest = segments[0], segments[1:]
        if head == "account" and not rest:
            if method != "GET":
                return text_answer(405, f"Method {method} not allowed here", {"Allow": "GET"})
            return json_answer({"account_id": 1, "name": "sandbox"})
        if head != "users":
            return text_answer(404, f"Not found: /rest/{'/'.join(segments)}")
        allow = {"Allow": "GET, POST, PUT, DELETE"}
        if method not in ("GET", "POST", "PUT", "DELETE"):
            return text_answer(405, f"Method {method} not allowed here", allow)
        try:
            body = parse_body(raw) if method in ("POST", "PUT") else None
            if method == "POST":
                if rest:
                    raise RequestError("POST /rest/users takes no path modifiers")
                return json_answer(self.store.upsert(body))
            query = parse_modifiers(rest)
            if method == "GET":
                return json_answer(self.store.get(query))
            if method == "PUT":
                return json_answer(self.store.update(query, body))
            return json_answer(self.store.delete(query))
        except RequestError as error:
            return bare_answer(400) if error.bare else text_answer(400, str(error))


__all__ = ["FaultKind", "Faults", "RecordedRequest", "SandboxServer"]
