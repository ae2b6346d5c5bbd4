"""The HTTP/1.1 connection under the client, against real servers on loopback.

The sandbox shows the happy path; a scripted socket server plays the answers a real
server may give now and then (closed connections, chunks, bodies without a length,
truncated or endless answers), and a TLS server shows certificates and HTTP/2.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from sync.load.transport import MAX_HEAD, ConnectionPerThread, KeepAliveConnection
from sync.sandbox.server import SandboxServer
from tests.support import API_KEY, self_signed_certificate

TIMEOUT = {"timeout": httpx.Timeout(5).as_dict()}

# What a scripted connection does with each request it reads: answer these bytes and go
# on (bytes), answer them and hang up (a tuple), or hang up at once (None).
Reply = bytes | tuple[bytes, str] | None


class SocketServer:
    """A socket server on loopback: each connection is talked to by a thread of its own."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        raise NotImplementedError


class ScriptedServer(SocketServer):
    """Answers each HTTP/1.1 request as a script says."""

    def __init__(self, script: Callable[[int], Reply], tls: ssl.SSLContext | None = None) -> None:
        super().__init__(tls)
        self.script = script
        self.requests: list[bytes] = []

    def _talk(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn:
                data = b""
                while True:
                    while b"\r\n\r\n" not in data:
                        more = conn.recv(65536)
                        if not more:
                            return
                        data += more
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = next(
                        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                         if line.lower().startswith(b"content-length:")),
                        0,
                    )  # fmt: skip
                    while len(data) < length:
                        data += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + data[:length])
                    data = data[length:]
                    reply = self.script(len(self.requests))
                    if reply is None:
                        return
                    if isinstance(reply, tuple):
                        conn.sendall(reply[0])
                        return
                    conn.sendall(reply)
        except (OSError, ssl.SSLError):
            return


def ok(body: bytes = b"42", *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def post(transport: httpx.BaseTransport, url: str, body: bytes = b'{"a":1}') -> httpx.Response:
    request = httpx.Request("POST", url, content=body, extensions=TIMEOUT)
    response = transport.handle_request(request)
    response.read()
    return response


def plain() -> KeepAliveConnection:
    return KeepAliveConnection(ssl.create_default_context(), http2=no_http2)


def no_http2() -> httpx.BaseTransport:
    raise AssertionError("this server does not speak HTTP/2")


# --- the happy path -------------------------------------------------------------------


def test_requests_go_over_one_kept_alive_connection() -> None:
    with ScriptedServer(lambda n: ok(str(n).encode())) as server:
        connection = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        answers = [post(connection, url, b'{"n":%d}' % i) for i in range(5)]
        connection.close()
    assert [a.json() for a in answers] == [1, 2, 3, 4, 5]
    assert server.connections == 1
    assert all(a.status_code == 200 and a.http_version == "HTTP/1.1" for a in answers)
    first = server.requests[0]
    assert first.startswith(b"POST /rest/users HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 7\r\n" in first and first.endswith(b'\r\n\r\n{"n":0}')


def test_the_sandbox_stores_what_each_thread_sends() -> None:
    with SandboxServer(API_KEY) as sandbox:
        transport = ConnectionPerThread(plain)
        auth = httpx.BasicAuth("api", API_KEY)

        def send(thread: int) -> list[int]:
            ids = []
            for i in range(20):
                request = httpx.Request(
                    "POST",
                    f"{sandbox.url}/users",
                    json={"email": f"t{thread}-{i}@example.com"},
                    extensions=TIMEOUT,
                )
                request = next(auth.sync_auth_flow(request))
                response = transport.handle_request(request)
                response.read()
                ids.append(response.json())
            return ids

        threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        transport.close()
        assert len(sandbox.users()) == 80
        assert all(r.status == 200 for r in sandbox.requests)


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n1\r\n]\r\n0\r\n\r\n"
UNTIL_CLOSED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[1, 2]"  # no length


@pytest.mark.parametrize(
    ("answer", "body", "hang_up"),
    [
        (CHUNKED, b"[1]", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", False),  # no body, no length: kept open
        (UNTIL_CLOSED, b"[1, 2]", True),
        (ok(b"7", "Connection: close"), b"7", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n8", b"8", True),  # no keep-alive
    ],
)
def test_answers_of_every_framing_are_read_whole(answer: bytes, body: bytes, hang_up: bool) -> None:
    with ScriptedServer(lambda _: (answer, "hang up") if hang_up else answer) as server:
        connection = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        first, second = post(connection, url), post(connection, url)
        connection.close()
    assert first.content == second.content == body
    assert server.connections == (2 if hang_up else 1)  # a new connection only when it ended


# --- connections that end -------------------------------------------------------------


def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending() -> None:
    with ScriptedServer(lambda n: (ok(b"%d" % n), "then close")) as server:
        connection = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        answers = []
        for _ in range(3):
            answers.append(post(connection, url).json())
            time.sleep(0.05)  # the server's FIN arrives while the connection is idle
        connection.close()
    assert answers == [1, 2, 3]
    assert server.connections == 3  # each request on a new connection, none lost


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, httpx.RemoteProtocolError),  # hung up without answering
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n123", "cut"), httpx.RemoteProtocolError),
        ((b"HTTP/1.1 200 OK\r\nContent-Le", "cut"), httpx.RemoteProtocolError),
        ((b"SMTP ready\r\n\r\n", "not http"), httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * MAX_HEAD, httpx.RemoteProtocolError),
    ],
)
def test_a_broken_answer_is_a_transport_error_and_the_connection_is_dropped(
    reply: Reply, error: type[Exception]
) -> None:
    with ScriptedServer(lambda n: reply if n == 1 else ok(b"2")) as server:
        connection = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        with pytest.raises(error):
            post(connection, url)
        assert post(connection, url).json() == 2  # the next request gets a new connection
        connection.close()
    assert server.connections == 2


