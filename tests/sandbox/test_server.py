"""The sandbox over real HTTP, as the sync's httpx client sees it."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from sync.sandbox import Faults, RecordedRequest, SandboxServer
from tests.support import API_KEY, sandbox_client


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with sandbox_client(sandbox) as c:
        yield c


def plain_400(response: httpx.Response, contains: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert contains in response.text


def test_url_and_port(sandbox: SandboxServer) -> None:
    assert sandbox.port > 0
    assert sandbox.url == f"http://127.0.0.1:{sandbox.port}/rest"


@pytest.mark.parametrize(
    ("auth_header", "body"),
    [
        (None, "Please, log in"),
        ("Bearer " + API_KEY, "Please, log in"),
        ("Basic !!!notbase64", "Please, log in"),
        ("Basic " + b64("someone:" + API_KEY), "Please, log in"),
        ("Basic " + b64("api" + API_KEY), "Please, log in"),  # no colon
        ("Basic " + b64("api:wrong"), "Invalid API key"),
        ("Basic " + b64("api:"), "Invalid API key"),
    ],
)
@pytest.mark.parametrize("target", ["/account", "/users/order_by/user_id"])
def test_auth_refusals(
    sandbox: SandboxServer, auth_header: str | None, body: str, target: str
) -> None:
    headers = {} if auth_header is None else {"Authorization": auth_header}
    with httpx.Client(base_url=sandbox.url, timeout=5) as c:
        response = c.get(target, headers=headers)
    assert response.status_code == 401
    assert response.text == body
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_account(client: httpx.Client) -> None:
    response = client.get("/account")
    assert response.status_code == 200
    assert response.json() == {"account_id": 1, "name": "sandbox"}


def test_post_get_put_delete_roundtrip(sandbox: SandboxServer, client: httpx.Client) -> None:
    assert client.post("/users", json={"email": "a@x.com", "firstName": "Ann"}).json() == 1
    assert client.post("/users", json={"internal_id": "b", "custom_i_1": 5}).json() == 2
    merged = client.post("/users", json={"email": "a@x.com", "lastName": "Lee", "x": ""})
    assert merged.status_code == 200
    assert merged.headers["content-type"] == "application/json"
    assert merged.json() == 1

    one = client.get("/users/1").json()
    assert one["email"] == "a@x.com"
    assert one["first_name"] == "Ann"
    assert one["last_name"] == "Lee"
    assert "x" not in one
    assert isinstance(one["data_last_modified"], int)
    assert client.get("/users/1/columns/user_id,lastName").json() == {
        "user_id": 1,
        "last_name": "Lee",
    }

    listed = client.get("/users/order_by_desc/user_id/columns/user_id,internal_id").json()
    assert listed == [{"user_id": 2, "internal_id": "b"}, {"user_id": 1, "internal_id": None}]

    assert client.put("/users/where/custom_i_1>=5", json={"city": "Oslo"}).json() == 1
    assert client.put("/users/1", json={"city": "Rome"}).json() == 1
    assert client.put("/users/99", json={"city": "Rome"}).json() == 0
    assert client.get("/users/where/city:Oslo,Rome/column/city").json() == ["Rome", "Oslo"]

    assert client.delete("/users/where/city=Oslo").json() == 1
    assert client.delete("/users/1").json() == 1
    assert client.delete("/users/1").json() == 0
    assert sandbox.users() == []


def test_percent_encoded_values(sandbox: SandboxServer, client: httpx.Client) -> None:
    email = "we/ird&x=y,z|w:v%+1@x.com"
    uid = client.post("/users", json={"email": email}).json()
    client.post("/users", json={"email": "other@x.com"})
    response = client.get(f"/users/where/email={quote(email, safe='@+')}/column/user_id")
    assert response.json() == [uid]
    # httpx percent-encodes < and > in paths; they still work as operators
    assert client.get("/users/where/user_id>1/limit/50/column/email").json() == ["other@x.com"]
    assert client.get("/users/where/user_id<=1/limit/50/column/email").json() == [email]


def test_single_id_not_found(client: httpx.Client) -> None:
    plain_400(client.get("/users/57291"), "Row not found")
    plain_400(client.post("/users", json={"user_id": 57291, "email": "a@x.com"}), "Row not found")


@pytest.mark.parametrize(
    ("method", "target", "content", "message"),
    [
        ("POST", "/users", b"[1]", "must be a JSON object"),
        ("POST", "/users", b"{nope", "not valid JSON"),
        ("POST", "/users", b"", "was empty"),
        ("POST", "/users", b'{"a": NaN}', "not valid JSON"),
        ("POST", "/users", b'{"tags": [1]}', "Column tags: nested"),
        ("POST", "/users/5", b"{}", "takes no path modifiers"),
        ("PUT", "/users/where/a=1", b'{"b": {}}', "Column b: nested"),
        ("PUT", "/users", b'{"b": 1}', "needs a user id or a where condition"),
        ("DELETE", "/users", b"", "needs a user id or a where condition"),
        ("GET", "/users/limit/10", b"", "indexed column"),
        ("GET", "/users/order_by/first_name", b"", "indexed column"),
        ("GET", "/users/order_by/user_id/limit/1001", b"", "must not exceed 1000"),
        ("GET", "/users/where/user_id>0/limit/990,11", b"", "must not exceed 1000"),
        ("GET", "/users/where/a", b"", "no operator"),
        ("GET", "/users/where/a=1/where/b=2", b"", "given twice"),
        ("GET", "/users/frobnicate/1", b"", "Unknown modifier"),
    ],
)
def test_400s_are_plain_text(
    client: httpx.Client, method: str, target: str, content: bytes, message: str
) -> None:
    response = client.request(
        method, target, content=content, headers={"Content-Type": "application/json"}
    )
    plain_400(response, message)


def test_limits_window_in_wiki_mode_too() -> None:
    with (
        SandboxServer(API_KEY, internal_id_merges=True) as api,
        sandbox_client(api) as c,
    ):
        plain_400(c.get("/users/order_by/user_id/limit/500,501"), "must not exceed 1000")
        assert c.post("/users", json={"internal_id": "x"}).json() == 1
        assert c.post("/users", json={"internal_id": "x", "a": 1}).json() == 1
        assert c.get("/users/where/internal_id=x/column/a").json() == [1]


def test_live_mode_duplicates_on_internal_id(sandbox: SandboxServer, client: httpx.Client) -> None:
    assert client.post("/users", json={"internal_id": "x"}).json() == 1
    assert client.post("/users", json={"internal_id": "x"}).json() == 2
    assert client.get("/users/where/internal_id=x").json() == []
    assert [u["internal_id"] for u in sandbox.users()] == ["x", "x"]


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    for target in ("/orders", "/", "/users2/x"):
        response = client.get(target)
        assert response.status_code == 404, target
        assert response.headers["content-type"].startswith("text/plain")
    response = client.get(client.base_url.copy_with(path="/elsewhere"))
    assert response.status_code == 404
    response = client.patch("/users/1", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, PUT, DELETE"
    assert client.post("/account", json={}).status_code == 405


def test_keep_alive_and_request_log(sandbox: SandboxServer, client: httpx.Client) -> None:
    for i in range(20):
        assert client.post("/users", json={"email": f"u{i}@x.com"}).status_code == 200
    log = sandbox.requests
    assert len(log) == 20
    first = log[0]
    assert isinstance(first, RecordedRequest)
    assert (first.method, first.path, first.status, first.fault) == (
        "POST",
        "/rest/users",
        200,
        None,
    )
    assert first.body == {"email": "u0@x.com"}
    assert first.start <= first.end <= log[1].start
    log.clear()  # a copy
    assert len(sandbox.requests) == 20
    sandbox.clear_requests()
    assert sandbox.requests == []
    client.get("/users/where/user_id%3E0/limit/1")
    assert sandbox.requests[0].path == "/rest/users/where/user_id%3E0/limit/1"
    assert sandbox.requests[0].body is None
    sandbox.reset()
    assert sandbox.users() == []
    assert sandbox.requests == []


def test_fault_error_and_rate_limit(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.faults = Faults(error_rate=1.0)
    statuses = {client.post("/users", json={"email": f"{i}@x.com"}).status_code for i in range(20)}
    assert statuses == {500, 503}
    assert sandbox.users() == []  # not applied
    assert client.get("/account").status_code == 200  # account is spared by default

    sandbox.faults = Faults(rate_limit_rate=1.0, retry_after_s=2)
    response = client.post("/users", json={"email": "a@x.com"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    sandbox.faults = Faults(rate_limit_rate=1.0, retry_after_s=None)
    response = client.get("/users/order_by/user_id")
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    sandbox.faults = Faults(rate_limit_rate=1.0, include_account=True)
    assert client.get("/account").status_code == 429
    assert sandbox.users() == []
    assert {r.fault for r in sandbox.requests if r.status in (429, 500, 503)} == {
        "error",
        "rate_limit",
    }

    sandbox.faults = Faults()
    assert client.post("/users", json={"email": "a@x.com"}).json() == 1


def test_fault_drop(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/users", json={"email": "a@x.com"})
    assert sandbox.users() == []
    last = sandbox.requests[-1]
    assert (last.status, last.fault) == (None, "drop")
    sandbox.faults = Faults()
    assert client.post("/users", json={"email": "a@x.com"}).json() == 1  # reconnects


def test_fault_lost_answer_applies_the_write(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(lost_answer_rate=1.0, seed=7)
    outcomes: list[int | str] = []
    with sandbox_client(sandbox) as c:
        for i in range(12):
            try:
                outcomes.append(c.post("/users", json={"email": f"u{i}@x.com"}).status_code)
            except httpx.RemoteProtocolError:
                outcomes.append("dropped")
    assert set(outcomes) == {500, "dropped"}
    assert [u["email"] for u in sandbox.users()] == [f"u{i}@x.com" for i in range(12)]
    assert {r.fault for r in sandbox.requests} == {"lost_answer"}


def test_faults_are_deterministic_with_a_seed(sandbox: SandboxServer) -> None:
    def run() -> list[int | None]:
        sandbox.faults = Faults(error_rate=0.3, rate_limit_rate=0.2, seed=42)
        sandbox.clear_requests()
        with sandbox_client(sandbox) as c:
            for _ in range(40):
                c.get("/users/order_by/user_id/limit/1")
        return [r.status for r in sandbox.requests]

    first = run()
    assert first == run()
    assert {200, 429} <= set(first)
    assert set(first) & {500, 503}
    assert set(first) <= {200, 429, 500, 503}


def test_fault_latency(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.faults = Faults(latency_s=0.05, latency_jitter_s=0.02)
    started = time.monotonic()
    assert client.get("/users/order_by/user_id").status_code == 200
    assert time.monotonic() - started >= 0.05
    recorded = sandbox.requests[-1]
    assert 0.05 <= recorded.end - recorded.start < 1.0
    assert recorded.fault is None


def test_faults_validate_rates() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="exceed 1"):
        Faults(error_rate=0.6, drop_rate=0.6)


def test_stop_closes_idle_keep_alive_connections() -> None:
    api = SandboxServer(API_KEY).start()
    c = sandbox_client(api)
    try:
        assert c.get("/account").status_code == 200
        api.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/account")
    finally:
        c.close()
        api.stop()


def test_concurrent_clients(sandbox: SandboxServer) -> None:
    errors: list[httpx.HTTPError] = []

    def work(n: int) -> None:
        try:
            with sandbox_client(sandbox) as c:
                for i in range(25):
                    c.post("/users", json={"email": f"t{n}-{i}@x.com", "n": n})
                    c.post("/users", json={"email": f"t{n}-{i}@x.com", "seen": True})
        except httpx.HTTPError as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    users = sandbox.users()
    assert len(users) == 200
    assert all(u["seen"] is True for u in users)
    assert [u["user_id"] for u in users] == list(range(1, 201))


def test_a_burst_of_new_connections_is_queued_not_dropped() -> None:
    """Sixty-four clients connecting at once all get through the TCP handshake while
    the server is not accepting yet.

    socketserver's default listen backlog is 5: the kernel drops the SYNs beyond it
    and each such client waits a second for its retransmission, which alone cost the
    50 ms benchmark a tenth of its rate when 32 connections opened at once.
    """
    api = SandboxServer(API_KEY)
    httpd = api._bind()  # listening, but nothing accepts until serve_forever runs
    clients: list[socket.socket] = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection((api.host, api.port), timeout=0.5))
    finally:
        for conn in clients:
            conn.close()
        httpd.server_close()
    assert len(clients) == 64
