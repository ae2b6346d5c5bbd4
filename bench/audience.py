"""bench/audience.py: an audience sync beside the users figures (issue 18).

    .venv/bin/python bench/audience.py                 # 10,000 members of 20,000 people
    .venv/bin/python bench/audience.py --members 50000 --latency-ms 50 --concurrency 32
    .venv/bin/python bench/audience.py --quick         # 1,000 members of 1,500 people

For each added latency (0 ms and ``--latency-ms``), on a fresh sandbox (in this
process, its request log counting requests) and a fresh SQLite state store:

1. **users backfill**: ``personyze-sync once -c CONFIG people``, the people table (the
   users job the audience names): rows/s and requests per row, for comparison;
2. **audience: first sync**: ``personyze-sync once -c CONFIG buyers``, an audience job
   (``sync: mirror``) over ``SELECT DISTINCT p.id, p.email FROM people p JOIN orders o``:
   every member is added and read back. Members/s, and requests per member (the POST
   of each, the read-backs of 200 at a time, the list's lookup and creation);
   seconds are the run's own, as its summary line says (process start-up left out);
3. **audience: nothing changed**: the same command again: no write, one read (the list);
4. **audience: 5% leave, 3% join**: orders deleted and added, then the command again:
   requests per changed member (one write each, and the read-backs).

Checks (exit 1 if one fails): after each audience run the list holds exactly the
query's people; the unchanged run writes nothing; the change writes exactly one
request per member that left or joined (a write resent after a timeout counts once:
its retries are in the requests). Needs PostgreSQL on 127.0.0.1:5432 (user
``postgres``, trust auth, a database ``test`` to connect to).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import run_measured  # noqa: E402
from run import fresh_database  # noqa: E402

from sync.sandbox import Faults, SandboxServer  # noqa: E402

API_KEY = "bench-audience-key"
AUDIENCE = "Buyers"
QUERY = "SELECT DISTINCT p.id, p.email FROM people p JOIN orders o ON o.customer_id = p.id"
SCRIPT = str(Path(sys.executable).with_name("personyze-sync"))


@dataclass
class Row:
    latency: str
    what: str
    seconds: float
    items: int  # rows or members the run did
    requests: int
    writes: int

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def per_item(self) -> float | None:
        return self.requests / self.items if self.items else None


def make_tables(url: str, people: int, members: int) -> None:
    """People 1..people; one order each for people 1..members (two for every tenth)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL, "
                "updated_at timestamp NOT NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO people SELECT i, 'person' || i || '@example.com', "
                "timestamp '2025-01-01' + (i / 500) * interval '1 minute' "
                "FROM generate_series(1, :n) i"
            ),
            {"n": people},
        )
        conn.execute(text("CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL)"))
        conn.execute(text("CREATE INDEX orders_customer ON orders (customer_id)"))
        conn.execute(
            text(
                "INSERT INTO orders (customer_id) SELECT i FROM generate_series(1, :m) i "
                "UNION ALL SELECT i FROM generate_series(10, :m, 10) i"
            ),
            {"m": members},
        )
    engine.dispose()


def execute(url: str, sql: str, **params: int) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql), params)
    engine.dispose()


def query_ids(url: str) -> set[int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = {int(r[0]) for r in conn.execute(text(QUERY))}
    engine.dispose()
    return found


def write_config(folder: Path, url: str, api: str, concurrency: int) -> Path:
    source = {"url": url, "key": "id", "batch_size": 1000}
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
                "source": {**source, "table": "people", "cursor": "updated_at"},
                "mapping": {"id": "internal_id", "email": "email"},
            },
            {
                "name": "buyers",
                "object": "audience",
                "audience": AUDIENCE,
                "users_job": "people",
                "sync": "mirror",
                "source": {**source, "query": QUERY, "detect": "diff"},
                "mapping": {"email": "email"},
            },
        ],
    }
    path = folder / "sync.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def once(config: Path, job: str) -> float:
    """Run the job once; the seconds its summary says the run took (process start-up,
    a few seconds on a loaded machine, is left out: it is not the sync's pace)."""
    usage = run_measured(
        [SCRIPT, "once", "-c", str(config), job], env={**os.environ, "BENCH_API_KEY": API_KEY}
    )
    found = re.search(r"\((\d+(?:\.\d+)?)s\)\s*$", usage.stdout)
    if usage.returncode != 0 or found is None:
        raise SystemExit(f"personyze-sync once {job} failed:\n{usage.stdout}{usage.stderr}")
    return float(found.group(1))


