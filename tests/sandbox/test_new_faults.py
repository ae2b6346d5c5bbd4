"""The newer faults over real HTTP (wrong shape, late apply, the rate limit, trickled
answers, endless bodies), their validation, and the ``sandbox`` command's options."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from click.testing import CliRunner

from sync.cli import cli
from sync.sandbox import Faults, SandboxServer
from sync.sandbox.faults import FaultDrawer, TokenBucket
from tests.support import (
    API_KEY,
    FakeClock,
    free_port,
    sandbox_client,
    script,
    wait_until,
)

# --- wrong shape -----------------------------------------------------------------


def test_wrong_shape_answers_an_object_to_reads(sandbox: SandboxServer) -> None:
    sandbox.store.upsert({"email": "a@x.com"})
    sandbox.faults = Faults(wrong_shape_rate=1.0, include_account=True)
    with sandbox_client(sandbox) as c:
        for target in ("/users/order_by/user_id", "/users/where/email=a@x.com", "/users/1"):
            response = c.get(target)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"result": "ok"}, target
        # writes drawn for it are served normally, and so is the account
        assert c.post("/users", json={"email": "b@x.com"}).json() == 2
        assert c.put("/users/2", json={"n": 1}).json() == 1
        assert c.get("/account").json() == {"account_id": 1, "name": "sandbox"}
    assert [r.fault for r in sandbox.requests] == ["wrong_shape"] * 3 + [None] * 3
    assert [u["email"] for u in sandbox.users()] == ["a@x.com", "b@x.com"]
    sandbox.faults = Faults()
    with sandbox_client(sandbox) as c:
        assert c.get("/users/order_by/user_id/column/user_id").json() == [1, 2]


def test_wrong_shape_is_deterministic_with_a_seed(sandbox: SandboxServer) -> None:
    def run() -> list[bool]:
        sandbox.faults = Faults(wrong_shape_rate=0.5, seed=11)
        with sandbox_client(sandbox) as c:
            return [isinstance(c.get("/users/order_by/user_id").json(), list) for _ in range(30)]

    first = run()
    assert first == run()
    assert set(first) == {True, False}


# --- late apply ------------------------------------------------------------------


def test_late_apply_lands_after_the_client_gave_up(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(late_apply_rate=1.0, late_apply_s=1.0)
    assert sandbox.late_pending() == 0
    with sandbox_client(sandbox, timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/users", json={"email": "a@x.com"})
    wait_until(lambda: sandbox.late_pending() == 1)
    assert sandbox.users() == []  # not yet: the client gave up before the change landed
    wait_until(lambda: sandbox.late_pending() == 0)
    assert [u["email"] for u in sandbox.users()] == ["a@x.com"]
    (recorded,) = sandbox.requests
    assert (recorded.method, recorded.status, recorded.fault) == ("POST", None, "late_apply")
    assert recorded.end - recorded.start >= 1.0


def test_late_apply_covers_put_and_delete_and_spares_reads(sandbox: SandboxServer) -> None:
    sandbox.store.upsert({"email": "a@x.com", "n": 1})
    sandbox.store.upsert({"email": "b@x.com"})
    sandbox.faults = Faults(late_apply_rate=1.0, late_apply_s=0.5)
    with sandbox_client(sandbox, timeout=0.1) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.put("/users/where/email=a@x.com", json={"n": 2})
        with pytest.raises(httpx.ReadTimeout):
            c.delete("/users/2")
        assert c.get("/users/1/column/n").json() == 1  # a read is served at once
    wait_until(lambda: sandbox.late_pending() == 0)
    assert [(u["email"], u["n"]) for u in sandbox.users()] == [("a@x.com", 2)]
    assert [r.fault for r in sandbox.requests if r.method == "GET"] == [None]
    assert {r.fault for r in sandbox.requests if r.method != "GET"} == {"late_apply"}


def test_a_late_write_overwrites_a_newer_one(sandbox: SandboxServer) -> None:
    """The hazard the fault exists for: a resend lands first, the lost original after."""
    sandbox.faults = Faults(late_apply_rate=1.0, late_apply_s=0.5)
    with sandbox_client(sandbox, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/users", json={"email": "a@x.com", "n": "old"})
    sandbox.faults = Faults()
    with sandbox_client(sandbox) as c:
        assert c.post("/users", json={"email": "a@x.com", "n": "new"}).json() == 1
    wait_until(lambda: sandbox.late_pending() == 0)
    assert [u["n"] for u in sandbox.users()] == ["old"]


def test_stop_abandons_late_writes_without_waiting() -> None:
    api = SandboxServer(API_KEY, faults=Faults(late_apply_rate=1.0, late_apply_s=60)).start()
    try:
        with sandbox_client(api, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
            c.post("/users", json={"email": "a@x.com"})
        wait_until(lambda: api.late_pending() == 1)
    finally:
        started = time.monotonic()
        api.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 5
    wait_until(lambda: api.late_pending() == 0)
    assert api.users() == []  # abandoned, never applied


# --- validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wrong_shape_rate": 1.5}, "wrong_shape_rate must be between 0 and 1"),
        ({"late_apply_rate": -0.1}, "late_apply_rate must be between 0 and 1"),
        ({"late_apply_rate": 0.6, "wrong_shape_rate": 0.6}, "exceed 1"),
        ({"late_apply_rate": 0.5, "error_rate": 0.3, "drop_rate": 0.3}, "exceed 1"),
        ({"late_apply_s": -1}, "late_apply_s must not be negative"),
        ({"trickle_rate": 1.1}, "trickle_rate must be between 0 and 1"),
        ({"endless_rate": -0.5}, "endless_rate must be between 0 and 1"),
        ({"trickle_rate": 0.5, "endless_rate": 0.6}, "exceed 1"),
        ({"endless_rate": 0.5, "error_rate": 0.6}, "exceed 1"),
        ({"trickle_s": -0.1}, "trickle_s must not be negative"),
        ({"limit_rps": 0}, "limit_rps must be a positive number"),
        ({"limit_rps": -3}, "limit_rps must be a positive number"),
        ({"limit_rps": 5, "limit_burst": 0.5}, "limit_burst must be at least 1"),
    ],
)
def test_new_faults_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults(**kwargs)  # type: ignore[arg-type]


def test_new_fault_defaults() -> None:
    faults = Faults()
    assert (faults.wrong_shape_rate, faults.late_apply_rate, faults.late_apply_s) == (0, 0, 3.0)
    Faults(wrong_shape_rate=0.5, late_apply_rate=0.5)  # exactly 1 is allowed
    assert (faults.trickle_rate, faults.trickle_s, faults.endless_rate) == (0, 0.5, 0)
    assert (faults.limit_rps, faults.limit_burst) == (None, None)
    Faults(trickle_rate=0.5, endless_rate=0.25, error_rate=0.25)
    # the bucket: one second's worth by default, at least one token
    assert Faults(limit_rps=20).burst == 20
    assert Faults(limit_rps=0.2).burst == 1
    assert Faults(limit_rps=20, limit_burst=3).burst == 3


# --- the draw: where the new kinds sit ------------------------------------------


def test_token_bucket_refills_caps_and_says_when() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == 1  # a token in 0.5 s, rounded up
    clock.now += 0.5
    assert [bucket.take(), bucket.take()] == [True, False]
    clock.now += 100  # refills to the burst, no further
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    slow = TokenBucket(rate=0.25, burst=1, clock=clock)
    assert [slow.take(), slow.take()] == [True, False]
    assert slow.retry_after() == 4
    clock.now += 3.5
    assert (slow.take(), slow.retry_after()) == (False, 1)
    clock.now += 0.5
    assert slow.take()


def test_the_limit_gate_comes_first_and_takes_no_draw() -> None:
    clock = FakeClock(100.0)
    plain = FaultDrawer(Faults(error_rate=0.5, seed=5))
    gated = FaultDrawer(Faults(error_rate=0.5, seed=5, limit_rps=1, limit_burst=2), clock)
    served: list[str | None] = []
    for _ in range(10):
        a, b, refused = gated.draw("users"), gated.draw("users"), gated.draw("users", "POST")
        assert (refused.fault, refused.retry_after, refused.latency) == ("limit_rps", 1, 0.0)
        served += [a.fault, b.fault]
        clock.now += 2
    # the requests let through see exactly the sequence they would see with no limit
    assert served == [plain.draw("users").fault for _ in range(20)]
    assert set(served) == {"error", None}
    assert gated.limited() == 10
    # out of the fault scope: not counted, not limited
    assert {gated.draw("account").fault for _ in range(5)} == {None}
    assert gated.limited() == 10
    gated.configure(Faults(limit_rps=1, limit_burst=1, writes_only=True))
    assert [gated.draw("users", "GET").fault for _ in range(3)] == [None] * 3
    assert [gated.draw("users", "PUT").fault for _ in range(2)] == [None, "limit_rps"]
    gated.configure(Faults(limit_rps=1, limit_burst=1, include_account=True))  # full again
    assert [gated.draw("account").fault for _ in range(2)] == [None, "limit_rps"]
    gated.reset_limited()
    assert gated.limited() == 0


def test_trickle_and_endless_join_the_seeded_draw() -> None:
    def kinds() -> list[str | None]:
        drawer = FaultDrawer(Faults(trickle_rate=0.3, endless_rate=0.3, error_rate=0.2, seed=9))
        return [drawer.draw("users", "POST").fault for _ in range(200)]

    first = kinds()
    assert first == kinds()
    assert set(first) == {"trickle", "endless", "error", None}


# --- the rate limit over HTTP ---------------------------------------------------


def test_limit_rps_answers_429_beyond_the_bucket(sandbox: SandboxServer) -> None:
    started = time.monotonic()  # before the bucket exists: bounds what it can refill
    sandbox.faults = Faults(limit_rps=5)  # burst: one second's worth, 5
    served = limited = 0
    with sandbox_client(sandbox) as c:
        deadline = time.monotonic() + 20
        while served < 8:  # the burst, then 3 more refilled: wait on that, not a clock
            assert time.monotonic() < deadline, "the bucket never refilled"
            response = c.post("/users", json={"email": f"u{served + limited}@x.com"})
            if response.status_code == 429:
                limited += 1
                assert response.headers["retry-after"] == "1"
                assert response.text == "Too many requests"
            else:
                assert response.status_code == 200, response.text
                served += 1
    elapsed = time.monotonic() - started
    assert served <= 5 + 5 * elapsed + 1
    assert limited >= 1
    assert sandbox.limited() == limited
    assert len(sandbox.users()) == served  # a refused write is not applied
    log = sandbox.requests
    assert sum(1 for r in log if r.fault == "limit_rps" and r.status == 429) == limited
    assert sum(1 for r in log if r.fault is None and r.status == 200) == served
    sandbox.reset()
    assert sandbox.limited() == 0


def test_limit_rps_serves_everything_within_it(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(limit_rps=1000, limit_burst=50)
    with sandbox_client(sandbox) as c:
        statuses = {c.get("/users/order_by/user_id").status_code for _ in range(40)}
    assert statuses == {200}
    assert sandbox.limited() == 0
    sandbox.faults = Faults(limit_rps=1, limit_burst=1)
    with sandbox_client(sandbox) as c:
        assert [c.get("/users/order_by/user_id").status_code for _ in range(3)] == [200, 429, 429]
        # once a token is free again the next request is served: wait on that condition
        wait_until(lambda: c.get("/users/order_by/user_id").status_code == 200)


def test_limit_rps_counts_only_the_fault_scope(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(limit_rps=0.5, limit_burst=1, writes_only=True)
    with sandbox_client(sandbox) as c:
        assert {c.get("/users/order_by/user_id").status_code for _ in range(10)} == {200}
        assert {c.get("/account").status_code for _ in range(5)} == {200}
        assert c.post("/users", json={"email": "a@x.com"}).status_code == 200
        response = c.put("/users/1", json={"n": 1})
        assert response.status_code == 429
        assert response.headers["retry-after"] in ("1", "2")  # 2 s a token, rounded up
    assert sandbox.limited() == 1
    assert [u.get("n") for u in sandbox.users()] == [None]  # the refused PUT not applied
    sandbox.faults = Faults(limit_rps=0.5, limit_burst=1, include_account=True)
    with sandbox_client(sandbox) as c:
        assert [c.get("/account").status_code for _ in range(2)] == [200, 429]
        assert c.get("/users/1").status_code == 429  # one bucket for both
    assert sandbox.limited() == 3


def test_limit_rps_is_thread_safe(sandbox: SandboxServer) -> None:
    started = time.monotonic()
    sandbox.faults = Faults(limit_rps=20, limit_burst=10)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        with sandbox_client(sandbox) as c:
            mine = [c.get("/users/order_by/user_id").status_code for _ in range(30)]
        with lock:
            statuses.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    assert len(statuses) == 240 and set(statuses) <= {200, 429}
    served = statuses.count(200)
    assert 10 <= served <= 10 + 20 * elapsed + 1
    assert sandbox.limited() == statuses.count(429) > 0


# --- trickled answers -----------------------------------------------------------


def raw_request(api: SandboxServer, method: str, target: str, body: bytes = b"") -> socket.socket:
    """A connection with one request sent (Connection: close), for reading raw bytes."""
    auth = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    sock = socket.create_connection((api.host, api.port), timeout=10)
    sock.sendall(
        f"{method} /rest{target} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    return sock


def read_all(sock: socket.socket) -> list[bytes]:
    """Every recv() until the server closes: the pieces as they arrived."""
    pieces = []
    while piece := sock.recv(65536):
        pieces.append(piece)
    return pieces


def test_trickle_sends_the_answer_byte_by_byte(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(trickle_rate=1.0, trickle_s=0.01)
    started = time.monotonic()
    with raw_request(sandbox, "GET", "/users/order_by/user_id") as sock:
        pieces = read_all(sock)
    elapsed = time.monotonic() - started
    data = b"".join(pieces)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")  # the status line trickles too
    assert b"\r\nContent-Type: application/json\r\n" in data
    assert data.endswith(b"\r\n\r\n[]")
    assert elapsed >= (len(data) - 1) * 0.01
    assert len(pieces) >= len(data) // 2  # a byte at a time (a busy client may merge a few)
    assert sum(1 for p in pieces if len(p) == 1) >= len(pieces) // 2
    (recorded,) = sandbox.requests
    assert (recorded.status, recorded.fault) == (200, "trickle")


def test_a_trickled_write_is_applied_and_answered_in_full(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(trickle_rate=1.0, trickle_s=0.001)
    with sandbox_client(sandbox) as c:  # each read waits 1 ms: no read timeout ever trips
        assert c.post("/users", json={"email": "a@x.com"}).json() == 1
        assert c.put("/users/1", json={"n": 2}).json() == 1
    assert [(u["email"], u["n"]) for u in sandbox.users()] == [("a@x.com", 2)]
    assert {r.fault for r in sandbox.requests} == {"trickle"}


def test_a_client_leaving_a_trickle_leaves_the_server_healthy(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(trickle_rate=1.0, trickle_s=0.05)
    with raw_request(sandbox, "GET", "/users/order_by/user_id") as sock:
        assert sock.recv(1) == b"H"
    wait_until(lambda: len(sandbox.requests) == 1)  # the server noticed, and stopped writing
    assert (sandbox.requests[0].status, sandbox.requests[0].fault) == (None, "trickle")
    sandbox.faults = Faults()
    with sandbox_client(sandbox) as c:
        assert c.get("/users/order_by/user_id").json() == []


def test_stop_ends_a_trickle_at_once() -> None:
    api = SandboxServer(API_KEY, faults=Faults(trickle_rate=1.0, trickle_s=60)).start()
    try:
        sock = raw_request(api, "GET", "/users/order_by/user_id")
        assert sock.recv(1) == b"H"
    finally:
        started = time.monotonic()
        api.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 5
    with sock:
        assert read_all(sock) == []  # nothing more was written
    wait_until(lambda: len(api.requests) == 1)
    assert api.requests[0].status is None


# --- endless bodies -------------------------------------------------------------


def test_an_endless_body_keeps_coming_until_the_client_leaves(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(endless_rate=1.0)
    received = bytearray()
    with (
        sandbox_client(sandbox) as c,
        c.stream("GET", "/users/order_by/user_id") as response,
    ):
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"] == "application/json"
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) > 2**20:
                break
    assert received.startswith(b'[{"user_id":1},{"user_id":1},')
    assert len(received) > 2**20
    # the client closed: the handler stops writing and its request is logged
    wait_until(lambda: len(sandbox.requests) == 1)
    assert (sandbox.requests[0].status, sandbox.requests[0].fault) == (200, "endless")
    sandbox.faults = Faults()
    with sandbox_client(sandbox) as c:
        assert c.get("/users/order_by/user_id").json() == []


def test_a_write_drawn_for_endless_is_not_applied(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(endless_rate=1.0)
    with raw_request(sandbox, "POST", "/users", b'{"email": "a@x.com"}') as sock:
        received = b""
        while len(received) < 200_000:
            piece = sock.recv(65536)
            assert piece, "the endless body ended"
            received += piece
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in received
    wait_until(lambda: len(sandbox.requests) == 1)
    assert sandbox.users() == []
    sandbox.faults = Faults()
    with sandbox_client(sandbox) as c:
        assert c.post("/users", json={"email": "b@x.com"}).json() == 1


def test_stop_ends_an_endless_body_nobody_reads() -> None:
    api = SandboxServer(API_KEY, faults=Faults(endless_rate=1.0)).start()
    try:
        sock = raw_request(api, "GET", "/users/order_by/user_id")
        assert sock.recv(5) == b"HTTP/"  # then never read again: the server's send blocks
    finally:
        started = time.monotonic()
        api.stop()
        stopped_in = time.monotonic() - started
    sock.close()
    assert stopped_in < 5
    wait_until(lambda: len(api.requests) == 1)
    assert api.requests[0].fault == "endless"


# --- the sandbox command ----------------------------------------------------------

FAULT_OPTIONS = (
    "--latency-ms",
    "--jitter-ms",
    "--error-rate",
    "--rate-limit-rate",
    "--retry-after",
    "--drop-rate",
    "--lost-answer-rate",
    "--wrong-shape-rate",
    "--late-apply-rate",
    "--late-apply-s",
    "--trickle-rate",
    "--trickle-s",
    "--endless-rate",
    "--limit-rps",
    "--limit-burst",
    "--include-account",
    "--writes-only",
    "--seed",
)


def test_sandbox_help_lists_the_fault_options() -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--help"])
    assert result.exit_code == 0, result.output
    for option in FAULT_OPTIONS:
        assert option in result.output, option
    assert "[default: 8742]" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--error-rate", "0.6", "--drop-rate", "0.6"], "exceed 1"),
        (["--trickle-rate", "1.5"], "0<=x<=1"),
        (["--limit-rps", "0"], "x>0"),
        (["--limit-burst", "0.5", "--limit-rps", "3"], "x>=1"),
        (["--retry-after", "soon"], "neither seconds nor 'none'"),
    ],
)
def test_sandbox_refuses_bad_fault_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--port", "0", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.fixture
def sandbox_command() -> Iterator[Callable[..., SandboxServer]]:
    """Start ``personyze-sync sandbox ARGS`` on a free port; a handle to talk to it.

    The handle is a stopped SandboxServer used only for its host, port and url.
    """
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> SandboxServer:
        port = free_port()
        proc = subprocess.Popen(
            [script(), "sandbox", "--port", str(port), "--api-key", API_KEY, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        handle = SandboxServer(API_KEY, port=port)

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:  # /rest/account is outside the faults' scope: it never uses a token
                return httpx.get(f"{handle.url}/account", auth=("api", API_KEY)).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30, what="the sandbox command")
        return handle

    yield start
    for proc in started:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the command stops its server and exits 0
        try:
            _, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        assert proc.returncode == 0, stderr
        assert "sandbox Personyze API at http://127.0.0.1:" in stderr


def test_sandbox_command_rate_limits(sandbox_command: Callable[..., SandboxServer]) -> None:
    api = sandbox_command("--limit-rps", "0.5", "--limit-burst", "1")
    with sandbox_client(api) as c:
        assert c.get("/users/order_by/user_id").status_code == 200
        response = c.get("/users/order_by/user_id")
        assert response.status_code == 429
        assert response.headers["retry-after"] in ("1", "2")


def test_sandbox_command_errors_writes_only(sandbox_command: Callable[..., SandboxServer]) -> None:
    api = sandbox_command("--error-rate", "1", "--writes-only", "--seed", "1")
    with sandbox_client(api) as c:
        assert c.get("/users/order_by/user_id").status_code == 200
        assert c.post("/users", json={"email": "a@x.com"}).status_code in (500, 503)
        assert c.get("/users/order_by/user_id").json() == []


def test_sandbox_command_trickles(sandbox_command: Callable[..., SandboxServer]) -> None:
    api = sandbox_command("--trickle-rate", "1", "--trickle-s", "0.01")
    started = time.monotonic()
    with raw_request(api, "GET", "/users/order_by/user_id") as sock:
        pieces = read_all(sock)
    data = b"".join(pieces)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"[]")
    assert time.monotonic() - started >= (len(data) - 1) * 0.01
    assert len(pieces) >= len(data) // 2


def test_sandbox_command_endless(sandbox_command: Callable[..., SandboxServer]) -> None:
    api = sandbox_command("--endless-rate", "1", "--latency-ms", "50")
    received = 0
    started = time.monotonic()
    with sandbox_client(api) as c, c.stream("GET", "/users/order_by/user_id") as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > 2**20:
                break
    assert received > 2**20
    assert time.monotonic() - started >= 0.05
    with sandbox_client(api) as c:  # still healthy after the client left
        assert c.get("/account").json() == {"account_id": 1, "name": "sandbox"}
