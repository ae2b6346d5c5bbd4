"""A run that loses its lease stops at once and says so (issue 19, item 5), whatever the
kind of run: the lease's own PostgreSQL connection is terminated under a real process.

Users runs (``once``/``backfill``/the daemon) are tests/reliability/test_identity_faults.py
(``test_a_lease_whose_connection_drops_is_fenced_and_taken_over``); audience runs'
writes are fenced in tests/state/test_audience_state.py. Here, each as a real process:
``verify --repair`` (it resent unfenced before), a products run, a child of ``backfill
--processes``, and an audience run (it sent the rest of its chunk of 200 before).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, inspect, text

from sync.sandbox import Faults, SandboxServer
from tests.support import (
    API_KEY,
    PRODUCT_MAPPING,
    change_customers,
    config_doc,
    customers,
    execute,
    make_customers,
    make_products,
    psync_runs,
    script,
    terminate_lease,
    wait_until,
    with_password,
    write_config,
)

IN_FLIGHT = 4  # the configs' personyze.concurrency
ROWS = 600
BUYERS = (
    "SELECT DISTINCT c.id AS id, c.email AS email FROM customers c "
    "JOIN orders o ON o.customer_id = c.id"
)


def pg_config(tmp_path: Path, pg_url: str, sandbox: SandboxServer, **parts: Any) -> Path:
    """Source and state on PostgreSQL, 4 requests in flight; ``parts`` as config_doc's."""
    doc = config_doc(
        source_url=with_password(pg_url),
        api_url=sandbox.url,
        state_url=with_password(pg_url),
        personyze={"concurrency": IN_FLIGHT},
        **parts,
    )
    return write_config(tmp_path / "sync.yaml", doc)


def running(pg_url: str) -> set[str]:
    """The parts with a run going on, as the run history says (none before its table)."""
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("psync_runs"):
                return set()
            found = conn.execute(text("SELECT job FROM psync_runs WHERE outcome = 'running'"))
            return set(found.scalars())
    finally:
        engine.dispose()


def posts(sandbox: SandboxServer) -> int:
    return sum(1 for r in sandbox.requests if r.method in ("POST", "PUT"))


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [script(), *args, "-c", str(config)],
        env={**os.environ, "TEST_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_stopped_at_once(
    process: subprocess.Popen[str], sandbox: SandboxServer, at: int, total: int
) -> str:
    """It exits 1 saying its lease was lost, having sent little after it lost it."""
    out, err = process.communicate(timeout=60)
    said = out + err
    assert process.returncode == 1, said
    assert "lost its lease" in said or "lease was lost" in said or "lease of" in said, said
    after = posts(sandbox) - at
    print(f"writes after the lease was lost: {after} of {total}")
    assert after < total // 2, f"{after} writes after the lease was lost: {said}"
    return said


def test_a_verify_repair_that_loses_its_lease_stops_at_once(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, ROWS + 1))
    config = pg_config(tmp_path, pg_url, sandbox)
    synced = start(config, "once")
    out, err = synced.communicate(timeout=60)
    assert synced.returncode == 0, out + err
    change_customers(pg_url, customers.c.id > 0, last_name="Drifted")  # cursor kept: no run
    sandbox.faults = Faults(latency_s=0.02)  # 600 resends at 4 in flight: 3 s
    before = posts(sandbox)
    repair = start(config, "verify", "customers", "--all", "--repair")
    wait_until(lambda: posts(sandbox) - before >= 40, timeout=60, what="the first resends")
    terminate_lease(pg_url, "customers")
    at = posts(sandbox)
    said = assert_stopped_at_once(repair, sandbox, at, ROWS)
    assert at - before < ROWS, said  # it was stopped, not done


def test_a_products_run_that_loses_its_lease_stops_at_once(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_products(pg_url, range(1, ROWS + 1))
    config = pg_config(
        tmp_path,
        pg_url,
        sandbox,
        source={"table": "catalog", "key": "sku", "batch_size": 50},
        job={"name": "catalog", "object": "products", "mapping": dict(PRODUCT_MAPPING)},
    )
    sandbox.faults = Faults(latency_s=0.02)
    run = start(config, "once")
    wait_until(lambda: posts(sandbox) >= 40, timeout=60, what="the first products")
    terminate_lease(pg_url, "catalog")
    at = posts(sandbox)
    said = assert_stopped_at_once(run, sandbox, at, ROWS)
    assert "job catalog" in said and at < ROWS


def test_a_backfill_process_that_loses_its_lease_stops_and_the_others_go_on(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, ROWS + 1))
    config = pg_config(tmp_path, pg_url, sandbox, source={"batch_size": 50}, job={"shards": 3})
    sandbox.faults = Faults(latency_s=0.02)
    parent = start(config, "backfill", "customers", "--processes", "3", "--json")
    wait_until(lambda: len(running(pg_url)) == 3, timeout=60, what="3 shards running")
    wait_until(lambda: posts(sandbox) >= 30, timeout=60, what="the first rows")
    victim = "customers#1/3"
    terminate_lease(pg_url, victim)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 1, out + err
    report = json.loads(out)["jobs"]["customers"]
    assert "lease" in report["error"] and victim in report["error"], report
    assert "customers#1/3" in err or victim in report["error"]
    runs = {r["job"]: r for r in psync_runs(pg_url)}
    assert runs[victim]["outcome"] == "failed" and runs[victim]["rows_sent"] < ROWS // 3
    assert {runs[n]["outcome"] for n in ("customers#0/3", "customers#2/3")} == {"success"}
    assert len({r["holder"] for r in runs.values()}) == 3  # one process each


def test_an_audience_run_that_loses_its_lease_stops_at_once(
    tmp_path: Path, pg_url: str, sandbox: SandboxServer
) -> None:
    make_customers(pg_url, range(1, ROWS + 1))
    buyers = {
        "name": "buyers",
        "object": "audience",
        "audience": "Buyers",
        "users_job": "customers",
        "source": {"url": with_password(pg_url), "query": BUYERS, "key": "id", "detect": "diff"},
        "mapping": {"email": "email"},
    }
    config = pg_config(tmp_path, pg_url, sandbox)
    doc = yaml.safe_load(config.read_text())
    doc["jobs"].append(buyers)
    config.write_text(yaml.safe_dump(doc))
    users = start(config, "once", "customers")
    out, err = users.communicate(timeout=60)
    assert users.returncode == 0, out + err
    execute(
        pg_url,
        text("CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL)"),
        text("INSERT INTO orders SELECT i, i FROM generate_series(1, :n) AS i").bindparams(n=ROWS),
    )
    sandbox.faults = Faults(latency_s=0.05)  # 80 adds a second: a chunk of 200 takes 2.5 s

    def adds() -> int:
        return sum(1 for r in sandbox.requests if r.method == "POST" and "list_users" in r.path)

    run = start(config, "once", "buyers")
    wait_until(lambda: adds() >= 20, timeout=60, what="the first members")
    terminate_lease(pg_url, "buyers")
    at = adds()
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1, out + err
    assert "lease" in out + err, out + err
    after = adds() - at
    print(f"members added after the lease was lost: {after} of {ROWS}")
    # within a renewal of the lease (1 s): not the rest of its chunk of 200 read back at once
    assert after < 100, f"{after} adds after the lease was lost"
