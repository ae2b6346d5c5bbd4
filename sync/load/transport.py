"""The connections the Personyze client sends through: httpx's, each request within a deadline.

httpx (httpcore with h11 and h2) keeps connections alive, speaks HTTP/2 where the
server picks it in the TLS handshake, verifies certificates, and bounds each connect,
read and write by its timeout. Two things a hostile server can do are bounded by none
of those: an answer trickled a byte at a time keeps every read within its timeout for
hours, and an endless body grows until memory runs out. So every request here has a
deadline, ``timeout_s`` from its start, that each of its connects, reads and writes
must fit into, and its answer has a size cap; either fails the request with an httpx
timeout or :class:`AnswerTooLarge`, which the client translates like any other.

A home-made HTTP/1.1 connection on httptools' parser sent here until issue 15: it won
at 0 ms on loopback but not against a remote API (bench/hostile.py ``--only transport``:
within ±3 % at 50 ms), so the library does the work.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)


class AnswerTooLarge(httpx.TransportError):
    """The answer passed the size cap: the connection was closed, the rest unread."""


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


class BoundedConnection(httpx.HTTPTransport):
    """httpx's transport with one connection, a deadline per request and a size cap.

    The answer is read whole before it is handed back, so the deadline covers its
    body too; ``deadline_s`` is the whole request, connect to last byte.
    """

    def __init__(self, tls: ssl.SSLContext, *, deadline_s: float, max_answer_bytes: int) -> None:
        super().__init__(verify=tls, http2=True, limits=ONE_CONNECTION)
        # httpx offers no way to pass httpcore a network backend: its pool is rebuilt
        # here with the same settings and ours (tests/load/test_transport.py pins it).
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls,
            max_connections=1,
            max_keepalive_connections=1,
            http1=True,
            http2=True,
            network_backend=_DeadlineBackend(),
        )
        self._deadline_s = deadline_s
        self._max_answer_bytes = max_answer_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _deadline.at = time.monotonic() + self._deadline_s
        try:
            response = super().handle_request(request)
            try:
                body = self._read(response, request)
            finally:
                response.close()
        finally:
            _deadline.at = None
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            request=request,
            extensions=response.extensions,
        )

    def _read(self, response: httpx.Response, request: httpx.Request) -> bytes:
        chunks, size = [], 0
        assert isinstance(response.stream, httpx.SyncByteStream)
        for chunk in response.stream:
            size += len(chunk)
            if size > self._max_answer_bytes:
                raise AnswerTooLarge(
                    f"the answer passed {self._max_answer_bytes:,} bytes "
                    "(personyze.max_answer_mb); the rest was not read",
                    request=request,
                )
            chunks.append(chunk)
        return b"".join(chunks)


class _Deadline(threading.local):
    at: float | None = None  # time.monotonic() by which the thread's request must end


_deadline = _Deadline()


def _within(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout``, cut to what is left of the thread's request deadline."""
    if _deadline.at is None:
        return timeout
    left = _deadline.at - time.monotonic()
    if left <= 0:
        raise expired("the request's deadline (personyze.timeout_s) passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by the deadline of the request it serves."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _within(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(
            ssl_context, server_hostname, _within(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _within(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(
            path, _within(timeout, httpcore.ConnectTimeout), socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
