"""The sandbox's audiences over real HTTP: lists whose names are not unique, members
added by a meaningless answer or refused "User not found by", read back under the
live limits, removed (our inference), faults, auth, and the ``sandbox`` command."""

from __future__ import annotations

import base64
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from sync.sandbox import Faults, SandboxServer
from sync.sandbox.audiences import LAST_INSERT_ID_START
from tests.support import API_KEY, free_port, sandbox_client, script, wait_until


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with sandbox_client(sandbox) as c:
        yield c


def users(api: SandboxServer, count: int) -> None:
    for i in range(count):
        api.store.upsert({"email": f"u{i}@x.com", "internal_id": f"c{i}"})


def plain_400(response: httpx.Response, text: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == text


def assert_bare_400(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.content == b""
    assert "content-type" not in response.headers


# --- user_lists ----------------------------------------------------------------------


def test_list_names_are_not_unique(sandbox: SandboxServer, client: httpx.Client) -> None:
    assert client.post("/user_lists", json={"name": "VIP"}).json() == 1
    assert client.post("/user_lists", json={"name": "VIP"}).json() == 2
    assert client.post("/user_lists", json={"name": "Churn risk"}).json() == 3
    everything = [
        {"id": 1, "name": "VIP"},
        {"id": 2, "name": "VIP"},
        {"id": 3, "name": "Churn risk"},
    ]
    assert client.get("/user_lists").json() == everything  # a plain GET, as Personyze's node reads
    assert sandbox.user_lists() == everything
    assert client.get("/user_lists/where/name=VIP/column/id").json() == [1, 2]
    assert client.get("/user_lists/where/name=Churn%20risk/column/id").json() == [3]
    assert client.get("/user_lists/2").json() == {"id": 2, "name": "VIP"}
    plain_400(client.post("/user_lists", json={"name": ""}), "name is required")
    plain_400(client.post("/user_lists", json={}), "name is required")
    assert len(sandbox.user_lists()) == 3


def test_lists_are_renamed_and_deleted_with_their_members(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    users(sandbox, 2)
    for name in ("A", "B"):
        client.post("/user_lists", json={"name": name})
    for list_id in (1, 2):
        client.post("/user_list_users", json={"user_list_id": list_id, "user_id": 1})
    assert client.put("/user_lists/where/name=A", json={"name": "A2"}).json() == 1
    assert client.delete("/user_lists/2").json() == 1
    assert sandbox.user_lists() == [{"id": 1, "name": "A2"}]
    assert client.get("/user_list_users/where/user_id=1").json() == [
        {"user_list_id": 1, "user_id": 1}
    ]


# --- adding members ------------------------------------------------------------------


def test_a_member_is_added_by_email_id_or_internal_id(
    any_sandbox: SandboxServer,
) -> None:
    users(any_sandbox, 3)
    with sandbox_client(any_sandbox) as c:
        list_id = c.post("/user_lists", json={"name": "VIP"}).json()
        for key, value in (("user_email", "u0@x.com"), ("user_id", 2), ("user_internal_id", "c2")):
            added = c.post("/user_list_users", json={"user_list_id": list_id, key: value})
            assert added.status_code == 200, added.text
            assert added.headers["content-type"] == "application/json"
        # user_internal_id resolves here even where internal_id finds no user
        assert any_sandbox.members(list_id) == [1, 2, 3]
        assert c.get(f"/user_list_users/where/user_list_id={list_id}").json() == [
            {"user_list_id": 1, "user_id": u} for u in (1, 2, 3)
        ]
    if not any_sandbox.store.internal_id_merges:
        with sandbox_client(any_sandbox) as c:
            assert c.get("/users/where/internal_id=c2").json() == []


def test_the_answer_is_meaningless(sandbox: SandboxServer, client: httpx.Client) -> None:
    users(sandbox, 3)
    client.post("/user_lists", json={"name": "VIP"})
    answers = [
        client.post("/user_list_users", json={"user_list_id": 1, "user_id": u}).json()
        for u in (3, 1, 3, 3, 2)
    ]
    assert all(isinstance(a, int) and a > LAST_INSERT_ID_START for a in answers)
    assert answers == sorted(answers) and len(set(answers)) == 5  # it only grows
    assert not set(answers) & {1, 2, 3}  # not the user's id, and not a row count
    # adding the same member again is harmless: one membership each
    assert sandbox.members(1) == [1, 2, 3]
    assert client.get("/user_list_users/where/user_list_id=1&user_id=3").json() == [
        {"user_list_id": 1, "user_id": 3}
    ]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"user_email": "nobody@x.com"}, "User not found by user_email"),
        ({"user_id": 99}, "User not found by user_id"),
        ({"user_id": "x"}, "User not found by user_id"),
        ({"user_internal_id": "c9"}, "User not found by user_internal_id"),
        ({"user_id": 99, "user_email": "u0@x.com"}, "User not found by user_id"),  # first key
    ],
)
def test_user_not_found_by(
    sandbox: SandboxServer, client: httpx.Client, body: dict[str, object], text: str
) -> None:
    users(sandbox, 1)
    client.post("/user_lists", json={"name": "VIP"})
    plain_400(client.post("/user_list_users", json={"user_list_id": 1, **body}), text)
    assert sandbox.members(1) == []


