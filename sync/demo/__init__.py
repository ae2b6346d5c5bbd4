"""``personyze-sync demo``: the whole product on one machine, with nothing to set up.

It makes a SQLite shop database of sample customers and products, starts the
sandbox on a free loopback port, backfills, changes a few customers (one changes
their email), runs incrementally, keeps an audience of the VIP customers, sends the
catalog, and shows what Personyze now holds. It runs the same code as a real
sync: the config in ``demo.yaml`` goes through the same loader.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    create_engine,
    func,
    select,
    update,
)
from sqlalchemy import Table as SqlTable

from sync import admin
from sync.config.load import load_config
from sync.model import Progress, RunOptions
from sync.run import run_job
from sync.sandbox import SandboxServer
from sync.wiring import Wiring

CONFIG = Path(__file__).with_name("demo.yaml")
API_KEY = "demo-key"
FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Radia",
    "Tim",
    "Margaret",
    "Linus",
    "Guido",
    "Katherine",
    "Dennis",
    "Hedy",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Perlman",
    "Berners-Lee",
    "Hamilton",
    "Torvalds",
    "van Rossum",
    "Johnson",
    "Ritchie",
]
SHOWN = ("user_id", "internal_id", "email", "full_name", "current_city", "custom_i_1")
CITIES = ["London", " Paris", "Berlin ", "Lisbon", "Oslo", "Vienna", "Prague", "Dublin"]

metadata = MetaData()
customers = SqlTable(
    "customers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(200)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("city", String(100)),
    Column("lifetime_value", Numeric(10, 2)),
    Column("vip", Boolean),
    Column("signed_up", Date),
    Column("password_hash", String(100)),  # never mapped, so never sent
    Column("updated_at", DateTime, nullable=False, index=True),
)


products = SqlTable(
    "products",
    metadata,
    Column("sku", String(20), primary_key=True),
    Column("title", String(200)),
    Column("price", Numeric(10, 2)),
    Column("in_stock", Boolean),
    Column("page", String(200)),
    Column("updated_at", DateTime, nullable=False, index=True),
)
GOODS = ["mug", "notebook", "pen", "tote bag", "sticker", "hoodie", "cap", "poster"]


def make_catalog(url: str, seed: int = 7) -> None:
    """A small catalog: prices with cents (sent exactly), stock as a boolean (yes/no)."""
    rng = random.Random(seed)
    engine = create_engine(url)
    metadata.create_all(engine)
    base = datetime(2024, 1, 1, 9, 0, 0)  # noqa: DTZ001 - the table holds naive UTC times
    values = [
        {
            "sku": f"SKU-{i:03}",
            "title": f"{rng.choice(['Blue', 'Red', 'Green'])} {rng.choice(GOODS)}",
            "price": Decimal(rng.randint(199, 9999)) / 100,
            "in_stock": rng.random() < 0.8,
            "page": f"https://shop.example.com/p/{i}",
            "updated_at": base + timedelta(minutes=i),
        }
        for i in range(1, 41)
    ]
    with engine.begin() as conn:
        conn.execute(products.insert(), values)
    engine.dispose()


def make_shop(url: str, rows: int, seed: int = 7) -> None:
    """Sample customers; a third share one updated_at (ties), one has a bad email."""
    rng = random.Random(seed)
    engine = create_engine(url)
    metadata.create_all(engine)
    base = datetime(2024, 1, 1, 9, 0, 0)  # noqa: DTZ001 - the table holds naive UTC times
    values = []
    for i in range(1, rows + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        email = f"{first}.{last.replace(' ', '')}{i}@example.com"
        if i % 7 == 0:
            email = f"  {email.upper()} "  # cleaned by the default email normalisation
        values.append(
            {
                "id": i,
                "email": email if i != 13 else "not-an-email",
                "first_name": first,
                "last_name": last,
                "city": rng.choice(CITIES),
                "lifetime_value": Decimal(rng.randint(0, 500_00)) / 100,
                "vip": rng.random() < 0.1,
                "signed_up": date(2020, 1, 1) + timedelta(days=rng.randint(0, 1500)),
                "password_hash": f"$2b$12${rng.getrandbits(64):x}",
                "updated_at": base if i % 3 == 0 else base + timedelta(minutes=i),
            }
        )
    with engine.begin() as conn:
        conn.execute(customers.insert(), values)
    engine.dispose()


def change_shop(url: str, now: datetime) -> list[int]:
    """A few changes, as a shop makes them: edits, an email change, a new customer."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            update(customers)
            .where(customers.c.id == 1)
            .values(city="Amsterdam", vip=True, updated_at=now)
        )
        conn.execute(
            update(customers)
            .where(customers.c.id == 2)
            .values(email="new.address@example.com", updated_at=now)
        )
        conn.execute(
            update(customers)
            .where(customers.c.id == 13)
            .values(email="fixed@example.com", updated_at=now)
        )
        new_id = (conn.execute(select(func.max(customers.c.id))).scalar() or 0) + 1
        conn.execute(
            customers.insert().values(
                id=new_id,
                email="newcomer@example.com",
                first_name="Barbara",
                last_name="Liskov",
                city="Boston",
                lifetime_value=Decimal("12.50"),
                vip=False,
                signed_up=now.date(),
                password_hash="x",
                updated_at=now,
            )
        )
    engine.dispose()
    return [1, 2, 13, new_id]


