"""What the delivery history costs a backfill: the same backfill with it on and off.

    .venv/bin/python bench/history.py [--rows 20000] [--rounds 3] [--concurrency 32] [--quick]

N rows in a fresh PostgreSQL database (``bench/run.py``'s table), the sandbox as a
separate process with no added latency (where a backfill goes fastest, so where the
history's share of the work is largest), and ``personyze-sync backfill`` of them, with
``state.history.enabled`` off and on in turn, each on an emptied sandbox and a fresh
SQLite state file, ``--rounds`` times (off, on, off, on, ...: a busy machine slows both
alike). Reported: each run's rows/s and CPU, the best and the median of each setting,
and the history's cost (1 - on/off of the medians), against the target of at most 10%.
Checked: every backfill exits 0 and sends every row, and the state file holds one
delivery per row with the history on and none with it off.

Exit status: 0 when every check passed (a missed target is reported as MISS, not
failed), 1 when one did not.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from sqlalchemy import create_engine

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import run_measured  # noqa: E402
from run import CLI, Report, Row, Sandbox, fresh_database, make_table, write_config  # noqa: E402

TARGET = 0.10  # the history may cost at most this share of backfill throughput


def backfill(
    report: Report, sandbox: Sandbox, source_url: str, args: argparse.Namespace, tmp: Path,
    history: bool, round_: int,
) -> Row:  # fmt: skip
    """One measured backfill with the history ``history``; its table row."""
    label = "on" if history else "off"
    state = tmp / f"state-{label}-{round_}.db"
    config = write_config(
        tmp / f"history-{label}.yaml", source_url, sandbox, "people", args.concurrency, state
    )
    doc = yaml.safe_load(config.read_text())
    doc["state"]["history"] = {"enabled": history}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    sandbox.reset()
    before = sandbox.requests()
    usage = run_measured([CLI, "backfill", "-c", str(config), "bench"], timeout_s=600)
    requests = sandbox.requests() - before
    what = f"backfill, history {label}, round {round_ + 1}"
    if not report.check(f"{what}: exit status", usage.returncode == 0, str(usage.returncode)):
        print(usage.stdout[-2000:], usage.stderr[-2000:], sep="\n", file=sys.stderr)
    report.check(f"{what}: one request per row", requests == args.rows, f"{requests} requests")
    kept = -1  # no state file, or no history table in it
    with contextlib.suppress(sqlite3.Error), sqlite3.connect(state) as conn:
        kept = conn.execute("SELECT count(*) FROM psync_deliveries").fetchone()[0]
    want = args.rows if history else 0
    report.check(f"{what}: deliveries kept", kept == want, f"{kept} (want {want})")
    row = Row("0 ms", what, args.rows, usage.wall_s, None, requests, usage.cpu_s, usage.maxrss_mb)
    report.rows.append(row)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="2,000 rows, 1 round (the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 2_000, 1
    report = Report()
    runs: dict[bool, list[Row]] = {False: [], True: []}
    with fresh_database() as source_url, tempfile.TemporaryDirectory() as folder:
        engine = create_engine(source_url)
        make_table(engine, "people", args.rows)
        engine.dispose()
        sandbox = Sandbox(0.0)
        try:
            for round_ in range(args.rounds):
                for history in (False, True):
                    row = backfill(report, sandbox, source_url, args, Path(folder), history, round_)
                    runs[history].append(row)
        finally:
            sandbox.stop()

    print(f"\n{'what':<34} {'rows':>7} {'seconds':>8} {'rows/s':>8} {'CPU s':>6} {'RSS MB':>7}")
    for r in report.rows:
        rate = f"{r.rows_per_s:,.0f}" if r.rows_per_s else "-"
        print(
            f"{r.what:<34} {r.rows or 0:>7,} {r.seconds or 0:>8.2f} {rate:>8} "
            f"{r.cpu_s or 0:>6.2f} {r.rss_mb or 0:>7.1f}"
        )
    median = {h: statistics.median(r.rows_per_s or 0 for r in rows) for h, rows in runs.items()}
    best = {h: max(r.rows_per_s or 0 for r in rows) for h, rows in runs.items()}
    cpu = {h: statistics.median(r.cpu_s or 0 for r in rows) for h, rows in runs.items()}
    cost = 1 - median[True] / median[False] if median[False] else 0.0
    cpu_cost = cpu[True] / cpu[False] - 1 if cpu[False] else 0.0
    print(
        f"\nhistory off: median {median[False]:,.0f} rows/s (best {best[False]:,.0f}), "
        f"CPU {cpu[False]:.2f} s\nhistory on:  median {median[True]:,.0f} rows/s "
        f"(best {best[True]:,.0f}), CPU {cpu[True]:.2f} s"
    )
    verdict = "PASS" if cost <= TARGET else "MISS"
    print(
        f"[{verdict}] the history costs {cost:.1%} of backfill throughput (target <= "
        f"{TARGET:.0%}); CPU {cpu_cost:+.1%}"
    )
    failed = [name for name, ok, _ in report.checks if not ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
