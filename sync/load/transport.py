"""The connections the Users API client sends through: one keep-alive connection per thread.

Requests, responses and errors are httpx's. Underneath, an HTTP/1.1 exchange is a
``sendall`` of the request and ``recv`` calls fed to httptools' parser (llhttp, the
parser of Node.js), which costs under half the CPU per request of httpcore and h11
(bench/README.md, "Where the CPU goes"). A server that picks HTTP/2 in the TLS
handshake (ALPN) gets httpx's own HTTP/2 transport from then on.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import threading
from collections.abc import Callable

import httptools
import httpx

HTTP_VERSIONS = ["h2", "http/1.1"]  # offered in the TLS handshake, in order of preference
READ_SIZE = 65536
MAX_HEAD = 65536  # an answer's status line and headers: a longer one is refused
CONTROL = re.compile(rb"[\r\n\0]")
ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)


class ConnectionPerThread(httpx.BaseTransport):
    """A keep-alive connection of its own for each thread that sends.

    httpcore's shared pool re-examines every connection under one lock for each
    request, so with tens of sending threads most of the CPU went to waiting on that
    lock. One single-connection transport per thread has nothing to share. Each run
    sends from threads of its own: the connections of threads that have ended are
    closed when new threads come.
    """

    def __init__(self, make: Callable[[], httpx.BaseTransport]) -> None:
        self._make = make
        self._local = threading.local()
        self._made: list[tuple[threading.Thread, httpx.BaseTransport]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = self._local.transport = self._make()
            with self._lock:
                ended = [t for thread, t in self._made if not thread.is_alive()]
                self._made = [(th, t) for th, t in self._made if th.is_alive()]
                self._made.append((threading.current_thread(), transport))
            for old in ended:
                old.close()
        return transport.handle_request(request)

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for _, transport in made:
            transport.close()


class KeepAliveConnection(httpx.BaseTransport):
    """One HTTP/1.1 connection, kept open between requests, for one thread at a time.

    It opens on the first request, and again whenever the server has closed it: a
    connection the server closed while idle is noticed before a request is written to
    it, so no request is lost on a stale connection. Every answer is read whole.
    """

    def __init__(
        self, tls: ssl.SSLContext, http2: Callable[[], httpx.BaseTransport] | None = None
    ) -> None:
        """``http2`` makes the transport for a server that picks HTTP/2; by default
        httpx's, with the same TLS context and one connection."""
        tls.set_alpn_protocols(HTTP_VERSIONS)
        self.tls = tls
        self._make_http2 = http2 or (
            lambda: httpx.HTTPTransport(verify=tls, limits=ONE_CONNECTION, http2=True)
        )
        self._http2: httpx.BaseTransport | None = None
        self._sock: socket.socket | None = None
        self._origin: tuple[bytes, str, int] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._http2 is not None:
            return self._http2.handle_request(request)
        message = _head(request) + request.content
        sock = self._ready(request)
        if sock is None:  # the server chose HTTP/2
            self._http2 = self._make_http2()
            return self._http2.handle_request(request)
        try:
            sock.sendall(message)
        except TimeoutError as exc:
            self.close()
            raise httpx.WriteTimeout("timed out sending the request", request=request) from exc
        except OSError as exc:
            self.close()
            raise httpx.WriteError(str(exc) or type(exc).__name__, request=request) from exc
        answer = _Answer()
        try:
            while not answer.complete:
                answer.feed(sock.recv(READ_SIZE))
        except TimeoutError as exc:
            self.close()
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from exc
        except (OSError, httptools.HttpParserError, ProtocolError) as exc:
            self.close()
            raise httpx.RemoteProtocolError(
                str(exc) or type(exc).__name__, request=request
            ) from exc
        if not answer.keep_alive:
            self.close()
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=httpx.ByteStream(b"".join(answer.body)),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._http2 is not None:
            self._http2.close()
            self._http2 = None

    def _ready(self, request: httpx.Request) -> socket.socket | None:
        """The open connection to the request's server; None if that server speaks HTTP/2."""
        url = request.url
        origin = (url.raw_scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        if self._sock is not None and origin == self._origin and _still_open(self._sock):
            return self._sock
        self.close()
        timeouts = request.extensions.get("timeout", {})
        _, host, port = origin
        sock = None
        try:
            sock = socket.create_connection((host, port), timeouts.get("connect"))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if url.scheme == "https":
                sock = self.tls.wrap_socket(sock, server_hostname=host)
                if sock.selected_alpn_protocol() == "h2":
                    sock.close()
                    return None
        except TimeoutError as exc:
            if sock is not None:
                sock.close()
            raise httpx.ConnectTimeout("timed out connecting", request=request) from exc
        except OSError as exc:  # ssl.SSLError included: the certificate was refused
            if sock is not None:
                sock.close()
            raise httpx.ConnectError(str(exc), request=request) from exc
        sock.settimeout(timeouts.get("read"))
        self._sock, self._origin = sock, origin
        return sock


class ProtocolError(Exception):
    """The server's answer broke HTTP/1.1 framing."""


class _Answer:
    """One answer, fed to httptools' parser as it arrives (these are its callbacks)."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = False
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._until_closed = False  # no length given: the body ends when the server closes
        self._headers_done = False
        self._size = 0

    def feed(self, data: bytes) -> None:
        if not data:  # the server closed the connection
            if not (self._headers_done and self._until_closed):
                raise ProtocolError("the server closed the connection before answering in full")
            self._done()
            return
        self._size += len(data)
        if not self._headers_done and self._size > MAX_HEAD:
            raise ProtocolError(f"the answer's headers are longer than {MAX_HEAD} bytes")
        assert self._parser is not None
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        framing = {name.lower() for name, _ in self.headers}
        self._until_closed = not framing & {b"content-length", b"transfer-encoding"}

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self.keep_alive = self._parser.should_keep_alive()
        self._done()

    def _done(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        self.complete = True
        self._parser = None  # the parser holds this answer: part now, not at a collection


def _head(request: httpx.Request) -> bytes:
    """The request line and headers, refusing anything that would split them."""
    method, target = request.method.encode("ascii"), request.url.raw_path
    fields = request.headers.raw
    if CONTROL.search(b" ".join([method, target, *(part for field in fields for part in field)])):
        raise httpx.LocalProtocolError("a header or the URL holds a line break", request=request)
    headers = b"".join(b"%s: %s\r\n" % field for field in fields)
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, headers)


def _still_open(sock: socket.socket) -> bool:
    """Is the idle connection still usable? Readable while idle: the server closed it."""
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return not poll.poll(0)
