"""The sandbox's HTTP layer: one connection, each request read, faulted, answered, recorded.

Kept apart from :mod:`sync.sandbox.server` (the lifecycle and the API's routing) so
neither passes 400 lines. It knows the sandbox only through :class:`Backend`, so this
module imports nothing of the server and the two form no import cycle.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from sync.sandbox.faults import FaultDrawer, FaultKind, endless, trickle

# The name it had before the split, so log filters and captures see the same logger.
log = logging.getLogger("sync.sandbox.server")

MAX_BODY = 10 * 1024 * 1024
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
class Answer:
    status: int
    payload: bytes
    content_type: str | None
    """None: no Content-Type header (the bare 400)."""
    headers: dict[str, str]


def text_answer(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, message.encode("utf-8"), "text/plain; charset=utf-8", dict(headers or {}))


def bare_answer(status: int) -> Answer:
    """An answer with no body at all (Content-Length: 0, no Content-Type)."""
    return Answer(status, b"", None, {})


def json_answer(value: Any) -> Answer:
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Answer(200, payload, "application/json", {})


class Resource(Protocol):
    """One REST object besides users (``products``, ...): see :mod:`sync.sandbox.rest`."""

    def serve(self, method: str, segments: list[str], raw: bytes) -> Answer: ...


class Backend(Protocol):
    """What the handler needs of the sandbox (``SandboxServer`` is the one implementation).

    ``_record`` is overridden by ``bench/sandbox_server.py`` to count instead of log.
    ``objects`` serves every object but users and the account, by its path.
    """

    _drawer: FaultDrawer

    @property
    def objects(self) -> Mapping[str, Resource]: ...

    def _late_count(self, step: int) -> None: ...

    def _record(self, entry: RecordedRequest) -> None: ...

    def _authorized(self, header: str | None) -> Answer | None: ...

    def _dispatch(self, method: str, segments: list[str], raw: bytes) -> Answer: ...


def _split_path(path: str) -> list[str] | None:
    """Raw segments after ``/rest/``, or None when the path is not under it."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/rest/"):
        return None
    segments = path[len("/rest/") :].split("/")
    if len(segments) > 1 and segments[-1] == "":
        segments.pop()
    return segments if segments[0] else None


class SandboxHTTPServer(ThreadingHTTPServer):
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
        sandbox: Backend,
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


class Handler(BaseHTTPRequestHandler):
    """One connection; each request: read, fault, authorise, dispatch, answer, record."""

    server: SandboxHTTPServer
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

        answer: Answer | None
        status: int | None = None
        if raw is None:
            answer = text_answer(400, "Unreadable request body")
            self.close_connection = True
        elif fault == "limit_rps":
            answer = text_answer(429, "Too many requests", {"Retry-After": str(drawn.retry_after)})
        elif fault == "endless":  # not applied: the body never ends
            self._endless()
            answer, status = None, 200
        elif fault == "drop":
            answer = None
        elif fault == "error":
            answer = text_answer(503 if drop_instead else 500, "Service temporarily unavailable")
        elif fault == "rate_limit":
            retry = faults.retry_after_s
            headers = {} if retry is None else {"Retry-After": _seconds(retry)}
            answer = text_answer(429, "Too many requests", headers)
        elif fault == "wrong_shape":
            answer = json_answer({"result": "ok"})
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
                answer = None if drop_instead else text_answer(500, "Internal server error")

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

    def _answer(self, segments: list[str] | None, raw: bytes) -> Answer:
        sandbox = self.server.sandbox
        if segments is None:
            return text_answer(404, f"Not found: {self.path}")
        refused = sandbox._authorized(self.headers.get("Authorization"))
        if refused is not None:
            return refused
        try:
            resource = sandbox.objects.get(segments[0])
            if resource is not None:
                return resource.serve(self.command, segments[1:], raw)
            return sandbox._dispatch(self.command, segments, raw)
        except Exception:
            log.exception("sandbox: unexpected error on %s %s", self.command, self.path)
            return text_answer(500, "Internal server error")

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

    def _send(self, answer: Answer) -> None:
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

    def _trickle(self, answer: Answer, pause_s: float) -> int | None:
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


__all__ = [
    "IDLE_TIMEOUT_S",
    "MAX_BODY",
    "Answer",
    "Backend",
    "Handler",
    "RecordedRequest",
    "Resource",
    "SandboxHTTPServer",
    "bare_answer",
    "json_answer",
    "text_answer",
]
