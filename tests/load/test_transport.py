"""The connection under the client (httpx's, with a deadline and a size cap), against real servers.

The sandbox shows the happy path; a scripted socket server plays the answers a real
server may give now and then (closed connections, chunks, bodies without a length,
truncated, trickled or endless answers), and a TLS server shows certificates and HTTP/2.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from sync.load.transport import AnswerTooLarge, BoundedConnection, ConnectionPerThread
from sync.sandbox.server import SandboxServer
from tests.support import API_KEY, SocketServer, self_signed_certificate, wait_until

TIMEOUT = {"timeout": httpx.Timeout(5).as_dict()}

# What a scripted connection does with each request it reads: answer these bytes and go
# on (bytes), answer them and hang up (a tuple), or hang up at once (None).
Reply = bytes | tuple[bytes, str] | None


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


def plain(deadline_s: float = 5.0, max_answer_bytes: int = 2**20) -> BoundedConnection:
    return connection(ssl.create_default_context(), deadline_s, max_answer_bytes)


def connection(
    tls: ssl.SSLContext, deadline_s: float = 5.0, max_answer_bytes: int = 2**20
) -> BoundedConnection:
    return BoundedConnection(tls, deadline_s=deadline_s, max_answer_bytes=max_answer_bytes)


# --- the happy path -------------------------------------------------------------------


def test_requests_go_over_one_kept_alive_connection() -> None:
    with ScriptedServer(lambda n: ok(str(n).encode())) as server:
        kept = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        answers = [post(kept, url, b'{"n":%d}' % i) for i in range(5)]
        kept.close()
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
        kept = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        first, second = post(kept, url), post(kept, url)
        kept.close()
    assert first.content == second.content == body
    assert server.connections == (2 if hang_up else 1)  # a new connection only when it ended


# --- connections that end -------------------------------------------------------------


def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending() -> None:
    with ScriptedServer(lambda n: (ok(b"%d" % n), "then close")) as server:
        kept = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        answers = []
        for n in range(1, 4):
            answers.append(post(kept, url).json())
            # the server hangs up (its FIN arrives) while the connection is idle
            wait_until(lambda n=n: server.ended == n, what=f"the server to close connection {n}")
        kept.close()
    assert answers == [1, 2, 3]
    assert server.connections == 3  # each request on a new connection, none lost


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, httpx.RemoteProtocolError),  # hung up without answering
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n123", "cut"), httpx.RemoteProtocolError),
        ((b"HTTP/1.1 200 OK\r\nContent-Le", "cut"), httpx.RemoteProtocolError),
        ((b"SMTP ready\r\n\r\n", "not http"), httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * 120_000, httpx.RemoteProtocolError),
    ],
)
def test_a_broken_answer_is_a_transport_error_and_the_connection_is_dropped(
    reply: Reply, error: type[Exception]
) -> None:
    with ScriptedServer(lambda n: reply if n == 1 else ok(b"2")) as server:
        kept = plain()
        url = f"http://127.0.0.1:{server.port}/rest/users"
        with pytest.raises(error):
            post(kept, url)
        assert post(kept, url).json() == 2  # the next request gets a new connection
        kept.close()
    assert server.connections == 2


def test_a_server_that_does_not_answer_in_time_is_a_read_timeout() -> None:
    silence = threading.Event()

    def script(n: int) -> Reply:
        silence.wait(5)
        return ok()

    with ScriptedServer(script) as server:
        kept = plain()
        request = httpx.Request(
            "POST",
            f"http://127.0.0.1:{server.port}/rest/users",
            content=b"{}",
            extensions={"timeout": httpx.Timeout(0.2).as_dict()},
        )
        with pytest.raises(httpx.ReadTimeout):
            kept.handle_request(request)
        silence.set()
        kept.close()


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
    assert server.requests == []  # h11 refuses it once connected: not a byte of it is sent


# --- hostile servers --------------------------------------------------------------------


class TricklingServer(SocketServer):
    """Reads a request, then writes ``answer`` one byte at a time, ``pause`` apart."""

    def __init__(self, answer: bytes, pause: float) -> None:
        super().__init__()
        self.answer, self.pause = answer, pause
        self.gone = threading.Event()  # the client hung up

    def _talk(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            for byte in self.answer:
                conn.sendall(bytes([byte]))
                if self.gone.wait(self.pause):
                    return
        self.gone.set()


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"[" + b"1," * 200 + b"1]"),  # the body trickles
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * 10_000 + b"\r\n\r\n",  # the headers do
    ],
    ids=["body", "headers"],
)
def test_an_answer_trickled_a_byte_at_a_time_ends_at_the_deadline(answer: bytes) -> None:
    """Each byte comes well within the read timeout: only the request's deadline ends it."""
    with TricklingServer(answer, pause=0.05) as server:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            post(plain(deadline_s=0.5), f"http://127.0.0.1:{server.port}/rest/users")
        took = time.monotonic() - started
        server.gone.set()
    assert took < 5  # the answer would take 10 s; without the deadline it ran for all of it