def test_a_server_that_does_not_answer_in_time_is_a_read_timeout() -> None:
    silence = threading.Event()

    def script(n: int) -> Reply:
        silence.wait(5)
        return ok()

    with ScriptedServer(script) as server:
        connection = plain()
        request = httpx.Request(
            "POST",
            f"http://127.0.0.1:{server.port}/rest/users",
            content=b"{}",
            extensions={"timeout": httpx.Timeout(0.2).as_dict()},
        )
        with pytest.raises(httpx.ReadTimeout):
            connection.handle_request(request)
        silence.set()
        connection.close()


def test_a_refused_connection_is_a_connect_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(httpx.ConnectError):
        post(plain(), f"http://127.0.0.1:{port}/rest/users")


@pytest.mark.parametrize(
    "headers",
    [{"X-Note": "a\r\nX-Injected: 1"}, {"X-Note": "a\nb"}, {"X-Note": "a\0b"}],
)
def test_a_header_that_would_split_the_request_is_refused_before_sending(
    headers: dict[str, str],
) -> None:
    with ScriptedServer(lambda _: ok()) as server:
        request = httpx.Request(
            "GET", f"http://127.0.0.1:{server.port}/", headers=headers, extensions=TIMEOUT
        )
        with pytest.raises(httpx.LocalProtocolError):
            plain().handle_request(request)
    assert server.connections == 0


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), "localhost")


def server_tls(certificate: tuple[Path, Path], alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    context.set_alpn_protocols(alpn)
    return context


def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    return context


def test_https_over_http11_verifies_the_certificate_and_keeps_the_connection(
    certificate: tuple[Path, Path],
) -> None:
    tls = server_tls(certificate, ["http/1.1"])
    with ScriptedServer(lambda n: ok(b"%d" % n), tls=tls) as server:
        url = f"https://localhost:{server.port}/rest/users"
        connection = KeepAliveConnection(trusting(certificate), http2=no_http2)
        assert [post(connection, url).json() for _ in range(3)] == [1, 2, 3]
        connection.close()
        with pytest.raises(httpx.ConnectError) as refused:  # a CA that did not sign it
            post(KeepAliveConnection(ssl.create_default_context(), http2=no_http2), url)
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    assert server.connections == 2


class Http2Server(SocketServer):
    """An HTTP/2 server over TLS (the h2 library) answering every request with ``42``."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(tls)
        self.requests = 0

    def _talk(self, raw: socket.socket) -> None:
        assert self.tls is not None
        try:
            conn = self.tls.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            return
        with conn, contextlib.suppress(OSError):  # the client hung up
            if conn.selected_alpn_protocol() != "h2":
                return
            h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            h2c.initiate_connection()
            conn.sendall(h2c.data_to_send())
            while data := conn.recv(65536):
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.StreamEnded):
                        self.requests += 1
                        h2c.send_headers(
                            event.stream_id, [(":status", "200"), ("content-length", "2")]
                        )
                        h2c.send_data(event.stream_id, b"42", end_stream=True)
                conn.sendall(h2c.data_to_send())


def test_a_server_that_picks_http2_is_spoken_to_in_http2(certificate: tuple[Path, Path]) -> None:
    tls = trusting(certificate)
    with Http2Server(server_tls(certificate, ["h2", "http/1.1"])) as server:
        connection = KeepAliveConnection(
            tls, http2=lambda: httpx.HTTPTransport(verify=tls, http2=True)
        )
        url = f"https://localhost:{server.port}/rest/users"
        answers = [post(connection, url) for _ in range(3)]
        connection.close()
    assert [a.http_version for a in answers] == ["HTTP/2"] * 3
    assert [a.json() for a in answers] == [42] * 3
    assert server.requests == 3
