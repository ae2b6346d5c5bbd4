"""bench/products.py: a products backfill beside the users figures (issue 18).

    .venv/bin/python bench/products.py                 # 20,000 products and 20,000 people
    .venv/bin/python bench/products.py --products 100000 --latency-ms 50 --concurrency 32
    .venv/bin/python bench/products.py --quick         # 1,200 of each

For each added latency (0 ms and ``--latency-ms``), on a fresh sandbox (in this
process, its request log counting requests) and a fresh SQLite state store:

1. **users backfill**: ``personyze-sync once -c CONFIG people``: a people table as many
   rows as the catalog, mapped to internal_id, email and two columns, for comparison;
2. **products backfill**: ``personyze-sync once -c CONFIG catalog``, an ``object:
   products`` job over a catalog (title, a NUMERIC price and sale price, an in-stock
   boolean, page and image URLs; ties on the cursor every 500 rows): rows/s and
   requests per row (one POST each: nothing to reconcile, nothing to adopt);
3. **products: nothing changed**: the same command again;
4. **products: 1% changed**: prices of 1% of the products changed, then again.

Seconds are the run's own, as its summary line says (process start-up left out).
Checks (exit 1 if one fails): after each products run the sandbox holds every product
once with the source's values (prices as the source's decimals, is_in_stock yes/no);
the backfill sends exactly one request per product, the unchanged run none, the change
one per changed product. Needs PostgreSQL on 127.0.0.1:5432 (user ``postgres``, trust
auth, a database ``test`` to connect to).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import run_measured  # noqa: E402
from run import fresh_database  # noqa: E402

from sync.sandbox import Faults, SandboxServer  # noqa: E402

API_KEY = "bench-products-key"
SCRIPT = str(Path(sys.executable).with_name("personyze-sync"))
CHANGED = 0.01  # share of products whose price changes before the last run
PRODUCT_MAPPING = {
    "title": "title",
    "price": "price",
    "sale_price": "sale_price",
    "in_stock": "is_in_stock",
    "url": "guide_url",
    "image": "image_big_url",
}


@dataclass
class Row:
    latency: str
    what: str
    seconds: float
    rows: int
    requests: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def per_row(self) -> float | None:
        return self.requests / self.rows if self.rows else None


def make_tables(url: str, rows: int) -> None:
    """People 1..rows and products 1..rows, every 500 sharing one updated_at."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL, "
                "first_name text NOT NULL, score numeric(12,2) NOT NULL, "
                "updated_at timestamp NOT NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO people SELECT i, 'person' || i || '@example.com', 'First' || i, "
                "i * 1.25, timestamp '2025-01-01' + (i / 500) * interval '1 minute' "
                "FROM generate_series(1, :n) i"
            ),
            {"n": rows},
        )
        conn.execute(
            text(
                "CREATE TABLE catalog (sku text PRIMARY KEY, title text NOT NULL, "
                "price numeric(10,2) NOT NULL, sale_price numeric(10,2), "
                "in_stock boolean NOT NULL, url text NOT NULL, image text NOT NULL, "
                "cost numeric(10,2), updated_at timestamp NOT NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO catalog SELECT 'sku-' || lpad(i::text, 7, '0'), 'Product ' || i, "
                "(i % 500) + (i % 100) / 100.0, CASE WHEN i % 4 = 0 THEN (i % 400) + 0.99 END, "
                "i % 3 <> 0, 'https://shop.example/p/' || i, "
                "'https://cdn.shop.example/p/' || i || '.jpg', 1.10, "
                "timestamp '2025-01-01' + (i / 500) * interval '1 minute' "
                "FROM generate_series(1, :n) i"
            ),
            {"n": rows},
        )
    engine.dispose()


def execute(url: str, sql: str, **params: Any) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql), params)
    engine.dispose()