def counted(sandbox: SandboxServer) -> tuple[int, int]:
    """(requests, distinct writes to memberships) since the log was last cleared: a write
    resent after a timeout on a loaded machine is one write (its retries are requests)."""
    log = sandbox.requests
    writes = Counter(
        (r.method, r.path, json.dumps(r.body, sort_keys=True))
        for r in log
        if r.path.startswith("/rest/user_list_users") and r.method != "GET"
    )
    return len(log), len(writes)


def members_match(url: str, sandbox: SandboxServer) -> bool:
    ids = {int(u["internal_id"]): int(u["user_id"]) for u in sandbox.users()}
    lists = [int(r["id"]) for r in sandbox.user_lists() if r["name"] == AUDIENCE]
    if len(lists) != 1:
        return False
    return set(sandbox.members(lists[0])) == {ids[i] for i in query_ids(url)}


def one_latency(
    url: str, latency_ms: int, people: int, members: int, concurrency: int
) -> tuple[list[Row], list[str]]:
    label, rows, failed = f"{latency_ms} ms", [], []
    execute(url, "TRUNCATE orders")
    execute(
        url,
        "INSERT INTO orders (customer_id) SELECT i FROM generate_series(1, :m) i "
        "UNION ALL SELECT i FROM generate_series(10, :m, 10) i",
        m=members,
    )
    faults = Faults(latency_s=latency_ms / 1000)
    with SandboxServer(API_KEY, faults=faults) as sandbox, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), url, sandbox.url, concurrency)
        seconds = once(config, "people")
        requests, _ = counted(sandbox)
        rows.append(Row(label, "users backfill", seconds, people, requests, requests))
        sandbox.clear_requests()
        seconds = once(config, "buyers")
        requests, writes = counted(sandbox)
        rows.append(Row(label, "audience: first sync", seconds, members, requests, writes))
        if not members_match(url, sandbox) or writes != members:
            failed.append(f"{label} first sync: {writes} writes for {members} members")
        sandbox.clear_requests()
        seconds = once(config, "buyers")
        requests, writes = counted(sandbox)
        rows.append(Row(label, "audience: nothing changed", seconds, 0, requests, writes))
        if writes or not members_match(url, sandbox):
            failed.append(f"{label} nothing changed: {writes} writes")
        leave, join = members // 20, members * 3 // 100
        execute(url, "DELETE FROM orders WHERE customer_id <= :n", n=leave)
        execute(
            url,
            "INSERT INTO orders (customer_id) "
            "SELECT i FROM generate_series(CAST(:a AS int), CAST(:b AS int)) i",
            a=members + 1,
            b=members + join,
        )
        sandbox.clear_requests()
        seconds = once(config, "buyers")
        requests, writes = counted(sandbox)
        rows.append(
            Row(label, "audience: 5% leave, 3% join", seconds, leave + join, requests, writes)
        )
        if writes != leave + join or not members_match(url, sandbox):
            failed.append(f"{label} change: {writes} writes for {leave + join} changes")
    return rows, failed


def print_table(rows: list[Row]) -> None:
    print(
        f"{'latency':<8} {'run':<30} {'seconds':>8} {'rows/members':>13} {'per s':>9} "
        f"{'requests':>9} {'req/each':>9} {'writes':>7}"
    )
    for r in rows:
        per = f"{r.per_item:.3f}" if r.per_item is not None else "-"
        print(
            f"{r.latency:<8} {r.what:<30} {r.seconds:>8.2f} {r.items:>13,} {r.rate:>9,.0f} "
            f"{r.requests:>9,} {per:>9} {r.writes:>7,}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--people", type=int, default=None, help="default: twice --members")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="1,000 members of 1,500 people")
    args = parser.parse_args(argv)
    if args.quick:
        args.members, args.people = 1000, 1500
    people = args.people or 2 * args.members
    rows: list[Row] = []
    failed: list[str] = []
    with fresh_database() as url:
        make_tables(url, people, args.members)
        for latency in dict.fromkeys((0, args.latency_ms)):
            found, problems = one_latency(url, latency, people, args.members, args.concurrency)
            rows += found
            failed += problems
    print_table(rows)
    for problem in failed:
        print(f"FAIL {problem}")
    print("PASS every check" if not failed else f"FAIL {len(failed)} check(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
