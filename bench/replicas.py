"""Throughput with 1, 2 and 3 replicas of personyze-sync sharing one PostgreSQL state store.

    .venv/bin/python bench/replicas.py [--rows 200000] [--latency-ms 20] [--replicas 1,2,3]
                                       [--shards 3] [--concurrency 8] [--quick]
                                       [--limit-rps N]

N rows in a fresh PostgreSQL database (which also holds the state store), the sandbox
as a separate process adding ``--latency-ms`` to every request (standing in for the
real internet), and for each replica count R: an emptied sandbox, a state store with
no table, and R ``personyze-sync backfill`` processes started at the same moment on
one job of ``--shards`` shards. Each replica runs the shards it can lease, one at a
time, and skips those another holds. Every run is checked: one user per source row,
one request per row, every process exited 0. With ``--limit-rps N`` the sandbox limits
the account at N requests/s and each replica is given ``requests_per_second: N``:
a second table says what they sent together (bench/rate_budget.py), and the requests
check counts those not answered 429. See bench/README.md.

Exit status: 0 when every check passed, 1 when one did not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import Usage, run_measured  # noqa: E402
from rate_budget import Budgeted, budgeted, print_budget  # noqa: E402
from run import (  # noqa: E402
    API_KEY,
    CLI,
    MAPPING,
    Sandbox,
    compare,
    fmt,
    fresh_database,
    make_table,
    processes_list,
)

JOB = "replicas"  # not "bench": that is the API key, which the logs redact
TABLE = "people"


@dataclass
class Replicas:
    """One replica count: its processes' figures and what the sandbox received."""

    count: int
    rows: int
    seconds: float
    usages: list[Usage]
    requests: int
    runs: list[dict[str, Any]] = field(default_factory=list)  # psync_runs, by start
    budget: Budgeted | None = None  # what the sandbox received, second by second

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def cpu_s(self) -> float:
        return sum(u.cpu_s for u in self.usages)

    @property
    def rss_mb(self) -> float:
        return max((u.maxrss_mb for u in self.usages), default=0.0)


@dataclass
class Checks:
    """Every check's verdict, printed after the table."""

    found: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.found.append((name, ok, detail))
        return ok


# --- the state store ----------------------------------------------------------------


def drop_state(engine: Engine) -> int:
    """Drop every ``psync_*`` table, so the next replicas start from nothing; how many."""
    with engine.begin() as conn:
        names = [
            str(n)
            for (n,) in conn.execute(
                text(
                    "SELECT tablename FROM pg_tables "
                    "WHERE schemaname = current_schema() AND tablename LIKE 'psync\\_%'"
                )
            )
        ]
        for name in names:
            conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    return len(names)


