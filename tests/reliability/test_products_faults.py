"""The fault matrix for a products job: a 3,000-product PostgreSQL catalog (ties on the
cursor every 10 rows) backfilled by the real binary under API faults, SIGKILL at 10
random moments, and answers lost on the way back while products change between runs.

A product POST patches by internal_id (a UNIQUE index), so a resend after a lost answer
is harmless and nothing is left unresolved. While the sync runs, a watcher checks that
the checkpoint never passes a product Personyze does not hold; at the end every source
product is there once, with its latest values, and nothing else is.
"""

from __future__ import annotations

import random
import signal
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from sync.sandbox import Faults, SandboxServer
from tests.reliability.harness import (
    WINDOW,
    Polling,
    finish,
    report,
    run_to_end,
    start,
    wait_for_posts,
)
from tests.support import (
    API_KEY,
    BASE_TIME,
    PRODUCT_MAPPING,
    assert_catalog_in_sandbox,
    catalog,
    catalog_rows,
    config_doc,
    execute,
    make_products,
    write_config,
)

PRODUCTS = 3_000
BATCH = 200
JOB = "catalog"


@pytest.fixture
def source(pg_url: str) -> str:
    make_products(pg_url, range(1, PRODUCTS + 1))
    return pg_url


def products_config(tmp: Path, source: str, sandbox: SandboxServer) -> Path:
    doc = config_doc(
        source_url=source,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp}/state.db",
        source={"table": "catalog", "key": "sku", "batch_size": BATCH},
        job={"name": JOB, "object": "products", "mapping": dict(PRODUCT_MAPPING)},
        personyze={
            "concurrency": 16,
            "max_attempts": 20,
            "backoff_initial_s": 0.002,
            "backoff_max_s": 0.05,
            "timeout_s": 2,
        },
    )
    return write_config(tmp / "sync.yaml", doc)


@dataclass
class Watcher(Polling):
    """Reads the checkpoint while the sync runs: every product at or before it, in the
    source's (updated_at, sku) order, must already be in the sandbox."""

    state_file: Path
    sandbox: SandboxServer
    order: list[tuple[datetime, str]]
    seen: set[tuple[str, str]] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)

    def _check(self) -> None:
        checkpoint = self._checkpoint()
        if checkpoint is None:
            return
        held = {p["internal_id"] for p in self.sandbox.products()}  # after the checkpoint
        passed = [k for c, k in self.order if (c, k) <= checkpoint]
        missing = [k for k in passed if k not in held]
        self.seen.add((checkpoint[0].isoformat(), checkpoint[1]))
        if missing:
            self.violations.append(
                f"checkpoint {checkpoint} is past {len(missing)} product(s) Personyze does "
                f"not hold, e.g. {missing[:5]}"
            )

    def _checkpoint(self) -> tuple[datetime, str] | None:
        if not self.state_file.exists():
            return None
        try:
            with sqlite3.connect(f"file:{self.state_file}?mode=ro", uri=True, timeout=5) as db:
                row = db.execute(
                    "SELECT cursor_value, key_value FROM psync_checkpoints WHERE job = ?", (JOB,)
                ).fetchone()
        except sqlite3.OperationalError:
            return None  # tables not made yet
        return None if row is None else (datetime.fromisoformat(row[0]), str(row[1]))


def cursor_order(url: str) -> list[tuple[datetime, str]]:
    return sorted((r["updated_at"], r["sku"]) for r in catalog_rows(url).values())


def applied_posts(sandbox: SandboxServer) -> Counter[str]:
    """POSTs the sandbox applied (answered; or applied and its answer lost: the fault,
    answered 500 or cut, or a client killed before it was answered), by product."""
    return Counter(
        r.body["internal_id"]
        for r in sandbox.requests
        if r.method == "POST"
        and r.body is not None  # a body cut short by a kill was not read, nor applied
        and (r.fault == "lost_answer" or (r.fault is None and r.status in (200, None)))
    )


def history(state_file: Path) -> list[str]:
    with sqlite3.connect(state_file) as db:
        query = "SELECT outcome FROM psync_runs WHERE job = ? ORDER BY id"
        return [o for (o,) in db.execute(query, (JOB,))]


