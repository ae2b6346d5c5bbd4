"""A products job through the real pieces, on PostgreSQL and MariaDB: a 5,000-product
catalog backfilled with one request per product, a price change resent alone, a
no-change run that sends nothing, delete_when, mirror under its safety stop, rejected
products with their reasons, patch semantics beside a catalog kept elsewhere, and
verify finding drift that --repair fixes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import delete, update

from sync import admin
from sync.config import load_config
from sync.errors import TooManyDeletes
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import RequestError, SandboxServer
from sync.sandbox.rest import Resource
from sync.verify import verify
from sync.wiring import Wiring
from tests.support import (
    BASE_TIME,
    PRODUCT_MAPPING,
    Outcome,
    assert_catalog_in_sandbox,
    catalog,
    config_doc,
    execute,
    load,
    make_products,
    sandbox_client,
    status_json,
    write_config,
)

CATALOG = 5_000
LATER = BASE_TIME + timedelta(days=1)


@pytest.fixture(params=["postgres", "mariadb"])
def source(request: pytest.FixtureRequest) -> str:
    """The same test on PostgreSQL and on MariaDB."""
    return str(
        request.getfixturevalue({"postgres": "pg_url", "mariadb": "mariadb_url"}[request.param])
    )


def catalog_job(
    tmp_path: Path, source: str, sandbox: SandboxServer, name: str = "a", **job: Any
) -> Wiring:
    folder = tmp_path / name  # the same name again: the same state store
    folder.mkdir(exist_ok=True)
    doc = config_doc(
        source_url=source,
        api_url=sandbox.url,
        state_url=f"sqlite:///{folder}/state.db",
        source={"table": "catalog", "key": "sku", "batch_size": 500},
        job={
            "name": "catalog",
            "object": "products",
            "mapping": dict(PRODUCT_MAPPING),
            "delete_when": "deleted_at IS NOT NULL",
            **job,
        },
        personyze={"concurrency": 8},
    )
    return Wiring(load(write_config(folder / "sync.yaml", doc)))


def writes(sandbox: SandboxServer) -> list[Any]:
    return [r for r in sandbox.requests if r.method != "GET"]


def test_a_catalog_backfill_then_one_price_change_then_nothing_then_a_delete(
    tmp_path: Path, source: str, sandbox: SandboxServer
) -> None:
    make_products(source, range(1, CATALOG + 1))
    with catalog_job(tmp_path, source, sandbox) as app:
        job = app.config.jobs[0]
        first = run_job(app, job, RunOptions(kind="backfill"))
        assert (first.read, first.sent, first.rejected) == (CATALOG, CATALOG, 0)
        posted = [r for r in sandbox.requests if r.method == "POST"]
        assert {r.path for r in posted} == {"/rest/products"}
        assert len(posted) == CATALOG == len({r.body["internal_id"] for r in posted})
        assert writes(sandbox) == posted  # and nothing else was written
        assert_catalog_in_sandbox(source, sandbox)
        mug = next(p for p in sandbox.products() if p["internal_id"] == "sku-00042")
        assert (mug["price"], mug["is_in_stock"]) == (42.42, "no")  # 42 % 3 == 0
        [status] = admin.status(app)
        assert (status.object, status.rows_known) == ("products", CATALOG)

        # one price changes: that product alone is sent again, with the mapped columns only
        execute(
            source,
            update(catalog)
            .where(catalog.c.sku == "sku-00077")
            .values(price="19.99", updated_at=LATER),
        )
        sandbox.clear_requests()
        second = run_job(app, job, RunOptions())
        assert second.sent == 1
        [again] = writes(sandbox)
        assert again.method == "POST" and again.path == "/rest/products"
        assert again.body == {
            "internal_id": "sku-00077",
            "title": "Product 77",
            "price": 19.99,
            "is_in_stock": "yes",
            "guide_url": "https://shop.example/p/77",
            "image_big_url": "https://cdn.shop.example/p/77.jpg",
        }
        assert again.body["price"] == 19.99 and "19.99" in repr(again.body)
        assert len(sandbox.products()) == CATALOG  # patched in place: no new product

        # nothing changed: no request at all
        sandbox.clear_requests()
        third = run_job(app, job, RunOptions())
        assert third.sent == 0 and sandbox.requests == []

        # delete_when marks three products: each is deleted by its internal_id
        gone = ["sku-00005", "sku-00500", "sku-04999"]
        execute(
            source,
            update(catalog)
            .where(catalog.c.sku.in_(gone))
            .values(deleted_at=LATER, updated_at=LATER),
        )
        sandbox.clear_requests()
        fourth = run_job(app, job, RunOptions())
        assert fourth.deleted == 3 and fourth.sent == 0
        deletes = sorted(unquote(r.path) for r in writes(sandbox))
        assert deletes == [f"/rest/products/where/internal_id={k}" for k in gone]
        assert len(sandbox.products()) == CATALOG - 3
        assert_catalog_in_sandbox(source, sandbox)
        [status] = admin.status(app)
        assert status.rows_known == CATALOG - 3


def test_verify_finds_products_changed_in_personyze_and_repair_fixes_them(
    tmp_path: Path, source: str, sandbox: SandboxServer
) -> None:
    make_products(source, range(1, CATALOG + 1))
    with catalog_job(tmp_path, source, sandbox) as app:
        job = app.config.jobs[0]
        run_job(app, job, RunOptions(kind="backfill"))
        clean = verify(app, job, sample=None, everything=True, repair=False)
        assert (clean.checked, clean.in_step, clean.drift_remaining) == (CATALOG, CATALOG, False)
        reads = [r for r in sandbox.requests if r.method == "GET"]
        # in-list reads by internal_id, 200 at a time: 3 for each batch of 500 source rows
        assert len(reads) == CATALOG // 500 * 3
        assert all("/products/where/internal_id:" in r.path for r in reads)

        # someone changes a price and a stock flag in Personyze, and deletes a product
        sandbox.catalog.upsert({"internal_id": "sku-00010", "price": "1.00"})
        sandbox.catalog.upsert({"internal_id": "sku-00011", "is_in_stock": "no"})
        missing = next(p for p in sandbox.products() if p["internal_id"] == "sku-00012")
        with sandbox_client(sandbox) as c:
            assert c.delete("/products/where/internal_id=sku-00012").json() == 1
        sandbox.clear_requests()
        found = verify(app, job, sample=None, everything=True, repair=False)
        assert writes(sandbox) == []  # verify only reads
        drift = {(f.kind, f.key, tuple(d.column for d in f.columns)) for f in found.findings}
        assert drift == {
            ("different", "sku-00010", ("price",)),
            ("different", "sku-00011", ("is_in_stock",)),
            ("missing", "sku-00012", ()),
        }
        (gone,) = [f for f in found.findings if f.kind == "missing"]
        assert gone.reason == "Personyze has no product with this internal_id any more"

        repaired = verify(app, job, sample=None, everything=True, repair=True)
        assert repaired.repair is not None and repaired.repair.resent == 3
        assert not repaired.drift_remaining
        posts = sorted(r.body["internal_id"] for r in writes(sandbox))
        assert posts == ["sku-00010", "sku-00011", "sku-00012"]
        assert_catalog_in_sandbox(source, sandbox)
        back = next(p for p in sandbox.products() if p["internal_id"] == "sku-00012")
        assert back["id"] != missing["id"]  # made anew; its new id is the one now known
        assert verify(app, job, sample=50, everything=False, repair=False).drift_remaining is False


def test_mirror_stops_before_too_many_deletes_and_deletes_what_is_allowed(
    tmp_path: Path, source: str, sandbox: SandboxServer
) -> None:
    make_products(source, range(1, 201))
    with catalog_job(tmp_path, source, sandbox, sync="mirror", max_deletes_per_run=10) as app:
        job = app.config.jobs[0]
        assert run_job(app, job, RunOptions()).sent == 200
        execute(source, delete(catalog).where(catalog.c.sku <= "sku-00050"))  # 50 vanish
        sandbox.clear_requests()
        with pytest.raises(TooManyDeletes, match="would delete at least 50 Personyze products"):
            run_job(app, job, RunOptions())
        assert writes(sandbox) == [] and len(sandbox.products()) == 200  # nothing deleted
    # the deletes are meant: the same job, with a limit that allows them
    with catalog_job(tmp_path, source, sandbox, sync="mirror", max_deletes_per_run=60) as app:
        stats = run_job(app, app.config.jobs[0], RunOptions())
        assert (stats.deleted, stats.sent) == (50, 0)
        assert len(writes(sandbox)) == 50
        assert all(r.method == "DELETE" for r in writes(sandbox))
        assert_catalog_in_sandbox(source, sandbox)


def test_mirror_deletes_products_that_left_the_source(
    tmp_path: Path, source: str, sandbox: SandboxServer
) -> None:
    make_products(source, range(1, 201))
    with catalog_job(tmp_path, source, sandbox, sync="mirror", max_deletes_per_run=10) as app:
        job = app.config.jobs[0]
        run_job(app, job, RunOptions())
        execute(source, delete(catalog).where(catalog.c.sku.in_(["sku-00003", "sku-00150"])))
        sandbox.clear_requests()
        stats = run_job(app, job, RunOptions())
        assert (stats.deleted, stats.sent) == (2, 0)
        deletes = sorted(unquote(r.path) for r in writes(sandbox))
        assert deletes == [
            "/rest/products/where/internal_id=sku-00003",
            "/rest/products/where/internal_id=sku-00150",
        ]
        assert_catalog_in_sandbox(source, sandbox)


def test_rejected_products_are_kept_with_their_reasons_and_retried(
    tmp_path: Path, source: str, sandbox: SandboxServer
) -> None:
    make_products(source, range(1, 21))
    execute(source, update(catalog).where(catalog.c.sku == "sku-00004").values(price="-5.00"))
    refusing(sandbox, lambda body: float(body.get("price", 0)) < 0, "Column price: below zero")
    with catalog_job(tmp_path, source, sandbox) as app:
        job = app.config.jobs[0]
        stats = run_job(app, job, RunOptions())
        assert (stats.sent, stats.rejected) == (19, 1)
        [status] = admin.status(app)
        [rejection] = status.rejections
        assert (rejection.key, rejection.status) == ("sku-00004", 400)
        assert rejection.reason == "Column price: below zero"
        # fixed at the source: the next run sends it, and the rejection is gone
        execute(
            source,
            update(catalog)
            .where(catalog.c.sku == "sku-00004")
            .values(price="5.00", updated_at=LATER),
        )
        sandbox.clear_requests()
        assert run_job(app, job, RunOptions()).sent == 1
        assert [r.body["price"] for r in writes(sandbox)] == [5]
        [status] = admin.status(app)
        assert status.rejections == []
        assert_catalog_in_sandbox(source, sandbox)


def test_a_product_the_mapping_refuses_is_rejected_with_its_reason_and_never_sent(
    tmp_path: Path, source: str, sandbox: SandboxServer
) -> None:
    make_products(source, range(1, 4))
    mapping = {"title": "title", "url": "is_in_stock"}  # a URL where yes/no belongs
    with catalog_job(tmp_path, source, sandbox, mapping=mapping) as app:
        stats = run_job(app, app.config.jobs[0], RunOptions())
        [status] = admin.status(app)
    assert (stats.sent, stats.rejected) == (0, 3) and sandbox.requests == []
    assert [(r.key, r.status, r.reason) for r in status.rejections] == [
        (
            f"sku-0000{i}",
            None,
            f"column 'url': 'https://shop.example/p/{i}' is not in stock or out of it: "
            "expected true/false, 1/0 or yes/no",
        )
        for i in range(1, 4)
    ]


def test_a_job_that_knows_only_price_and_stock_leaves_the_rest_as_it_was(
    tmp_path: Path, source: str, sandbox: SandboxServer
) -> None:
    """Patch semantics: a catalog kept elsewhere keeps its titles, brands and images."""
    make_products(source, range(1, 6))
    for i in range(1, 6):
        sandbox.catalog.upsert(
            {"internal_id": f"sku-{i:05d}", "title": f"Kept {i}", "brand": "Acme"}
        )
    mapping = {"price": "price", "in_stock": "is_in_stock"}
    with catalog_job(tmp_path, source, sandbox, mapping=mapping) as app:
        assert run_job(app, app.config.jobs[0], RunOptions()).sent == 5
    assert {tuple(sorted(r.body)) for r in writes(sandbox)} == {
        ("internal_id", "is_in_stock", "price")
    }
    three = next(p for p in sandbox.products() if p["internal_id"] == "sku-00003")
    assert three == {
        "id": 3,
        "internal_id": "sku-00003",
        "title": "Kept 3",
        "brand": "Acme",
        "price": 3.03,
        "is_in_stock": "no",
    }
    assert len(sandbox.products()) == 5


def refusing(sandbox: SandboxServer, refuse: Any, reason: str) -> None:
    """The sandbox's products, refusing (400 with ``reason``) a POST ``refuse`` picks: no
    documented product check answers 400, so the test plays the service's validation."""
    products = sandbox.objects["products"]
    assert isinstance(products, Resource)
    post = products.post
    assert post is not None

    def checked(body: object) -> Any:
        if isinstance(body, dict) and refuse(body):
            raise RequestError(reason)
        return post(body)

    sandbox.objects["products"] = Resource(
        "products", get=products.get, post=checked, put=products.put, delete=products.delete
    )


def test_status_names_what_the_job_feeds(
    cli: Callable[..., Outcome], tmp_path: Path, sqlite_url: str, sandbox: SandboxServer
) -> None:
    make_products(sqlite_url, range(1, 6))
    with catalog_job(tmp_path, sqlite_url, sandbox) as app:
        assert run_job(app, app.config.jobs[0], RunOptions()).sent == 5
    config = str(tmp_path / "a" / "sync.yaml")
    shown = cli("status", "-c", config)
    assert shown.code == 0, shown.text
    assert "catalog (products)" in shown.out and "products known: 5" in shown.flat
    job = status_json(cli, config)
    assert (job["job"], job["object"], job["rows_known"]) == ("catalog", "products", 5)


def test_the_example_config_has_a_products_job() -> None:
    path = Path(__file__).resolve().parents[2] / "config" / "personyze-sync.example.yaml"
    env = {"PERSONYZE_API_KEY": "k", "PG_PASSWORD": "p", "MYSQL_PASSWORD": "m"}
    job = load_config(path, env).job("catalog")
    assert (job.object, job.sync, job.source.key) == ("products", "mirror", "sku")
    assert job.mapping["in_stock"] == "is_in_stock" and job.delete_when is not None