class EndlessServer(SocketServer):
    """Answers with a chunked body that never ends; counts what it managed to send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def _talk(self, conn: socket.socket) -> None:
        chunk = b"10000\r\n" + b"[" * 0x10000 + b"\r\n"
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                conn.sendall(chunk)
                self.sent += len(chunk)


def test_an_endless_body_fails_the_request_at_the_size_cap() -> None:
    with EndlessServer() as server, pytest.raises(AnswerTooLarge, match="1,048,576 bytes"):
        post(plain(max_answer_bytes=2**20), f"http://127.0.0.1:{server.port}/rest/users")
    assert server.sent < 64 * 2**20  # the connection was closed soon after the cap


def test_the_sandbox_trickle_and_endless_faults_are_bounded_too() -> None:
    from sync.sandbox import Faults

    with SandboxServer(API_KEY, faults=Faults(trickle_rate=1.0, trickle_s=0.05)) as sandbox:
        url = f"{sandbox.url}/users"
        with pytest.raises(httpx.ReadTimeout):
            post(plain(deadline_s=0.5), url)
        sandbox.faults = Faults(endless_rate=1.0)
        with pytest.raises(AnswerTooLarge):
            post(plain(max_answer_bytes=2**20), url)


def test_the_pool_is_httpx_own_with_our_network_backend() -> None:
    """httpx offers no way to hand httpcore a network backend, so BoundedConnection
    replaces httpx's pool: if httpx renames it, this fails before a deadline goes missing."""
    import httpcore

    kept = plain()
    pool = getattr(kept, "_pool", None)
    assert isinstance(pool, httpcore.ConnectionPool)
    assert type(pool._network_backend).__name__ == "_DeadlineBackend"


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
        kept = connection(trusting(certificate))
        assert [post(kept, url).json() for _ in range(3)] == [1, 2, 3]
        kept.close()
        with pytest.raises(httpx.ConnectError) as refused:  # a CA that did not sign it
            post(plain(), url)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
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
        http2 = connection(tls)
        url = f"https://localhost:{server.port}/rest/users"
        answers = [post(http2, url) for _ in range(3)]
        http2.close()
    assert [a.http_version for a in answers] == ["HTTP/2"] * 3
    assert [a.json() for a in answers] == [42] * 3
    assert server.requests == 3


class HelloCatcher(SocketServer):
    """Keeps the first bytes a client sends (a TLS ClientHello, in clear), then hangs up."""

    def __init__(self) -> None:
        super().__init__()
        self.hello: list[bytes] = []

    def _talk(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            self.hello.append(conn.recv(4096))


def test_the_client_offers_http2_when_it_speaks_tls() -> None:
    """HTTP/2 is negotiated by ALPN: the TLS ClientHello must offer "h2"."""
    from pydantic import SecretStr

    from sync.config import PersonyzeSettings
    from sync.errors import SyncError
    from sync.load.client import PersonyzeClient

    with HelloCatcher() as server:
        settings = PersonyzeSettings(
            api_key=SecretStr("k"),
            base_url=f"https://127.0.0.1:{server.port}/rest",
            max_attempts=1,
            requests_per_second=None,
            timeout_s=5,
        )
        with PersonyzeClient(settings) as client, pytest.raises(SyncError):
            client.check_key()
        hello = wait_until(lambda: server.hello, timeout=5, what="the ClientHello")[0]
    assert hello[:1] == b"\x16"  # a TLS handshake record
    assert b"\x02h2" in hello and b"\x08http/1.1" in hello
