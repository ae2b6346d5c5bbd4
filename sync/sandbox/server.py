"""The sandbox's HTTP face: a Personyze-compatible Users API on loopback.

Real HTTP (``ThreadingHTTPServer``, HTTP/1.1 keep-alive) so the sync's own client,
retries and timeouts are exercised exactly as against the live service. Faults
(latency, 5xx, 429, dropped connections, lost answers, answers of the wrong shape,
writes that land after the client gave up, answers trickled a byte at a time, endless
bodies, a real rate limit) can be switched at runtime and are drawn from a seeded
generator, so a test sees the same sequence every run (see ``faults.py``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import io
import json
import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from sync.sandbox.faults import FaultDrawer, FaultKind, Faults, endless, trickle
from sync.sandbox.store import RequestError, UserStore, parse_modifiers

log = logging.getLogger(__name__)

MAX_BODY = 10 * 1024 * 1024
POLL_INTERVAL_S = 0.05
"""How soon ``stop()`` is noticed by the serving loop."""
IDLE_TIMEOUT_S = 120.0
"""An idle keep-alive connection is closed after this long, as real servers do."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the sandbox saw it; ``status`` is None when no answer was sent."""

    start: float
    """time.monotonic() when the request line was read."""
    end: float
    """time.monotonic() when the answer was sent (or the connection dropped)."""
    method: str
    path: str
    """The raw request path, still percent-encoded."""
    status: int | None
    body: Any
    """The parsed JSON body, or None (no body, or not JSON)."""
    fault: FaultKind | None


@dataclass
class _Answer:
    status: int
    payload: bytes
    content_type: str | None
    """None: no Content-Type header (the bare 400)."""
    headers: dict[str, str]


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> _Answer:
    return _Answer(
        status, message.encode("utf-8"), "text/plain; charset=utf-8", dict(headers or {})
    )


def _bare(status: int) -> _Answer:
    """An answer with no body at all (Content-Length: 0, no Content-Type)."""
    return _Answer(status, b"", None, {})


