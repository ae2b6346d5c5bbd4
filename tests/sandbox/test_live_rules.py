"""Live-service rules over real HTTP: range reads capped at 50 rows with a bare 400,
fb_id neither merging nor found (live) or both (wiki), and the data clock."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx
import pytest

from sync.sandbox import SandboxServer
from tests.support import API_KEY, sandbox_client


def assert_bare_400(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.content == b""
    assert response.headers["content-length"] == "0"
    assert "content-type" not in response.headers


# --- range reads ---------------------------------------------------------------


def fill(api: SandboxServer, count: int) -> None:
    for i in range(count):
        api.store.upsert({"email": f"u{i}@x.com", "n": i})


def test_range_read_of_50_is_served(any_sandbox: SandboxServer) -> None:
    fill(any_sandbox, 120)
    with sandbox_client(any_sandbox) as c:
        page = c.get(
            "/users/where/data_last_modified>=0/order_by/data_last_modified,user_id/limit/50"
        )
        assert page.status_code == 200
        assert [u["user_id"] for u in page.json()] == list(range(1, 51))
        assert c.get("/users/where/user_id>50/limit/10,40/column/user_id").json() == list(
            range(61, 101)
        )


@pytest.mark.parametrize(
    "target",
    [
        "/users/where/user_id>0/order_by/user_id/limit/51",
        "/users/where/user_id>0/order_by/user_id/limit/10,41",
        "/users/where/data_last_modified>=0/order_by/data_last_modified",  # no limit: 1000
        "/users/where/n<5",
        "/users/where/n<=5/order_by_desc/user_id/limit/1000",
        "/users/where/email=u1@x.com|n>100/limit/51",  # a range in any or-group
        "/users/where/n>100|email=u1@x.com/limit/0,51",
        "/users/where/email=u1@x.com&user_id%3E0/limit/51",  # encoded operator
    ],
)
def test_range_read_past_50_is_a_bare_400(any_sandbox: SandboxServer, target: str) -> None:
    fill(any_sandbox, 60)
    with sandbox_client(any_sandbox) as c:
        assert_bare_400(c.get(target))
        # the connection stays usable after a bare answer
        assert c.get("/users/where/user_id>0/limit/50/column/user_id").json() == list(range(1, 51))
    assert [r.status for r in any_sandbox.requests] == [400, 200]


def test_or_groups_with_a_range_are_served_up_to_50(any_sandbox: SandboxServer) -> None:
    fill(any_sandbox, 120)
    with sandbox_client(any_sandbox) as c:
        got = c.get("/users/where/email=u1@x.com|n>=100/limit/50/column/user_id").json()
    assert got == [2, *range(101, 121)]


@pytest.mark.parametrize(
    "target",
    [
        "/users/where/n!=-1/limit/1000",
        "/users/where/n!=-1",
        "/users/where/n!:-1/limit/0,1000",
        "/users/order_by/user_id/limit/1000",
    ],
)
def test_reads_without_a_range_keep_the_1000_window(
    any_sandbox: SandboxServer, target: str
) -> None:
    fill(any_sandbox, 1100)
    with sandbox_client(any_sandbox) as c:
        got = c.get(target + "/column/user_id")
        assert got.status_code == 200, got.text
        assert got.json() == list(range(1, 1001))
        ids = ",".join(str(i) for i in range(1, 1001))
        assert len(c.get(f"/users/where/user_id:{ids}/limit/1000").json()) == 1000
        assert c.get("/users/where/email=u7@x.com/limit/1000/column/user_id").json() == [8]


def test_the_1000_cap_still_answers_with_text(any_sandbox: SandboxServer) -> None:
    with sandbox_client(any_sandbox) as c:
        response = c.get("/users/where/n=1/limit/1001")
    assert response.status_code == 400
    assert "must not exceed 1000" in response.text


# --- fb_id ---------------------------------------------------------------------


def test_live_fb_id_neither_merges_nor_is_found(sandbox: SandboxServer) -> None:
    with sandbox_client(sandbox) as c:
        assert c.post("/users", json={"fb_id": "fb-1", "first_name": "A"}).json() == 1
        assert c.post("/users", json={"fb_id": "fb-1", "first_name": "B"}).json() == 2
        assert c.post("/users", json={"fb_id": "fb-1", "email": "e@x.com"}).json() == 3
        assert c.post("/users", json={"fb_id": "fb-1", "email": "e@x.com", "n": 1}).json() == 3
        assert c.post("/users", json={"fb_id": "fb-1", "user_id": 1, "n": 2}).json() == 1
        assert c.get("/users/where/fb_id=fb-1").json() == []
        assert c.get("/users/where/fb_id:fb-1,fb-2").json() == []
        assert c.put("/users/where/fb_id=fb-1", json={"x": 1}).json() == 0
        assert c.delete("/users/where/fb_id=fb-1").json() == 0
        # stored and returned by reads
        assert c.get("/users/2/column/fb_id").json() == "fb-1"
        listed = c.get("/users/order_by/user_id/columns/user_id,fb_id").json()
        assert listed == [{"user_id": i, "fb_id": "fb-1"} for i in (1, 2, 3)]
    assert [u["first_name"] for u in sandbox.users() if "first_name" in u] == ["A", "B"]


def test_wiki_fb_id_and_internal_id_merge_and_are_found(wiki_sandbox: SandboxServer) -> None:
    with sandbox_client(wiki_sandbox) as c:
        assert c.post("/users", json={"fb_id": "fb-1", "first_name": "A"}).json() == 1
        assert c.post("/users", json={"fb_id": "fb-1", "last_name": "L"}).json() == 1
        assert c.post("/users", json={"internal_id": "k-1"}).json() == 2
        assert c.post("/users", json={"internal_id": "k-1", "n": 5}).json() == 2
        assert c.get("/users/where/fb_id=fb-1/column/user_id").json() == [1]
        assert c.get("/users/where/fb_id:fb-1,fb-2/column/user_id").json() == [1]
        assert c.get("/users/where/internal_id=k-1/column/n").json() == [5]
        assert c.put("/users/where/fb_id=fb-1", json={"x": 1}).json() == 1
    assert [(u["user_id"], u.get("last_name"), u.get("x")) for u in wiki_sandbox.users()] == [
        (1, "L", 1),
        (2, None, None),
    ]


# --- the data clock --------------------------------------------------------------


def test_data_clock_runs_behind_the_date_header() -> None:
    with SandboxServer(API_KEY, wall=lambda: time.time() - 10) as api, sandbox_client(api) as c:
        posted = c.post("/users", json={"email": "a@x.com"})
        date = parsedate_to_datetime(posted.headers["date"]).timestamp()
        stamp = c.get(f"/users/{posted.json()}/column/data_last_modified").json()
    # both are whole seconds, read a moment apart: 10 s behind, give or take a tick
    assert 9 <= date - stamp <= 11
    assert abs(date - time.time()) < 5  # the Date header is the real time