def run_demo(
    console: Console, *, rows: int = 1000, progress: Callable[[int], Progress] | None = None
) -> None:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="personyze-demo-") as tmp,
        SandboxServer(API_KEY) as sandbox,
    ):
        shop = f"sqlite:///{tmp}/shop.db"
        make_shop(shop, rows)
        make_catalog(shop)
        config = load_config(
            CONFIG, {"DEMO_DIR": tmp, "DEMO_API_URL": sandbox.url, "DEMO_API_KEY": API_KEY}
        )
        job = config.jobs[0]
        console.print(
            f"[bold]1. backfill[/bold] {rows} customers from {shop} "
            f"into the sandbox at {sandbox.url}"
        )
        with Wiring(config) as app:
            first = run_job(app, job, RunOptions(kind="backfill"), progress)
            console.print(
                f"   sent {first.sent}, rejected {first.rejected} "
                f"(see `status`: a customer's email is invalid)",
                markup=False,
            )
            console.print(
                "[bold]2. the shop changes[/bold] 3 customers (one changes email, "
                "one fixes a bad email) and gains 1"
            )
            changed = change_shop(shop, datetime.now(UTC).replace(tzinfo=None))
            sandbox.clear_requests()
            second = run_job(app, job, RunOptions(kind="once"))
            console.print(
                f"[bold]3. incremental run[/bold] read {second.read}, sent "
                f"{second.sent}, unchanged {second.unchanged}, "
                f"requests {len(sandbox.requests)}"
            )
            status = admin.status(app)[0]
            vip = run_job(app, config.job("vip"), RunOptions(kind="once"))
            console.print(
                f"[bold]4. an audience[/bold] 'VIP customers': {vip.sent} members added "
                f"(each confirmed by reading the list back), {vip.waiting} waiting"
            )
            catalog = run_job(app, config.job("catalog"), RunOptions(kind="once"))
            first_product = min(sandbox.products(), key=lambda p: str(p.get("internal_id")))
            console.print(
                f"[bold]5. a product catalog[/bold] {catalog.sent} products sent, one request "
                f"each (e.g. {escape(str(first_product.get('internal_id')))}: price "
                f"{escape(str(first_product.get('price')))}, in stock "
                f"{escape(str(first_product.get('is_in_stock')))})"
            )
        users = sandbox.users()
        console.print("[bold]6. what Personyze now holds for the changed customers[/bold]")
        for user in users:
            if int(user.get("internal_id", 0)) in changed:
                shown = ", ".join(f"{c}={user[c]}" for c in SHOWN if c in user)
                console.print(f"   {shown}", markup=False, soft_wrap=True)
        leaked = any("password_hash" in u for u in users)
        console.print(
            f"[bold]7. summary[/bold] {len(users)} Personyze users for {rows + 1} customers, "
            f"{status.rejected} rejected row(s) left, {len(status.collisions)} identity "
            f"collision(s), password hashes sent: {'YES' if leaked else 'none'}; "
            f"{time.monotonic() - started:.1f}s"
        )