def _json(value: Any) -> _Answer:
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _Answer(200, payload, "application/json", {})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class SandboxServer:
    """A local Personyze Users API: ``with SandboxServer() as api: ... api.url ...``.

    ``clock`` is the database's clock: it stamps ``data_last_modified`` (and nothing
    else), while the HTTP ``Date`` header always carries the real time, so a test can
    run the data clock behind (or ahead of) the Date header, e.g.
    ``SandboxServer(clock=lambda: time.time() - 10)`` stamps changes 10 s behind it.
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
        clock: Callable[[], float] = time.time,
        request_log_limit: int | None = 100_000,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.store = UserStore(internal_id_merges=internal_id_merges, clock=clock)
        self._drawer = FaultDrawer(faults or Faults())
        self._log: deque[RecordedRequest] = deque(maxlen=request_log_limit)
        self._log_lock = threading.Lock()
        self._late = 0
        self._late_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    @property
    def url(self) -> str:
        """The base URL to configure the sync with (valid once started)."""
        return f"http://{self.host}:{self.port}/rest"

    def start(self) -> SandboxServer:
        """Bind and serve in a background daemon thread."""
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

    def _bind(self) -> _HTTPServer:
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        httpd = _HTTPServer((self.host, self.port), _Handler, self)
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

    def reset(self) -> None:
        """Forget every user, the request log and the limited() count (faults stay)."""
        self.store.reset()
        self.clear_requests()
        self._drawer.reset_limited()

    # the API

    def _authorized(self, header: str | None) -> _Answer | None:
        """None when the Basic credentials carry the right key, else the 401."""
        challenge = {"WWW-Authenticate": 'Basic realm="Personyze"'}
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            return _text(401, "Please, log in", challenge)
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return _text(401, "Please, log in", challenge)
        user, colon, key = decoded.partition(":")
        if not colon or user != "api":
            return _text(401, "Please, log in", challenge)
        if not hmac.compare_digest(key.encode("utf-8"), self.api_key.encode("utf-8")):
            return _text(401, "Invalid API key", challenge)
        return None

    def _dispatch(self, method: str, segments: list[str], raw: bytes) -> _Answer:
        """Route one authorised request; RequestError becomes a plain-text (or bare) 400."""
        head, rest = segments[0], segments[1:]
        if head == "account" and not rest:
            if method != "GET":
                return _text(405, f"Method {method} not allowed here", {"Allow": "GET"})
            return _json({"account_id": 1, "name": "sandbox"})
        if head != "users":
            return _text(404, f"Not found: /rest/{'/'.join(segments)}")
        allow = {"Allow": "GET, POST, PUT, DELETE"}
        if method not in ("GET", "POST", "PUT", "DELETE"):
            return _text(405, f"Method {method} not allowed here", allow)
        try:
            body = _parse_body(raw) if method in ("POST", "PUT") else None
            if method == "POST":
                if rest:
                    raise RequestError("POST /rest/users takes no path modifiers")
                return _json(self.store.upsert(body))
            query = parse_modifiers(rest)
            if method == "GET":
                return _json(self.store.get(query))
            if method == "PUT":
                return _json(self.store.update(query, body))
            return _json(self.store.delete(query))
        except RequestError as error:
            return _bare(400) if error.bare else _text(400, str(error))


def _parse_body(raw: bytes) -> Any:
    if not raw:
        raise RequestError("The request body must be a JSON object; it was empty")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(f"The request body is not valid JSON: {error}") from None


def _split_path(path: str) -> list[str] | None:
    """Raw segments after ``/rest/``, or None when the path is not under it."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/rest/"):
        return None
    segments = path[len("/rest/") :].split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    return segments if segments[0] else None


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that knows its sandbox and can close idle keep-alive sockets."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's backlog of 5 drops the SYNs of a burst of new connections (a sync
    # opening 32 at once); each dropped one waits a second for its retransmission.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        sandbox: SandboxServer,
    ) -> None:
        self.sandbox = sandbox
        self.stopping = threading.Event()
        """Set by stop(): late writes still waiting are abandoned."""
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (killed, timed out) is normal here."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._open_lock:
            if open_:
                self._open.add(conn)
            else:
                self._open.discard(conn)

    def close_all(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """One connection; each request: read, fault, authorise, dispatch, answer, record."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    # One buffered write per answer, no Nagle: otherwise headers and body go out as two
    # segments and delayed ACKs add ~40 ms to every request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request log is ``SandboxServer.requests``."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        sandbox = self.server.sandbox
        start = time.monotonic()
        raw = self._read_body()
        body = _parse_logged_body(raw)
        segments = _split_path(self.path)
        drawn = sandbox._drawer.draw(segments[0] if segments else "", self.command)
        fault, faults, drop_instead = drawn.fault, drawn.faults, drawn.drop_instead
        if fault == "late_apply" and raw is not None:
            sandbox._late_count(+1)  # counted from the draw: latency is part of the wait
        if drawn.latency:
            time.sleep(drawn.latency)

        answer: _Answer | None
        status: int | None = None
        if raw is None:
            answer = _text(400, "Unreadable request body")
            self.close_connection = True
        elif fault == "limit_rps":
            answer = _text(429, "Too many requests", {"Retry-After": str(drawn.retry_after)})
        elif fault == "endless":  # not applied: the body never ends
            self._endless()
            answer, status = None, 200
        elif fault == "drop":
            answer = None
        elif fault == "error":
            answer = _text(503 if drop_instead else 500, "Service temporarily unavailable")
        elif fault == "rate_limit":
            retry = faults.retry_after_s
            headers = {} if retry is None else {"Retry-After": _seconds(retry)}
            answer = _text(429, "Too many requests", headers)
        elif fault == "wrong_shape":
            answer = _json({"result": "ok"})
        elif fault == "late_apply":
            try:  # withheld past the client's timeout, then applied, never answered
                if not self.server.stopping.wait(faults.late_apply_s):
                    self._answer(segments, raw)
            finally:
                sandbox._late_count(-1)
            answer = None
        else:
            answer = self._answer(segments, raw)
            if fault == "lost_answer":
                answer = None if drop_instead else _text(500, "Internal server error")

        if answer is None:
            self.close_connection = True
        elif fault == "trickle":
            status = self._trickle(answer, faults.trickle_s)
        else:
            self._send(answer)
            status = answer.status
        sandbox._record(
            RecordedRequest(
                start=start,
                end=time.monotonic(),
                method=self.command,
                path=self.path,
                status=status,
                body=body,
                fault=fault,
            )
        )

    def _answer(self, segments: list[str] | None, raw: bytes) -> _Answer:
        sandbox = self.server.sandbox
        if segments is None:
            return _text(404, f"Not found: {self.path}")
        refused = sandbox._authorized(self.headers.get("Authorization"))
        if refused is not None:
            return refused
        try:
            return sandbox._dispatch(self.command, segments, raw)
        except Exception:
            log.exception("sandbox: unexpected error on %s %s", self.command, self.path)
            return _text(500, "Internal server error")

    def _read_body(self) -> bytes | None:
        """The request body (b"" when none), or None when it cannot be read safely."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        if answer.content_type is not None:
            self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.payload)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.payload)

    def _trickle(self, answer: _Answer, pause_s: float) -> int | None:
        """Send the answer a byte at a time; its status, or None when not all was sent."""
        wfile, buffer = self.wfile, io.BytesIO()
        self.wfile = buffer  # the very bytes a normal answer is, captured
        try:
            self._send(answer)
        finally:
            self.wfile = wfile
        data = buffer.getvalue()
        try:
            if trickle(self.connection.sendall, data, pause_s, self.server.stopping):
                return answer.status
        except OSError:
            pass
        self.close_connection = True
        return None

    def _endless(self) -> None:
        """A 200 whose chunked body never ends, until the client (or the sandbox) stops."""
        self.close_connection = True
        wfile, buffer = self.wfile, io.BytesIO()
        self.wfile = buffer
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
        finally:
            self.wfile = wfile
        head = buffer.getvalue()
        endless(self.connection.sendall, head, self.server.stopping, self.command != "HEAD")


def _parse_logged_body(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


__all__ = ["FaultKind", "Faults", "RecordedRequest", "SandboxServer"]
