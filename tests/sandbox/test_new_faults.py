"""The wrong-shape and late-apply faults over real HTTP, and their validation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from sync.sandbox import Faults, SandboxServer

KEY = "test-key"


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(KEY) as api:
        yield api


def connect(api: SandboxServer, timeout: float = 5) -> httpx.Client:
    return httpx.Client(base_url=api.url, auth=("api", KEY), timeout=timeout)


def wait_for(check: Callable[[], bool], seconds: float = 10) -> None:
    """Poll a condition until it holds (the test never sleeps a fixed time)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- wrong shape -----------------------------------------------------------------


def test_wrong_shape_answers_an_object_to_reads(server: SandboxServer) -> None:
    server.store.upsert({"email": "a@x.com"})
    server.faults = Faults(wrong_shape_rate=1.0, include_account=True)
    with connect(server) as c:
        for target in ("/users/order_by/user_id", "/users/where/email=a@x.com", "/users/1"):
            response = c.get(target)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"result": "ok"}, target
        # writes drawn for it are served normally, and so is the account
        assert c.post("/users", json={"email": "b@x.com"}).json() == 2
        assert c.put("/users/2", json={"n": 1}).json() == 1
        assert c.get("/account").json() == {"account_id": 1, "name": "sandbox"}
    assert [r.fault for r in server.requests] == ["wrong_shape"] * 3 + [None] * 3
    assert [u["email"] for u in server.users()] == ["a@x.com", "b@x.com"]
    server.faults = Faults()
    with connect(server) as c:
        assert c.get("/users/order_by/user_id/column/user_id").json() == [1, 2]


def test_wrong_shape_is_deterministic_with_a_seed(server: SandboxServer) -> None:
    def run() -> list[bool]:
        server.faults = Faults(wrong_shape_rate=0.5, seed=11)
        with connect(server) as c:
            return [isinstance(c.get("/users/order_by/user_id").json(), list) for _ in range(30)]

    first = run()
    assert first == run()
    assert set(first) == {True, False}


# --- late apply ------------------------------------------------------------------


def test_late_apply_lands_after_the_client_gave_up(server: SandboxServer) -> None:
    server.faults = Faults(late_apply_rate=1.0, late_apply_s=1.0)
    assert server.late_pending() == 0
    with connect(server, timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/users", json={"email": "a@x.com"})
    wait_for(lambda: server.late_pending() == 1)
    assert server.users() == []  # not yet: the client gave up before the change landed
    wait_for(lambda: server.late_pending() == 0)
    assert [u["email"] for u in server.users()] == ["a@x.com"]
    (recorded,) = server.requests
    assert (recorded.method, recorded.status, recorded.fault) == ("POST", None, "late_apply")
    assert recorded.end - recorded.start >= 1.0


def test_late_apply_covers_put_and_delete_and_spares_reads(server: SandboxServer) -> None:
    server.store.upsert({"email": "a@x.com", "n": 1})
    server.store.upsert({"email": "b@x.com"})
    server.faults = Faults(late_apply_rate=1.0, late_apply_s=0.5)
    with connect(server, timeout=0.1) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.put("/users/where/email=a@x.com", json={"n": 2})
        with pytest.raises(httpx.ReadTimeout):
            c.delete("/users/2")
        assert c.get("/users/1/column/n").json() == 1  # a read is served at once
    wait_for(lambda: server.late_pending() == 0)
    assert [(u["email"], u["n"]) for u in server.users()] == [("a@x.com", 2)]
    assert [r.fault for r in server.requests if r.method == "GET"] == [None]
    assert {r.fault for r in server.requests if r.method != "GET"} == {"late_apply"}


def test_a_late_write_overwrites_a_newer_one(server: SandboxServer) -> None:
    """The hazard the fault exists for: a resend lands first, the lost original after."""
    server.faults = Faults(late_apply_rate=1.0, late_apply_s=0.5)
    with connect(server, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/users", json={"email": "a@x.com", "n": "old"})
    server.faults = Faults()
    with connect(server) as c:
        assert c.post("/users", json={"email": "a@x.com", "n": "new"}).json() == 1
    wait_for(lambda: server.late_pending() == 0)
    assert [u["n"] for u in server.users()] == ["old"]


def test_stop_abandons_late_writes_without_waiting() -> None:
    api = SandboxServer(KEY, faults=Faults(late_apply_rate=1.0, late_apply_s=60)).start()
    try:
        with connect(api, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
            c.post("/users", json={"email": "a@x.com"})
        wait_for(lambda: api.late_pending() == 1)
    finally:
        started = time.monotonic()
        api.stop()
        stopped_in = time.monotonic() - started
    assert stopped_in < 5
    wait_for(lambda: api.late_pending() == 0)
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
    ],
)
def test_new_faults_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults(**kwargs)  # type: ignore[arg-type]


def test_new_fault_defaults() -> None:
    faults = Faults()
    assert (faults.wrong_shape_rate, faults.late_apply_rate, faults.late_apply_s) == (0, 0, 3.0)
    Faults(wrong_shape_rate=0.5, late_apply_rate=0.5)  # exactly 1 is allowed