NO_KEY = "One of user_id, user_email, user_internal_id is required"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"user_id": 1}, "user_list_id is required"),
        ({"user_list_id": 1}, NO_KEY),
        ({"user_list_id": 1, "user_email": ""}, NO_KEY),  # an empty value is no value
        ({"user_list_id": 7, "user_id": 1}, "User list not found"),
        ({"user_list_id": "a", "user_id": 1}, "User list not found"),
    ],
)
def test_bad_member_posts(
    client: httpx.Client, sandbox: SandboxServer, body: object, text: str
) -> None:
    users(sandbox, 1)
    client.post("/user_lists", json={"name": "VIP"})
    plain_400(client.post("/user_list_users", json=body), text)
    assert sandbox.members(1) == []


# --- reading members back: the live limits -------------------------------------------


def test_members_read_back_under_the_live_limits(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    users(sandbox, 1100)
    client.post("/user_lists", json={"name": "big"})
    client.post("/user_lists", json={"name": "other"})
    for u in range(1, 1101):
        sandbox.audiences.add_member({"user_list_id": 1, "user_id": u})
    sandbox.audiences.add_member({"user_list_id": 2, "user_id": 5})
    where = "/user_list_users/where/user_list_id=1"
    assert len(client.get(where).json()) == 1000  # no limit: the 1000 window
    assert len(client.get(where + "/order_by/user_id/limit/1000").json()) == 1000
    plain_400_any(client.get(where + "/order_by/user_id/limit/990,11"), "must not exceed 1000")
    # a range read (keyset) is served 50 rows at a time, and refused bare past that
    assert_bare_400(client.get(where + "&user_id>0/order_by/user_id/limit/51"))
    assert_bare_400(client.get(where + "&user_id>0/order_by/user_id"))
    seen: list[int] = []
    while True:
        page = client.get(
            f"{where}&user_id>{seen[-1] if seen else 0}/order_by/user_id/limit/50/column/user_id"
        ).json()
        if not page:
            break
        seen.extend(page)
    assert seen == list(range(1, 1101)) == sandbox.members(1)
    assert client.get("/user_list_users/where/user_id=5/column/user_list_id").json() == [1, 2]
    assert client.get("/user_list_users/where/user_id:5,6&user_list_id=2").json() == [
        {"user_list_id": 2, "user_id": 5}
    ]


def test_a_read_of_members_without_where_must_be_ordered(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    users(sandbox, 2)
    client.post("/user_lists", json={"name": "VIP"})
    for u in (2, 1):
        client.post("/user_list_users", json={"user_list_id": 1, "user_id": u})
    assert client.get("/user_list_users").status_code == 400
    assert client.get("/user_list_users/order_by/user_id/column/user_id").json() == [1, 2]
    plain_400(client.get("/user_list_users/1"), "Row not found")  # memberships have no id


def plain_400_any(response: httpx.Response, contains: str) -> None:
    assert response.status_code == 400, response.text
    assert contains in response.text


# --- removal (our inference: DELETE by where) ------------------------------------------


def test_removal_by_where_answers_rows_affected(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    users(sandbox, 3)
    for name in ("A", "B"):
        client.post("/user_lists", json={"name": name})
    for list_id, u in ((1, 1), (1, 2), (1, 3), (2, 2)):
        sandbox.audiences.add_member({"user_list_id": list_id, "user_id": u})
    assert client.delete("/user_list_users/where/user_list_id=1&user_id=2").json() == 1
    assert client.delete("/user_list_users/where/user_list_id=1&user_id=2").json() == 0
    assert (sandbox.members(1), sandbox.members(2)) == ([1, 3], [2])
    assert client.delete("/user_list_users/where/user_list_id=1&user_id:1,3").json() == 2
    assert (sandbox.members(1), sandbox.members(2)) == ([], [2])
    # a removed member can be added again
    client.post("/user_list_users", json={"user_list_id": 1, "user_email": "u1@x.com"})
    assert sandbox.members(1) == [2]
    plain_400_any(client.delete("/user_list_users"), "needs a where condition")
    plain_400_any(client.delete("/user_list_users/1"), "needs a where condition")
    response = client.put("/user_list_users/where/user_id=2", json={"user_list_id": 2})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, DELETE"


# --- auth, faults, reset -----------------------------------------------------------------


@pytest.mark.parametrize("credentials", [None, "api:wrong"])
def test_auth_is_the_users(sandbox: SandboxServer, credentials: str | None) -> None:
    users(sandbox, 1)
    sandbox.audiences.create_list({"name": "VIP"})
    headers = {}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    with httpx.Client(base_url=sandbox.url, timeout=5, headers=headers) as c:
        for response in (
            c.get("/user_lists"),
            c.post("/user_lists", json={"name": "VIP"}),
            c.post("/user_list_users", json={"user_list_id": 1, "user_id": 1}),
            c.get("/user_list_users/where/user_list_id=1"),
        ):
            assert response.status_code == 401
            assert response.text in ("Please, log in", "Invalid API key")
    assert (len(sandbox.user_lists()), sandbox.members(1)) == (1, [])


def test_a_lost_answer_still_adds_the_member(sandbox: SandboxServer) -> None:
    users(sandbox, 4)
    sandbox.audiences.create_list({"name": "VIP"})
    sandbox.faults = Faults(lost_answer_rate=1.0, seed=5)
    outcomes: set[int | str] = set()
    with sandbox_client(sandbox) as c:
        for u in (1, 2, 3, 4, 1, 2):  # and the resends are harmless
            try:
                outcomes.add(
                    c.post("/user_list_users", json={"user_list_id": 1, "user_id": u}).status_code
                )
            except httpx.RemoteProtocolError:
                outcomes.add("dropped")
    assert outcomes == {500, "dropped"}
    assert sandbox.members(1) == [1, 2, 3, 4]
    assert {r.fault for r in sandbox.requests} == {"lost_answer"}


def test_errors_wrong_shape_and_late_apply_hit_audiences(sandbox: SandboxServer) -> None:
    users(sandbox, 2)
    sandbox.faults = Faults(error_rate=1.0)
    with sandbox_client(sandbox) as c:
        assert c.post("/user_lists", json={"name": "VIP"}).status_code in (500, 503)
        assert c.get("/user_lists").status_code in (500, 503)
    assert sandbox.user_lists() == []
    sandbox.faults = Faults()
    sandbox.audiences.create_list({"name": "VIP"})
    sandbox.faults = Faults(wrong_shape_rate=1.0)
    with sandbox_client(sandbox) as c:
        assert c.get("/user_lists").json() == {"result": "ok"}
        assert c.get("/user_list_users/where/user_list_id=1").json() == {"result": "ok"}
    sandbox.faults = Faults(late_apply_rate=1.0, late_apply_s=0.5)
    with sandbox_client(sandbox, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/user_list_users", json={"user_list_id": 1, "user_id": 2})
    assert sandbox.members(1) == []  # not yet: it lands after the client gave up
    wait_until(lambda: sandbox.late_pending() == 0 and len(sandbox.requests) == 5)
    assert sandbox.members(1) == [2]
    assert [r.fault for r in sandbox.requests] == ["error"] * 2 + ["wrong_shape"] * 2 + [
        "late_apply"
    ]


def test_writes_only_and_the_rate_limit_hit_audiences(sandbox: SandboxServer) -> None:
    users(sandbox, 1)
    sandbox.audiences.create_list({"name": "VIP"})
    sandbox.faults = Faults(drop_rate=1.0, writes_only=True)
    with sandbox_client(sandbox) as c:
        assert c.get("/user_list_users/where/user_list_id=1").json() == []
        with pytest.raises(httpx.RemoteProtocolError):
            c.post("/user_list_users", json={"user_list_id": 1, "user_id": 1})
    sandbox.faults = Faults(limit_rps=0.5, limit_burst=1)
    with sandbox_client(sandbox) as c:
        assert c.get("/user_lists").status_code == 200
        assert c.delete("/user_list_users/where/user_id=1").status_code == 429
    assert sandbox.limited() == 1


def test_reset_forgets_lists_and_members(sandbox: SandboxServer, client: httpx.Client) -> None:
    users(sandbox, 1)
    client.post("/user_lists", json={"name": "VIP"})
    first = client.post("/user_list_users", json={"user_list_id": 1, "user_id": 1}).json()
    sandbox.reset()
    assert sandbox.user_lists() == [] and sandbox.members(1) == [] and sandbox.requests == []
    sandbox.store.upsert({"email": "a@x.com"})
    assert client.post("/user_lists", json={"name": "VIP"}).json() == 1
    assert client.post("/user_list_users", json={"user_list_id": 1, "user_id": 1}).json() == first


# --- the sandbox command -------------------------------------------------------------------


def test_the_sandbox_command_serves_products_and_audiences() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [script(), "sandbox", "--port", str(port), "--api-key", API_KEY, "--error-rate", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    handle = SandboxServer(API_KEY, port=port)  # never started: its url and key only

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            return httpx.get(f"{handle.url}/account", auth=("api", API_KEY)).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30, what="the sandbox command")
        with sandbox_client(handle) as c:  # faults hit the new objects too
            assert c.post("/products", json={"internal_id": "a"}).status_code in (500, 503)
            assert c.get("/user_lists").status_code in (500, 503)
            assert c.get("/user_list_users/where/user_list_id=1").status_code in (500, 503)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