def state_runs(engine: Engine) -> list[dict[str, Any]]:
    """The run history the replicas wrote: one row per run of a shard, by start."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT job, holder, started_at, ended_at, outcome, rows_read, rows_sent "
                "FROM psync_runs ORDER BY started_at, id"
            )
        )
        return [dict(r._mapping) for r in found]


def write_config(path: Path, url: str, sandbox: Sandbox, args: argparse.Namespace) -> Path:
    """One job of ``--shards`` shards; the state store is the source database itself."""
    shards, concurrency = args.shards, args.concurrency
    doc = {
        "personyze": {
            "api_key": API_KEY,
            "base_url": sandbox.url,
            "concurrency": concurrency,
            "requests_per_second": args.limit_rps,
            "timeout_s": 30,
            "max_attempts": 8,
        },
        "state": {"url": url},
        "jobs": [
            {
                "name": JOB,
                "source": {
                    "url": url,
                    "table": TABLE,
                    "cursor": "updated_at",
                    "key": "id",
                    "batch_size": 1000,
                    "lookback": 0,
                },
                "mapping": dict(MAPPING),
                "shards": shards,
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- one replica count --------------------------------------------------------------


def run_replicas(count: int, config: Path, timeout_s: float) -> tuple[float, list[Usage]]:
    """``count`` backfill processes started together; wall seconds, first start to last end.

    Each goes through ``bench/measure.py`` (its own CPU and peak RSS); a barrier lets
    every thread start its process at the same moment.
    """
    # -v: the INFO lines (a handful a run) that name each shard skipped
    cmd = [CLI, "-v", "--log-format", "json", "backfill", "-c", str(config), JOB, "--json"]
    usages: list[Usage | None] = [None] * count
    ended = [0.0] * count
    barrier = threading.Barrier(count + 1)

    def one(i: int) -> None:
        barrier.wait()
        usages[i] = run_measured(cmd, timeout_s=timeout_s)
        ended[i] = time.monotonic()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    barrier.wait()
    for thread in threads:
        thread.join()
    done = [u for u in usages if u is not None]
    return max(ended) - began, done


def sent_of(usage: Usage) -> int | None:
    """Rows the process says it sent (its ``--json`` report), or None if it said nothing."""
    try:
        doc = json.loads(usage.stdout)
        return int(doc["jobs"][JOB]["sent"])
    except (ValueError, KeyError, TypeError):
        return None


def skipped_of(usage: Usage) -> list[str]:
    """The shards the process skipped because another held them (from its JSON logs)."""
    names: list[str] = []
    for line in usage.stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event", "").startswith("run skipped"):
            names.append(str(event.get("job")))
    return names


def spread(result: Replicas) -> list[str]:
    """How the shards spread over the replicas, from the run history they wrote.

    One line per replica (``host:pid``, as the state store names it), each run of a
    shard with its rows and its seconds from the first run's start. A shard another
    replica already finished is leased and run again from its checkpoint: 0 rows.
    """
    if not result.runs:
        return ["  (no run history)"]
    zero = min(float(r["started_at"]) for r in result.runs)
    holders = list(dict.fromkeys(str(r["holder"]) for r in result.runs))
    lines = []
    for holder in holders:
        parts = []
        for run in result.runs:
            if str(run["holder"]) != holder:
                continue
            end = "-" if run["ended_at"] is None else f"{float(run['ended_at']) - zero:.1f}"
            parts.append(
                f"{str(run['job']).removeprefix(JOB)} {run['outcome']} "
                f"read {int(run['rows_read']):,} sent {int(run['rows_sent']):,} "
                f"({float(run['started_at']) - zero:.1f}-{end} s)"
            )
        lines.append(f"  replica {holder}: " + "; ".join(parts))
    return lines


def one_count(
    report: Checks,
    count: int,
    engine: Engine,
    sandbox: Sandbox,
    config: Path,
    args: argparse.Namespace,
) -> Replicas:
    """An emptied sandbox, no state, ``count`` replicas at once; then the checks."""
    sandbox.reset()
    dropped = drop_state(engine)
    print(
        f"{count} replica{'s' if count > 1 else ''}: sandbox emptied, "
        f"{dropped} state tables dropped, starting",
        flush=True,
    )
    seconds, usages = run_replicas(count, config, max(600.0, args.rows / 20))
    stats = sandbox.stats()
    requests = int(stats["requests"])
    result = Replicas(count, args.rows, seconds, usages, requests)
    result.budget = budgeted(count, stats)
    try:
        result.runs = state_runs(engine)
    except SQLAlchemyError as exc:  # a figure, not a check: say so and go on
        print(f"  could not read psync_runs: {exc}", flush=True)
    name = f"{count} replica{'s' if count > 1 else ''}"
    codes = [u.returncode for u in usages]
    if not report.check(
        f"{name}: every process exited 0",
        len(codes) == count and all(c == 0 for c in codes),
        str(codes),
    ):
        for usage in usages:
            if usage.returncode:
                print(usage.stdout[-2000:], usage.stderr[-3000:], sep="\n", file=sys.stderr)
    limited = result.budget.limited  # 429s are retried: one more request each
    report.check(
        f"{name}: requests == rows" + (" (429s left out)" if args.limit_rps else ""),
        requests - limited == args.rows,
        f"{requests - limited} requests for {args.rows} rows ({stats['by_method']}"
        + (f", {limited} answered 429)" if args.limit_rps else ")"),
    )
    report.check(
        f"{name}: sandbox holds one user per source row",
        *compare(engine, TABLE, sandbox, None, set()),
    )
    for i, usage in enumerate(usages, start=1):  # measure.py's figures, by thread
        skipped = skipped_of(usage)
        print(
            f"  process {i}: exit {usage.returncode}, {usage.wall_s:.1f} s, "
            f"{usage.cpu_s:.1f} CPU s, {usage.maxrss_mb:.1f} MB, "
            f"sent {fmt(sent_of(usage), ',d')}, "
            f"skipped {', '.join(s.removeprefix(JOB) for s in skipped) or 'none'}",
            flush=True,
        )
    for line in spread(result):
        print(line, flush=True)
    return result


# --- the report ---------------------------------------------------------------------


def ceiling(count: int, args: argparse.Namespace) -> tuple[float, float]:
    """R × concurrency ÷ latency, and what the shards allow of it.

    Shards are equal and run one at a time per replica, so the run ends when the
    replica with the most shards finishes: ceil(S / R) shards' time for S shards' rows.
    """
    per = args.concurrency / (args.latency_ms / 1000)
    busy = min(count, args.shards)
    return count * per, per * args.shards / math.ceil(args.shards / busy)


def print_table(results: list[Replicas], args: argparse.Namespace) -> None:
    head = (
        f"{'replicas':>8} {'rows':>9} {'seconds':>8} {'rows/s':>8} {'speedup':>8} "
        f"{'requests/row':>12} {'CPU s/1k rows':>13} {'peak RSS MB':>11}"
    )
    one = next((r for r in results if r.count == 1), None)
    print()
    print(head)
    print("-" * len(head))
    for r in results:
        speedup = r.rate / one.rate if one and one.rate else None
        per_row = r.requests / r.rows if r.rows else None
        cpu = r.cpu_s / r.rows * 1000 if r.rows else None
        print(
            f"{r.count:>8} {r.rows:>9,d} {r.seconds:>8.2f} {r.rate:>8,.0f} "
            f"{fmt(speedup, '.2f') + ('×' if speedup else ''):>8} {fmt(per_row, '.3f'):>12} "
            f"{fmt(cpu, '.3f'):>13} {r.rss_mb:>11.1f}"
        )
    print()
    print(
        f"ceiling for reference (concurrency {args.concurrency}, {args.latency_ms:g} ms a "
        f"request, {args.shards} shards):"
    )
    for r in results:
        flat, sharded = ceiling(r.count, args)
        print(
            f"  {r.count} × {args.concurrency} ÷ {args.latency_ms:g} ms = {flat:,.0f} rows/s; "
            f"with {args.shards} shards run one at a time per replica: {sharded:,.0f} rows/s; "
            f"reached {r.rate / flat:.0%} and {r.rate / sharded:.0%}"
        )
    print(
        f"\nOn this {os.cpu_count()}-core machine the replicas, the sandbox and PostgreSQL "
        "share the CPU (load average at the end: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + ")."
    )
    print()


# --- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows to make (200,000)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per request (20)")
    parser.add_argument(
        "--replicas",
        type=processes_list,
        help="replica counts to measure, comma-separated (1,2,3; --quick: 1,3)",
    )
    parser.add_argument("--shards", type=int, default=3, help="shards of the job (3)")
    parser.add_argument("--concurrency", type=int, default=8, help="per replica (8)")
    parser.add_argument(
        "--quick", action="store_true", help="1,200 rows, replicas 1,3 (what the tests run)"
    )
    parser.add_argument(
        "--limit-rps",
        type=float,
        help="the sandbox limits at N requests/s, each replica's requests_per_second is N",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 1_200
    if args.replicas is None:
        args.replicas = (1, 3) if args.quick else (1, 2, 3)
    if args.limit_rps is not None and args.limit_rps <= 0:
        parser.error("--limit-rps must be above 0")
    if args.latency_ms <= 0:
        parser.error("--latency-ms must be above 0 (the ceiling divides by it)")
    if args.rows < 1 or args.concurrency < 1 or not 1 <= args.shards <= 64:
        parser.error("--rows and --concurrency must be at least 1, --shards 1 to 64")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Checks()
    print(
        f"personyze-sync replicas bench: {args.rows:,} rows, replicas "
        f"{','.join(map(str, args.replicas))}, {args.shards} shards, concurrency "
        f"{args.concurrency} each, {args.latency_ms:g} ms added latency, {os.cpu_count()} CPUs, "
        "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        flush=True,
    )
    began = time.monotonic()
    results: list[Replicas] = []
    with fresh_database() as url, tempfile.TemporaryDirectory() as tmp_dir:
        engine = create_engine(url)
        sandbox = Sandbox(args.latency_ms, {"limit_rps": args.limit_rps} if args.limit_rps else {})
        try:
            made = time.monotonic()
            make_table(engine, TABLE, args.rows)
            print(f"made {args.rows:,} rows in {time.monotonic() - made:.1f} s", flush=True)
            config = write_config(Path(tmp_dir) / "replicas.yaml", url, sandbox, args)
            for count in args.replicas:
                results.append(one_count(report, count, engine, sandbox, config, args))
        finally:
            sandbox.stop()
            engine.dispose()
    print_table(results, args)
    if args.limit_rps:
        print_budget([r.budget for r in results if r.budget], args.limit_rps)
    failed = [name for name, ok, _ in report.found if not ok]
    for name, ok, detail in report.found:
        print(f"[{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}")
    print(
        f"\n{len(report.found) - len(failed)} of {len(report.found)} checks passed "
        f"in {time.monotonic() - began:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
