"""The sandbox's products over real HTTP: patch mode, the unique internal_id, the
path language and the live read limits, delete and update by where, faults, auth."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from sync.sandbox import Faults, SandboxServer
from tests.support import API_KEY, sandbox_client, wait_until


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with sandbox_client(sandbox) as c:
        yield c


def fill(api: SandboxServer, count: int) -> None:
    for i in range(count):
        api.catalog.upsert({"internal_id": f"p{i}", "price": i, "is_in_stock": "yes"})


def plain_400(response: httpx.Response, contains: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert contains in response.text


def assert_bare_400(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.content == b""
    assert "content-type" not in response.headers


# --- patch mode and the unique internal_id ---------------------------------------


def test_post_inserts_in_patch_mode(sandbox: SandboxServer, client: httpx.Client) -> None:
    first = {
        "internal_id": "sku-1",
        "title": "Mug",
        "price": "19.99",
        "sale_price": "14.99",
        "is_in_stock": "yes",
        "guide_url": "https://shop.example/mug",
        "imageBigUrl": "https://shop.example/mug.jpg",  # camelCase is normalised
        "brand": "Acme",
    }
    created = client.post("/products", json=first)
    assert created.status_code == 200
    assert created.headers["content-type"] == "application/json"
    assert created.json() == 1
    assert client.post("/products", json={"internal_id": "sku-2", "title": "Cup"}).json() == 2
    # the same internal_id again: that product, updated in place, the rest kept
    patch = {"internal_id": "sku-1", "price": "17.50", "is_in_stock": "no", "title": ""}
    assert client.post("/products", json=patch).json() == 1
    assert sandbox.products() == [
        {
            "id": 1,
            "internal_id": "sku-1",
            "title": "Mug",  # the empty value was dropped: it cannot clear a stored one
            "price": "17.50",
            "sale_price": "14.99",
            "is_in_stock": "no",
            "guide_url": "https://shop.example/mug",
            "image_big_url": "https://shop.example/mug.jpg",
            "brand": "Acme",
        },
        {"id": 2, "internal_id": "sku-2", "title": "Cup"},
    ]


def test_internal_id_is_unique(sandbox: SandboxServer, client: httpx.Client) -> None:
    for n in range(5):
        assert client.post("/products", json={"internal_id": "a", "n": n}).json() == 1
    assert client.post("/products", json={"internal_id": 12, "x": 1}).json() == 2
    assert client.post("/products", json={"internal_id": "12", "y": 2}).json() == 2
    assert client.post("/products", json={"internal_id": "a", "id": 2}).json() == 1  # id ignored
    # patch mode writes what was sent: the second POST's "12" replaced the 12
    assert [(p["id"], p["internal_id"]) for p in sandbox.products()] == [(1, "a"), (2, "12")]
    assert client.get("/products/where/internal_id=a/column/n").json() == [4]
    # a PUT that would give two products one internal_id is refused; changing one's own is fine
    plain_400(client.put("/products/2", json={"internal_id": "a"}), "Duplicate entry")
    plain_400(client.put("/products/where/n!=-1|x=1", json={"internal_id": "z"}), "Duplicate")
    assert client.put("/products/2", json={"internal_id": "b"}).json() == 1
    assert client.put("/products/where/internal_id=a", json={"internal_id": "a"}).json() == 1
    assert [p["internal_id"] for p in sandbox.products()] == ["a", "b"]


def test_a_post_without_internal_id_inserts_every_time(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    assert client.post("/products", json={"title": "T"}).json() == 1
    assert client.post("/products", json={"title": "T", "internal_id": ""}).json() == 2
    assert len(sandbox.products()) == 2


@pytest.mark.parametrize("body", [[1], "x", {"a": {"b": 1}}, {"a": [1]}, {"bad name": 1}])
def test_bad_bodies_are_refused(sandbox: SandboxServer, client: httpx.Client, body: object) -> None:
    assert client.post("/products", json=body).status_code == 400
    assert client.post("/products", content=b"").status_code == 400
    assert client.post("/products", content=b"{nope").status_code == 400
    plain_400(client.post("/products/where/id=1", json={"a": 1}), "takes no path modifiers")
    assert sandbox.products() == []


# --- reading: the path language and the live limits --------------------------------


def test_reads_speak_the_path_language(client: httpx.Client, sandbox: SandboxServer) -> None:
    fill(sandbox, 10)
    sandbox.catalog.upsert({"internal_id": "a/b&c", "price": 99})
    assert client.get("/products/3").json() == {
        "id": 3,
        "internal_id": "p2",
        "price": 2,
        "is_in_stock": "yes",
    }
    assert client.get("/products/3/column/internal_id").json() == "p2"
    plain_400(client.get("/products/99"), "Row not found")
    assert client.get("/products/where/internal_id=p4/column/id").json() == [5]
    assert client.get("/products/where/internal_id:p1,p3,nope/column/id").json() == [2, 4]
    got = client.get("/products/where/internal_id!:p1,p3&price<5/limit/50/column/id").json()
    assert got == [1, 3, 5]
    encoded = quote("a/b&c", safe="")
    assert client.get(f"/products/where/internal_id={encoded}/column/price").json() == [99]
    got = client.get(
        "/products/where/price>=7/order_by_desc/price/limit/50/columns/id,internalId"
    ).json()
    assert got == [{"id": 11, "internal_id": "a/b&c"}] + [
        {"id": i + 1, "internal_id": f"p{i}"} for i in (9, 8, 7)
    ]
    # sorted as text: a/b&c, p0, p1, p2, ...
    assert client.get("/products/order_by/internal_id/limit/2,3/column/id").json() == [2, 3, 4]
    assert client.get("/products/order_by_desc/id/limit/2/column/id").json() == [11, 10]
    assert client.get("/products/where/is_in_stock=no").json() == []


def test_a_read_without_where_must_be_ordered_by_an_index(
    client: httpx.Client, sandbox: SandboxServer
) -> None:
    fill(sandbox, 3)
    plain_400(client.get("/products"), "must be ordered")
    plain_400(client.get("/products/order_by/price"), "indexed column: id, internal_id")
    assert client.get("/products/order_by/id/column/id").json() == [1, 2, 3]


@pytest.mark.parametrize(
    "target",
    [
        "/products/where/price>0/order_by/id/limit/51",
        "/products/where/id>0/limit/10,41",
        "/products/where/price>=0",  # no limit: 1000
        "/products/where/internal_id=p1|price<5/limit/51",
    ],
)
def test_range_reads_past_50_are_a_bare_400(any_sandbox: SandboxServer, target: str) -> None:
    fill(any_sandbox, 60)
    with sandbox_client(any_sandbox) as c:
        assert_bare_400(c.get(target))
        page = c.get("/products/where/id>10/order_by/id/limit/50/column/id")
        assert page.json() == list(range(11, 61))


def test_the_1000_window(client: httpx.Client, sandbox: SandboxServer) -> None:
    fill(sandbox, 1005)
    assert len(client.get("/products/order_by/id/limit/1000").json()) == 1000
    assert len(client.get("/products/where/price!=-1").json()) == 1000  # no limit: 1000
    ids = ",".join(f"p{i}" for i in range(1000))
    assert len(client.get(f"/products/where/internal_id:{ids}/limit/0,1000").json()) == 1000
    plain_400(client.get("/products/order_by/id/limit/990,11"), "must not exceed 1000")
    plain_400(client.get("/products/where/id=1/limit/1001"), "must not exceed 1000")


# --- delete and update by where ------------------------------------------------------


def test_delete_by_internal_id_answers_rows_affected(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    fill(sandbox, 4)
    assert client.delete("/products/where/internal_id=p1").json() == 1
    assert client.delete("/products/where/internal_id=p1").json() == 0
    assert client.delete("/products/4").json() == 1
    assert client.delete("/products/where/internal_id:p0,p2,p9").json() == 2
    assert sandbox.products() == []
    plain_400(client.delete("/products"), "needs an id or a where condition")
    plain_400(client.delete("/products/where/id=1/limit/1"), "takes only")
    # a deleted internal_id may come back: a new product, a new id
    assert client.post("/products", json={"internal_id": "p1"}).json() == 5


def test_put_by_where_updates_and_never_creates(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    fill(sandbox, 3)
    assert client.put("/products/where/price<2", json={"is_in_stock": "no", "x": ""}).json() == 2
    assert client.put("/products/where/internal_id=nope", json={"title": "T"}).json() == 0
    plain_400(client.put("/products/1", json={"id": 7}), "id cannot be changed")
    assert client.put("/products/1", json={"id": 1, "title": "T"}).json() == 1
    assert [(p["is_in_stock"], p.get("title")) for p in sandbox.products()] == [
        ("no", "T"),
        ("no", None),
        ("yes", None),
    ]
    plain_400(client.put("/products", json={"a": 1}), "needs an id or a where condition")


def test_methods_it_does_not_take(client: httpx.Client) -> None:
    response = client.patch("/products/1", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, PUT, DELETE"
    assert client.get("/productz/order_by/id").status_code == 404


# --- auth, the request log, faults ---------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "body"),
    [(None, "Please, log in"), ("api:wrong", "Invalid API key"), ("other:" + API_KEY, "log in")],
)
def test_auth_is_the_users(sandbox: SandboxServer, credentials: str | None, body: str) -> None:
    headers = {}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    with httpx.Client(base_url=sandbox.url, timeout=5, headers=headers) as c:
        for response in (
            c.post("/products", json={"internal_id": "a"}),
            c.get("/products/where/internal_id=a"),
            c.delete("/products/where/internal_id=a"),
        ):
            assert response.status_code == 401
            assert body in response.text
    assert sandbox.products() == []


def test_requests_are_recorded_and_reset_forgets(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    client.post("/products", json={"internal_id": "a", "price": 1})
    client.get("/products/where/internal_id=a")
    assert [(r.method, r.path, r.status, r.body) for r in sandbox.requests] == [
        ("POST", "/rest/products", 200, {"internal_id": "a", "price": 1}),
        ("GET", "/rest/products/where/internal_id=a", 200, None),
    ]
    sandbox.reset()
    assert sandbox.products() == [] and sandbox.requests == []
    assert client.post("/products", json={"internal_id": "a"}).json() == 1


def test_errors_rate_limits_and_drops_hit_products(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    sandbox.faults = Faults(error_rate=1.0)
    statuses = {
        client.post("/products", json={"internal_id": f"p{i}"}).status_code for i in range(20)
    }
    assert statuses == {500, 503}
    sandbox.faults = Faults(rate_limit_rate=1.0, retry_after_s=2)
    response = client.get("/products/order_by/id")
    assert (response.status_code, response.headers["retry-after"]) == (429, "2")
    sandbox.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.delete("/products/1")
    assert sandbox.products() == []  # none of them applied
    assert {r.fault for r in sandbox.requests} == {"error", "rate_limit", "drop"}


def test_a_lost_answer_still_applies_the_product(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(lost_answer_rate=1.0, seed=3)
    outcomes: set[int | str] = set()
    with sandbox_client(sandbox) as c:
        for i in range(6):
            # the resend after a lost answer is harmless: the same product, patched
            for body in ({"internal_id": f"p{i}"}, {"internal_id": f"p{i}", "price": i}):
                try:
                    outcomes.add(c.post("/products", json=body).status_code)
                except httpx.RemoteProtocolError:
                    outcomes.add("dropped")
    assert outcomes == {500, "dropped"}
    assert [(p["internal_id"], p["price"]) for p in sandbox.products()] == [
        (f"p{i}", i) for i in range(6)
    ]


def test_wrong_shape_and_late_apply_hit_products(sandbox: SandboxServer) -> None:
    fill(sandbox, 1)
    sandbox.faults = Faults(wrong_shape_rate=1.0)
    with sandbox_client(sandbox) as c:
        assert c.get("/products/where/internal_id=p0").json() == {"result": "ok"}
        assert c.post("/products", json={"internal_id": "p1"}).json() == 2  # writes served
    sandbox.faults = Faults(late_apply_rate=1.0, late_apply_s=0.5)
    with sandbox_client(sandbox, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
        c.delete("/products/where/internal_id=p0")
    assert len(sandbox.products()) == 2  # not yet
    wait_until(lambda: sandbox.late_pending() == 0 and len(sandbox.requests) == 3)
    assert [p["internal_id"] for p in sandbox.products()] == ["p1"]
    assert [r.fault for r in sandbox.requests] == ["wrong_shape", None, "late_apply"]


def test_the_rate_limit_and_latency_hit_products(sandbox: SandboxServer) -> None:
    sandbox.faults = Faults(limit_rps=0.5, limit_burst=1, latency_s=0.05)
    with sandbox_client(sandbox) as c:
        first = c.post("/products", json={"internal_id": "a"})
        assert first.status_code == 200
        assert first.elapsed.total_seconds() >= 0.05
        refused = c.post("/products", json={"internal_id": "b"})
        assert refused.status_code == 429 and refused.headers["retry-after"] in ("1", "2")
    assert [p["internal_id"] for p in sandbox.products()] == ["a"]
    assert sandbox.limited() == 1


def test_the_seeded_draw_is_the_same_for_products(sandbox: SandboxServer) -> None:
    def run() -> list[int]:
        sandbox.faults = Faults(error_rate=0.3, rate_limit_rate=0.2, seed=42)
        with sandbox_client(sandbox) as c:
            return [c.get("/products/order_by/id").status_code for _ in range(30)]

    first = run()
    assert first == run()
    assert set(first) >= {200, 429}
