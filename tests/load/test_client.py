"""PersonyzeClient against the sandbox over real HTTP on loopback.

Nothing of httpx or of the server is mocked; ``sleep`` is injected so the waits the
client would make are recorded instead of slept, and the tests stay fast.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest

from sync.config import PersonyzeSettings
from sync.errors import AuthError, ConfigError, FatalError, RejectedError, RetriableError
from sync.load.client import RANGE_PAGE, PersonyzeClient
from sync.load.transport import ConnectionPerThread
from sync.sandbox import Faults, SandboxServer
from tests.support import API_KEY, FakeClock, LoopbackServer, wait_until


def settings(url: str, **overrides: Any) -> PersonyzeSettings:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": url,
        "requests_per_second": None,
        "timeout_s": 5,
        "max_attempts": 4,
    }
    values.update(overrides)
    return PersonyzeSettings(**values)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sandbox: SandboxServer, sleeps: list[float]) -> Iterator[PersonyzeClient]:
    with PersonyzeClient(settings(sandbox.url), sleep=sleeps.append) as c:
        yield c


def without_stamp(users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in u.items() if k != "data_last_modified"} for u in users]


# --- writes and credentials ------------------------------------------------------


def test_upsert_creates_then_merges_by_email_and_by_user_id(
    sandbox: SandboxServer, client: PersonyzeClient
) -> None:
    first = client.upsert({"email": "ann@example.com", "firstName": "Ann"})
    assert first == 1
    assert client.upsert({"email": "ann@example.com", "lastName": "Lee"}) == first
    assert client.upsert({"user_id": first, "customT1": "gold"}) == first
    other = client.upsert({"email": "bob@example.com", "first_name": "Bob"})
    assert other == 2

    assert without_stamp(sandbox.users()) == [
        {"user_id": 1, "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee",
         "custom_t_1": "gold"},
        {"user_id": 2, "email": "bob@example.com", "first_name": "Bob"},
    ]  # fmt: skip
    assert [(r.method, r.path, r.status) for r in sandbox.requests] == [
        ("POST", "/rest/users", 200)
    ] * 4


def test_check_key_passes_with_the_right_key(
    sandbox: SandboxServer, client: PersonyzeClient, sleeps: list[float]
) -> None:
    client.check_key()
    assert [(r.method, r.path, r.status) for r in sandbox.requests] == [
        ("GET", "/rest/account", 200)
    ]
    assert sleeps == []


@pytest.mark.parametrize("call", ["check_key", "upsert", "users_changed_since"])
def test_a_wrong_key_stops_at_once_without_naming_the_key(
    sandbox: SandboxServer, call: str
) -> None:
    wrong = "wrong-key-5d1e7a"
    sleeps: list[float] = []
    with (
        PersonyzeClient(settings(sandbox.url, api_key=wrong), sleep=sleeps.append) as c,
        pytest.raises(AuthError) as caught,
    ):
        if call == "check_key":
            c.check_key()
        elif call == "upsert":
            c.upsert({"email": "ann@example.com"})
        else:
            list(c.users_changed_since(0, ["email"]))

    message = str(caught.value)
    assert "refused the API key" in message
    assert "401" in message
    assert wrong not in message and API_KEY not in message
    assert len(sandbox.requests) == 1  # no retry
    assert sandbox.requests[0].status == 401
    assert sleeps == []
    assert sandbox.users() == []


def test_the_key_travels_in_the_authorization_header_only(
    sandbox: SandboxServer, client: PersonyzeClient
) -> None:
    uid = client.upsert({"email": "ann@example.com"})
    client.check_key()
    assert client.users_by_id([uid], ["email"]) == [{"user_id": uid, "email": "ann@example.com"}]
    list(client.users_changed_since(0, ["email"]))

    log = sandbox.requests
    assert [r.status for r in log] == [200, 200, 200, 200]  # the sandbox reads only the header
    for entry in log:
        assert API_KEY not in entry.path
        assert API_KEY not in repr(entry.body)


# --- refusals ----------------------------------------------------------------------


def test_a_400_is_a_rejection_carrying_personyzes_reason(
    sandbox: SandboxServer, client: PersonyzeClient, sleeps: list[float]
) -> None:
    with pytest.raises(RejectedError) as caught:
        client.upsert({"email": "ann@example.com", "address": {"city": "Paris"}})
    assert caught.value.reason == (
        "Column address: nested values (objects, arrays) are not accepted"
    )
    assert caught.value.status == 400
    assert len(sandbox.requests) == 1
    assert sleeps == []
    assert sandbox.users() == []


def test_merging_into_an_unknown_user_id_is_refused_with_the_reason(
    sandbox: SandboxServer, client: PersonyzeClient
) -> None:
    with pytest.raises(RejectedError) as caught:
        client.upsert({"user_id": 999, "first_name": "Ghost"})
    assert (caught.value.reason, caught.value.status) == ("Row not found", 400)


# --- retries -------------------------------------------------------------------------


def switching_off(
    sandbox: SandboxServer, sleeps: list[float], after: int = 1
) -> Callable[[float], None]:
    """A sleep that records the wait and switches the faults off after ``after`` waits."""

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= after:
            sandbox.faults = Faults()

    return sleep


@pytest.mark.parametrize("repeatable", [True, False])
@pytest.mark.parametrize(("retry_after", "waits"), [(7, 1), (2.5, 2)])
def test_429_waits_as_long_as_retry_after_says(
    sandbox: SandboxServer, repeatable: bool, retry_after: float, waits: int
) -> None:
    sleeps: list[float] = []
    sandbox.faults = Faults(rate_limit_rate=1.0, retry_after_s=retry_after)
    with PersonyzeClient(
        settings(sandbox.url), sleep=switching_off(sandbox, sleeps, after=waits)
    ) as c:
        assert c.upsert({"internal_id": "r1"}, repeatable=repeatable) == 1

    assert sleeps == [retry_after] * waits
    assert [(r.status, r.fault) for r in sandbox.requests] == (
        [(429, "rate_limit")] * waits + [(200, None)]
    )
    assert len(sandbox.users()) == 1


def test_429_without_retry_after_backs_off_exponentially(sandbox: SandboxServer) -> None:
    sleeps: list[float] = []
    sandbox.faults = Faults(rate_limit_rate=1.0, retry_after_s=None)
    with PersonyzeClient(settings(sandbox.url, max_attempts=5), sleep=sleeps.append) as c, \
            pytest.raises(RetriableError) as caught:  # fmt: skip
        c.check_key()  # /account is not affected unless include_account
        c.upsert({"email": "ann@example.com"})
    assert caught.value.unapplied is True
    assert caught.value.retry_after is None
    assert len(sleeps) == 4
    for attempt, slept in enumerate(sleeps):  # full jitter: up to a cap of 0.5 * 2**n
        assert 0 <= slept <= 0.5 * 2**attempt
    assert [r.status for r in sandbox.requests] == [200, 429, 429, 429, 429, 429]


@pytest.mark.parametrize(
    ("faults", "statuses"),
    [
        (Faults(error_rate=1.0, seed=4), {500, 503}),
        (Faults(drop_rate=1.0, seed=4), {None}),
    ],
    ids=["5xx", "dropped"],
)
def test_server_errors_are_retried_with_growing_backoff_then_given_up(
    sandbox: SandboxServer, faults: Faults, statuses: set[int | None]
) -> None:
    sleeps: list[float] = []
    sandbox.faults = faults
    with PersonyzeClient(settings(sandbox.url, max_attempts=5), sleep=sleeps.append) as c, \
            pytest.raises(RetriableError) as caught:  # fmt: skip
        c.upsert({"email": "ann@example.com"})

    assert caught.value.unapplied is False
    log = sandbox.requests
    assert len(log) == 5
    assert {r.status for r in log} <= statuses
    assert len(sleeps) == 4
    for attempt, slept in enumerate(sleeps):  # full jitter: up to a cap of 0.5 * 2**n
        assert 0 <= slept <= 0.5 * 2**attempt
    assert sandbox.users() == []


@pytest.mark.parametrize(
    ("faults", "kind"),
    [(Faults(error_rate=1.0), "error"), (Faults(drop_rate=1.0), "drop")],
    ids=["5xx", "dropped"],
)
def test_a_server_error_heals_on_retry(sandbox: SandboxServer, faults: Faults, kind: str) -> None:
    sleeps: list[float] = []
    sandbox.faults = faults
    with PersonyzeClient(settings(sandbox.url), sleep=switching_off(sandbox, sleeps)) as c:
        assert c.upsert({"email": "ann@example.com"}) == 1
    assert len(sleeps) == 1 and 0 <= sleeps[0] <= 0.5  # full jitter under the first cap
    assert [r.fault for r in sandbox.requests] == [kind, None]
    assert [u["email"] for u in sandbox.users()] == ["ann@example.com"]


@pytest.mark.parametrize(
    "faults",
    [Faults(error_rate=1.0), Faults(drop_rate=1.0), Faults(lost_answer_rate=1.0)],
    ids=["5xx", "dropped", "lost-answer"],
)
def test_a_write_that_may_have_been_applied_is_not_repeated(
    sandbox: SandboxServer, faults: Faults
) -> None:
    sleeps: list[float] = []
    sandbox.faults = faults
    with PersonyzeClient(settings(sandbox.url), sleep=sleeps.append) as c, \
            pytest.raises(RetriableError) as caught:  # fmt: skip
        c.upsert({"internal_id": "r1"}, repeatable=False)
    assert caught.value.unapplied is False
    assert len(sandbox.requests) == 1
    assert sleeps == []
    applied = faults.lost_answer_rate == 1.0
    assert [u["internal_id"] for u in sandbox.users()] == (["r1"] if applied else [])


@pytest.mark.parametrize("repeatable", [True, False])
def test_a_server_slower_than_the_timeout_is_a_retriable_error(
    sandbox: SandboxServer, repeatable: bool
) -> None:
    sleeps: list[float] = []
    sandbox.faults = Faults(latency_s=0.4)
    with PersonyzeClient(settings(sandbox.url, timeout_s=0.1, max_attempts=3),
                         sleep=sleeps.append) as c, \
            pytest.raises(RetriableError) as caught:  # fmt: skip
        c.upsert({"email": "ann@example.com"}, repeatable=repeatable)

    attempts = 3 if repeatable else 1
    host = sandbox.url.split("/")[2]
    assert f"Personyze at {host} did not answer within 0.1 s" in str(caught.value)
    assert caught.value.unapplied is False
    assert len(sleeps) == attempts - 1
    # the sandbox records a request when it ends: wait for the slow ones to finish
    wait_until(lambda: len(sandbox.requests) >= attempts, timeout=5, what="every attempt")
    time.sleep(0.1)  # not an ordering: a quiet window, one timeout long, for an extra attempt
    assert len(sandbox.requests) == attempts


# --- rate ceiling --------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "count"), [(10.0, 6), (4.0, 9)])
def test_requests_per_second_ceiling_paces_real_requests(
    sandbox: SandboxServer, rate: float, count: int
) -> None:
    fake = FakeClock()
    with PersonyzeClient(
        settings(sandbox.url, requests_per_second=rate), sleep=fake.sleep, clock=fake
    ) as c:
        for i in range(count):
            c.upsert({"email": f"user{i}@example.com"})
    assert len(sandbox.requests) == count
    assert sum(fake.sleeps) == pytest.approx((count - 1) / rate)
    assert len(fake.sleeps) == count - 1


# --- base URL -------------------------------------------------------------------------


def unchecked(url: str, allow_insecure_http: bool = False) -> PersonyzeSettings:
    """Settings that skip the config's own check, to test the client's."""
    from pydantic import SecretStr

    return PersonyzeSettings.model_construct(
        api_key=SecretStr(API_KEY), base_url=url, allow_insecure_http=allow_insecure_http,
        concurrency=2, requests_per_second=None, timeout_s=5.0, max_attempts=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    "url", ["http://example.com/rest", "http://10.0.0.7:8080/rest", "http://127.0.0.1.nip.io/rest"]
)
def test_plain_http_to_another_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PersonyzeClient(unchecked(url))
    assert "allow_insecure_http" in str(caught.value)
    assert API_KEY not in str(caught.value)
    # the config refuses it too, before any client exists
    with pytest.raises(ValueError, match="plain http"):
        settings(url)


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://example.com/rest", True),
        ("http://127.0.0.1:8080/rest", False),
        ("http://127.0.0.2/rest", False),
        ("http://localhost:8080/rest", False),
        ("http://[::1]:8080/rest", False),
        ("https://example.com/rest", False),
        ("https://app.personyze.com/rest", False),
    ],
)
def test_https_anywhere_and_http_to_loopback_are_allowed(url: str, allow: bool) -> None:
    PersonyzeClient(unchecked(url, allow)).close()
    PersonyzeClient(settings(url, allow_insecure_http=allow)).close()


# --- reads -----------------------------------------------------------------------------


def test_users_changed_since_pages_by_keyset_through_a_crowded_second() -> None:
    wall = FakeClock(1_700_000_000.0)
    with SandboxServer(API_KEY, wall=wall) as sandbox:
        store = sandbox.store
        for i in range(5):  # before the watermark
            store.upsert({"email": f"old{i}@example.com"})
        since = int(wall.advance(100))
        for i in range(250):  # all in one second
            store.upsert({"email": f"user{i}@example.com", "internal_id": f"row-{i}"})
        wall.advance(5)
        for i in range(70):
            store.upsert({"email": f"late{i}@example.com"})
        store.upsert({"email": "old1@example.com", "first_name": "Changed"})  # moves to now
        store.upsert({"email": "user7@example.com", "first_name": "Changed"})

        with PersonyzeClient(settings(sandbox.url)) as c:
            seen = list(c.users_changed_since(since, ["email", "internal_id"]))

        expected = sorted(
            (int(u["data_last_modified"]), int(u["user_id"]))
            for u in sandbox.users() if int(u["data_last_modified"]) >= since
        )  # fmt: skip
        assert len(expected) == 250 + 70 + 1
        assert [(u["data_last_modified"], u["user_id"]) for u in seen] == expected
        assert len({u["user_id"] for u in seen}) == len(seen)
        assert set(seen[0]) == {"user_id", "data_last_modified", "email", "internal_id"}
        by_id = {u["user_id"]: u for u in sandbox.users()}
        assert all(u["email"] == by_id[u["user_id"]]["email"] for u in seen)

        log = sandbox.requests
        assert len(log) == 7  # 6 x 50 + 21: a range read past 50 rows is refused
        for entry in log:
            assert entry.status == 200
            limit = re.search(r"/limit/([^/]+)", entry.path)
            assert limit is not None and limit.group(1) == str(RANGE_PAGE)  # never OFFSET,N


def test_users_changed_since_stops_after_an_exactly_full_page() -> None:
    with SandboxServer(API_KEY, wall=lambda: 1_700_000_000.0) as sandbox:
        for i in range(RANGE_PAGE):
            sandbox.store.upsert({"email": f"user{i}@example.com"})
        with PersonyzeClient(settings(sandbox.url)) as c:
            seen = list(c.users_changed_since(1_700_000_000, []))
            assert [u["user_id"] for u in seen] == list(range(1, RANGE_PAGE + 1))
            assert [(r.method, r.status) for r in sandbox.requests] == [("GET", 200)] * 2
            assert list(c.users_changed_since(1_700_000_001, [])) == []


def test_users_by_id_returns_the_requested_users(
    sandbox: SandboxServer, client: PersonyzeClient
) -> None:
    for i in range(1, 6):
        assert client.upsert({"email": f"user{i}@example.com", "firstName": f"F{i}"}) == i
    assert client.users_by_id([4, 2], ["email", "firstName"]) == [
        {"user_id": 2, "email": "user2@example.com", "first_name": "F2"},
        {"user_id": 4, "email": "user4@example.com", "first_name": "F4"},
    ]
    assert client.users_by_id([99], ["email"]) == []


def test_users_by_id_asks_for_many_ids_in_chunks(sandbox: SandboxServer) -> None:
    for i in range(1, 1201):
        sandbox.store.upsert({"email": f"user{i}@example.com"})
    with PersonyzeClient(settings(sandbox.url)) as c:
        found = c.users_by_id(list(range(1, 1201)), ["email"])
        assert c.users_by_id([], ["email"]) == []
    assert [u["user_id"] for u in found] == list(range(1, 1201))  # none silently cut off
    assert all(u["email"] == f"user{u['user_id']}@example.com" for u in found)
    log = sandbox.requests
    assert [(r.method, r.status) for r in log] == [("GET", 200)] * 6  # 200 ids a request


# --- connections ------------------------------------------------------------------


class CountingTransport(httpx.HTTPTransport):
    """A real transport that remembers how many requests it carried and its closing."""

    def __init__(self) -> None:
        super().__init__(limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self.carried = 0
        self.closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.carried += 1
        return super().handle_request(request)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_each_sending_thread_keeps_one_connection_of_its_own_while_it_lives(
    sandbox: SandboxServer,
) -> None:
    made: list[CountingTransport] = []

    def make() -> CountingTransport:
        made.append(CountingTransport())
        return made[-1]

    transport = ConnectionPerThread(make)
    client = PersonyzeClient(settings(sandbox.url), transport=transport)
    barrier = threading.Barrier(4)

    def send(thread: int) -> None:
        barrier.wait()  # all four at once: no thread can borrow another's connection
        for i in range(25):
            client.upsert({"email": f"t{thread}-{i}@example.com"})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, range(4)))
    assert len(made) == 4 and [t.carried for t in made] == [25] * 4
    assert len(sandbox.users()) == 100
    assert not any(t.closed for t in made)

    with ThreadPoolExecutor(4) as pool:  # the next run's threads: the ended ones' close
        list(pool.map(send, range(4, 8)))
    assert len(made) == 8 and all(t.closed for t in made[:4])
    assert not any(t.closed for t in made[4:])
    client.close()
    assert all(t.closed for t in made)


class ObjectForAList(BaseHTTPRequestHandler):
    """Answers every read 200 with a JSON object where Personyze answers a list."""

    def do_GET(self) -> None:
        body = b'{"result": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    "read",
    [
        lambda c: c.users_by_id([1, 2], ["email"]),
        lambda c: c.users_by_email(["a@example.com"], []),
        lambda c: list(c.users_changed_since(0, [])),
        lambda c: c.users_after(0, []),
        lambda c: c.newest_change(),
    ],
    ids=["by_id", "by_email", "changed_since", "after", "newest_change"],
)
def test_a_read_answered_with_anything_but_a_list_is_an_error_not_no_users(
    read: Callable[[PersonyzeClient], Any],
) -> None:
    with LoopbackServer(ObjectForAList) as server:
        client = PersonyzeClient(settings(f"http://127.0.0.1:{server.port}/rest"))
        with client, pytest.raises(FatalError, match="where a list of users was expected"):
            read(client)


# --- waits, stops and what -v says ------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        Faults(rate_limit_rate=1.0, retry_after_s=120, include_account=True),  # Retry-After
        Faults(error_rate=1.0, include_account=True),  # backoff (30 s here)
    ],
    ids=["retry-after", "backoff"],
)
def test_a_stop_ends_a_wait_between_attempts_at_once(
    sandbox: SandboxServer, faults: Faults
) -> None:
    sandbox.faults = faults
    stop = threading.Event()
    errors: list[BaseException] = []
    with PersonyzeClient(
        settings(sandbox.url, backoff_initial_s=30, max_attempts=5), stop=stop
    ) as client:

        def check() -> None:
            try:
                client.check_key()
            except BaseException as exc:  # noqa: BLE001 - looked at below
                errors.append(exc)

        waiting = threading.Thread(target=check)
        waiting.start()
        wait_until(lambda: sandbox.requests, timeout=10, what="the first attempt's answer")
        stop.set()
        waiting.join(5)
    assert not waiting.is_alive()
    assert [type(e).__name__ for e in errors] == ["Stopped"]
    assert len(sandbox.requests) == 1


def test_each_retry_is_a_log_line_saying_what_why_how_long_and_which_attempt(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.faults = Faults(error_rate=1.0, include_account=True, seed=1)
    waits: list[float] = []
    with (
        caplog.at_level("INFO", logger="sync.load"),
        PersonyzeClient(settings(sandbox.url, max_attempts=3), sleep=waits.append) as client,
        pytest.raises(RetriableError),
    ):
        client.check_key()
    retries = [r for r in caplog.records if r.name == "sync.load"]
    assert len(retries) == 2 == len(waits)
    for n, (record, wait) in enumerate(zip(retries, waits, strict=True), start=1):
        assert record.getMessage() == "request failed; retrying"
        assert record.request == "GET account"  # type: ignore[attr-defined]
        assert record.error.startswith("Personyze answered 50")  # type: ignore[attr-defined]
        assert (record.attempt, record.attempts) == (n, 3)  # type: ignore[attr-defined]
        assert record.wait_s == round(wait, 1)  # type: ignore[attr-defined]


def test_a_closed_port_fails_at_once_naming_the_host_and_port() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with PersonyzeClient(settings(f"http://127.0.0.1:{port}/rest")) as client:
        started = time.monotonic()
        with pytest.raises(
            RetriableError, match=f"could not connect to Personyze at 127.0.0.1:{port}"
        ):
            client.check_key(once=True)
    assert time.monotonic() - started < 5  # one attempt, no backoff