def test_api_errors_rate_limits_drops_and_lost_answers(tmp_path: Path, source: str) -> None:
    faults = Faults(
        error_rate=0.20,
        rate_limit_rate=0.10,
        retry_after_s=0.005,
        latency_s=0.002,
        drop_rate=0.02,
        lost_answer_rate=0.05,
        seed=11,
    )
    with SandboxServer(API_KEY, faults=faults) as sandbox:
        config = products_config(tmp_path, source, sandbox)
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            output = run_to_end(config, job=JOB)
        assert "unresolved" not in output  # a lost answer is simply resent
        assert_catalog_in_sandbox(source, sandbox)
        faulted = sum(1 for r in sandbox.requests if r.method == "POST" and r.fault)
        applied = applied_posts(sandbox)
        faults_seen = Counter(r.fault for r in sandbox.requests if r.fault)
    assert watcher.violations == [] and len(watcher.seen) > 1
    assert len(applied) == PRODUCTS
    resent = sum(applied.values()) - PRODUCTS
    assert 0 < resent <= faulted  # resent only where a fault may have lost the answer
    assert faults_seen["error"] > PRODUCTS // 8 and faults_seen["lost_answer"] > PRODUCTS // 40
    assert history(tmp_path / "state.db") == ["success"]
    report("products-api-faults", dict(faults_seen), resent=resent, faulted_posts=faulted)


def test_sigkill_at_10_random_moments_of_one_backfill(tmp_path: Path, source: str) -> None:
    # Each process is killed after 1-250 more requests: 10 kills cover at most
    # 10 * (250 + 16 in flight) < PRODUCTS products, so none finds the backfill done.
    rng = random.Random(20)
    with SandboxServer(API_KEY, faults=Faults(latency_s=0.001)) as sandbox:
        config = products_config(tmp_path, source, sandbox)
        kills = 0
        with Watcher(tmp_path / "state.db", sandbox, cursor_order(source)) as watcher:
            for _ in range(10):
                process = start(config, job=JOB)
                wait_for_posts(sandbox, len(sandbox.requests) + rng.randint(1, 250), process)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                finish(process)
            run_to_end(config, job=JOB)
        assert_catalog_in_sandbox(source, sandbox)
        applied = applied_posts(sandbox)
    assert watcher.violations == [] and kills == 10
    assert len(applied) == PRODUCTS
    extra = sum(applied.values()) - PRODUCTS
    assert extra <= kills * WINDOW, "resent more than the unacknowledged tails"
    assert history(tmp_path / "state.db") == ["died"] * kills + ["success"]
    report("products-sigkill", {"kills": kills}, resent=extra)


def test_lost_answers_while_products_change_between_runs(tmp_path: Path, source: str) -> None:
    """A third of the answers lost (each POST applied, its answer dropped), two runs with
    150 price and stock changes between them: the latest values everywhere."""
    faults = Faults(lost_answer_rate=0.33, latency_s=0.001, seed=7)
    with SandboxServer(API_KEY, faults=faults) as sandbox:
        config = products_config(tmp_path, source, sandbox)
        first = run_to_end(config, job=JOB)
        changed = [f"sku-{i:05d}" for i in range(7, PRODUCTS, 20)]
        execute(
            source,
            update(catalog)
            .where(catalog.c.sku.in_(changed))
            .values(
                price="1.25",
                in_stock=True,
                updated_at=BASE_TIME + timedelta(days=1),
            ),
        )
        sandbox.clear_requests()
        second = run_to_end(config, "once")
        assert_catalog_in_sandbox(source, sandbox)
        applied = applied_posts(sandbox)
        lost = sum(1 for r in sandbox.requests if r.method == "POST" and r.fault == "lost_answer")
    assert "unresolved" not in first + second
    assert sorted(applied) == sorted(changed)  # the second run sent the changed ones only
    assert lost > len(changed) // 5 and sum(applied.values()) == len(changed) + lost
    held = catalog_rows(source)
    assert all(held[k]["price"] == 1.25 for k in changed)
    assert history(tmp_path / "state.db") == ["success", "success"]
    report("products-lost-answers", {"changed": len(changed), "lost": lost})