def expected(url: str) -> dict[str, dict[str, Any]]:
    """What Personyze must hold for each product, computed without the mapper."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(text("SELECT * FROM catalog")).mappings())
    engine.dispose()

    def number(value: Decimal) -> int | float:
        return int(value) if value == value.to_integral_value() else float(value)

    out = {}
    for r in rows:
        want = {
            "internal_id": r["sku"],
            "title": r["title"],
            "price": number(r["price"]),
            "is_in_stock": "yes" if r["in_stock"] else "no",
            "guide_url": r["url"],
            "image_big_url": r["image"],
        }
        if r["sale_price"] is not None:
            want["sale_price"] = number(r["sale_price"])
        out[r["sku"]] = want
    return out


def catalog_matches(url: str, sandbox: SandboxServer) -> str | None:
    """None when the sandbox holds every product once with its source values; else why."""
    held = sandbox.products()
    by_id = {p["internal_id"]: p for p in held}
    if len(by_id) != len(held):
        return f"{len(held) - len(by_id)} products held twice"
    want = expected(url)
    if set(by_id) != set(want):
        return f"{len(set(want) - set(by_id))} missing, {len(set(by_id) - set(want))} extra"
    wrong = [k for k, w in want.items() if {c: by_id[k].get(c) for c in w} != w]
    if wrong or any("cost" in p for p in held):
        return f"{len(wrong)} products hold other values, e.g. {wrong[:3]}"
    return None


def write_config(folder: Path, url: str, api: str, concurrency: int) -> Path:
    source = {"url": url, "cursor": "updated_at", "batch_size": 1000}
    doc = {
        "personyze": {
            "api_key": "${BENCH_API_KEY}",
            "base_url": api,
            "concurrency": concurrency,
            "requests_per_second": None,
            "timeout_s": 10,
        },
        "state": {"url": f"sqlite:///{folder}/state.db"},
        "jobs": [
            {
                "name": "people",
                "source": {**source, "table": "people", "key": "id"},
                "mapping": {
                    "id": "internal_id",
                    "email": "email",
                    "first_name": "first_name",
                    "score": "custom_f_1",
                },
            },
            {
                "name": "catalog",
                "object": "products",
                "source": {**source, "table": "catalog", "key": "sku"},
                "mapping": PRODUCT_MAPPING,
            },
        ],
    }
    path = folder / "sync.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def once(config: Path, job: str) -> float:
    """Run the job once; the seconds its summary says the run took."""
    usage = run_measured(
        [SCRIPT, "once", "-c", str(config), job], env={**os.environ, "BENCH_API_KEY": API_KEY}
    )
    found = re.search(r"\((\d+(?:\.\d+)?)s\)\s*$", usage.stdout)
    if usage.returncode != 0 or found is None:
        raise SystemExit(f"personyze-sync once {job} failed:\n{usage.stdout}{usage.stderr}")
    return float(found.group(1))


def one_latency(
    url: str, latency_ms: int, rows: int, concurrency: int
) -> tuple[list[Row], list[str]]:
    label, out, failed = f"{latency_ms} ms", [], []
    with (
        SandboxServer(API_KEY, faults=Faults(latency_s=latency_ms / 1000)) as sandbox,
        tempfile.TemporaryDirectory() as tmp,
    ):
        config = write_config(Path(tmp), url, sandbox.url, concurrency)
        seconds = once(config, "people")
        out.append(Row(label, "users backfill", seconds, rows, len(sandbox.requests)))

        def products_run(what: str, done: int, want_requests: int) -> None:
            sandbox.clear_requests()
            seconds = once(config, "catalog")
            log = sandbox.requests
            out.append(Row(label, what, seconds, done, len(log)))
            posts = [r for r in log if r.method == "POST" and r.path == "/rest/products"]
            if len(log) != want_requests or len(posts) != want_requests:
                failed.append(f"{label} {what}: {len(log)} requests, {want_requests} expected")
            if (problem := catalog_matches(url, sandbox)) is not None:
                failed.append(f"{label} {what}: {problem}")

        products_run("products backfill", rows, rows)
        products_run("products: nothing changed", 0, 0)
        step = round(1 / CHANGED)
        changed = len(range(step, rows + 1, step))
        execute(
            url,
            "UPDATE catalog SET price = price + 1, updated_at = updated_at + interval '1 day' "
            "WHERE substr(sku, 5)::int % :step = 0",
            step=step,
        )
        products_run("products: 1% changed", changed, changed)
    return out, failed


def print_table(rows: list[Row]) -> None:
    print(
        f"{'latency':<8} {'run':<28} {'seconds':>8} {'rows':>8} {'rows/s':>9} {'requests/row':>13}"
    )
    for r in rows:
        per = f"{r.per_row:.3f}" if r.per_row is not None else "-"
        print(
            f"{r.latency:<8} {r.what:<28} {r.seconds:>8.2f} {r.rows:>8,} {r.rate:>9,.0f} {per:>13}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="1,200 products and people")
    args = parser.parse_args(argv)
    if args.quick:
        args.products = 1200
    table: list[Row] = []
    failed: list[str] = []
    with fresh_database() as url:
        make_tables(url, args.products)
        for latency in dict.fromkeys((0, args.latency_ms)):
            found, problems = one_latency(url, latency, args.products, args.concurrency)
            table += found
            failed += problems
    print_table(table)
    for problem in failed:
        print(f"FAIL {problem}")
    print("PASS every check" if not failed else f"FAIL {len(failed)} check(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
