"""personyze-sync against a faulty and a rate-limiting Personyze, beside runs without faults.

    .venv/bin/python bench/hostile.py           # targets A, B and C (issue 15), a few minutes
    .venv/bin/python bench/hostile.py --quick   # small runs (what tests/test_bench.py runs)
    .venv/bin/python bench/hostile.py --only transport --cli "env PYTHONPATH=CHECKOUT ..."

Each run is ``personyze-sync backfill`` of a fresh PostgreSQL table into a sandbox of its
own (``bench/sandbox_server.py`` with the faults of the setting), measured from outside.
The targets:

- **A**: the default ceiling (``requests_per_second: 50``) with 5 % of requests answered
  429 ``Retry-After: 1`` at random: at least 80 % of the ceiling in rows/s.
- **B**: no ceiling, 5 % 429 + 5 % 503 + 5 % 500 at 3 ms latency, concurrency 16: at
  least 60 % of the rows/s of the same run without faults.
- **C**: a sandbox that really limits (a token bucket of N requests/s answering 429
  beyond it), no ceiling on our side: rows/s within 10 % of N, under 2 % of requests
  answered 429.
- **transport**: fault-free backfills at 0 ms and 50 ms added latency, for comparing two
  checkouts' transports side by side (``--cli`` runs another checkout's command).

It exits 1 when a run failed or the sandbox does not hold what the source holds; a
missed target prints ``MISS`` and does not change the exit status.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, create_engine, text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import run_measured  # noqa: E402
from run import API_KEY, CLI, MAPPING, Sandbox, compare, fresh_database, make_table  # noqa: E402

WRITES = {"writes_only": True}  # the bench reads the sandbox back through the same API


@dataclass
class Setting:
    """One backfill: the sandbox's faults and the personyze settings that differ."""

    name: str
    rows: int
    latency_ms: float = 0.0
    faults: dict[str, Any] = field(default_factory=dict)
    personyze: dict[str, Any] = field(default_factory=dict)
    settle_s: float | None = None  # also measure from this many seconds in to the end


@dataclass
class Measured:
    setting: Setting
    seconds: float
    requests: int
    limited: int  # answered 429
    ok: bool
    settled: tuple[float, float] | None = None  # rows/s and share of 429s once settled
    cpu_s: float = 0.0  # the sync's own CPU time

    @property
    def rows_per_s(self) -> float:
        return self.setting.rows / self.seconds if self.seconds else 0.0

    @property
    def limited_share(self) -> float:
        return self.limited / self.requests if self.requests else 0.0


def write_config(path: Path, source_url: str, sandbox: Sandbox, setting: Setting) -> Path:
    personyze = {
        "api_key": API_KEY,
        "base_url": sandbox.url,
        "concurrency": 16,
        "timeout_s": 30,
        "max_attempts": 8,
        **setting.personyze,
    }
    doc = {
        "personyze": personyze,
        "state": {"url": f"sqlite:///{path.with_suffix('.db')}"},
        "jobs": [
            {
                "name": "bench",
                "source": {
                    "url": source_url,
                    "table": "people",
                    "cursor": "updated_at",
                    "key": "id",
                    "batch_size": 1000,
                    "lookback": 0,
                },
                "mapping": dict(MAPPING),
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def backfill(
    setting: Setting, source_url: str, engine: Engine, tmp: Path, cli: list[str]
) -> Measured:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS people"))
    make_table(engine, "people", setting.rows)
    sandbox = Sandbox(setting.latency_ms, setting.faults)
    try:
        config = write_config(
            tmp / f"{len(list(tmp.iterdir()))}.yaml", source_url, sandbox, setting
        )
        marks: list[tuple[float, dict[str, Any]]] = []
        stop = threading.Event()

        def mark() -> None:  # the sandbox's counts once the run has settled, and at its end
            if setting.settle_s is not None and not stop.wait(setting.settle_s):
                marks.append((time.monotonic(), sandbox.stats()))

        marker = threading.Thread(target=mark)
        marker.start()
        usage = run_measured([*cli, "backfill", "-c", str(config), "bench"], timeout_s=1800)
        ended = time.monotonic()
        stop.set()
        marker.join()
        stats = sandbox.stats()
        settled = None
        if marks:
            at, then = marks[0]
            requests = stats["requests"] - then["requests"]
            refused = int(stats["by_status"].get("429", 0)) - int(then["by_status"].get("429", 0))
            rows = stats["users"] - then["users"]
            settled = (rows / (ended - at), refused / requests if requests else 0.0)
        same, detail = compare(engine, "people", sandbox, None, set())
        ok = usage.returncode == 0 and same
        if not ok:
            print(f"{setting.name}: exit {usage.returncode}; {detail}", file=sys.stderr)
            print(usage.stderr[-2000:], file=sys.stderr)
        limited = int(stats.get("by_status", {}).get("429", 0))
        requests = int(stats["requests"])
        return Measured(setting, usage.wall_s, requests, limited, ok, settled, usage.cpu_s)
    finally:
        sandbox.stop()


def settings(args: argparse.Namespace) -> list[Setting]:
    quick = args.quick
    a_rows, b_rows, c_rows = (100, 600, 200) if quick else (1_500, 60_000, 6_000)
    limit = args.limit_rps
    chosen: list[Setting] = []
    if args.only in (None, "A"):
        chosen += [
            Setting("A: ceiling 50/s, no faults", a_rows),
            Setting(
                "A: ceiling 50/s, 5% 429 (Retry-After 1)",
                a_rows,
                faults={"rate_limit_rate": 0.05, "retry_after_s": 1.0, "seed": 1, **WRITES},
            ),
        ]
    if args.only in (None, "B"):
        unlimited = {"requests_per_second": None, "concurrency": 16}
        chosen += [
            Setting("B: no ceiling, 3 ms, no faults", b_rows, 3.0, personyze=unlimited),
            Setting(
                "B: no ceiling, 3 ms, 5% 429 + 5% 503 + 5% 500",
                b_rows,
                3.0,
                faults={"rate_limit_rate": 0.05, "error_rate": 0.10, "seed": 2, **WRITES},
                personyze=unlimited,
            ),
        ]
    if args.only in (None, "C"):
        chosen.append(
            Setting(
                f"C: no ceiling, sandbox limits at {limit:g}/s",
                c_rows,
                faults={"limit_rps": limit, **WRITES},
                personyze={"requests_per_second": None},
                settle_s=1.0 if quick else 10.0,
            )
        )
    if args.only == "transport":
        rows = 2_000 if quick else args.transport_rows
        unlimited = {"requests_per_second": None, "concurrency": 32}
        chosen += [
            Setting("transport: 0 ms", rows, 0.0, personyze=unlimited),
            Setting("transport: 50 ms", rows, 50.0, personyze=unlimited),
        ]
    return chosen


def targets(results: list[Measured], args: argparse.Namespace) -> list[str]:
    by_name = {m.setting.name.split(",")[0] + "|" + m.setting.name: m for m in results}
    lines = []

    def find(prefix: str, faulty: bool) -> Measured | None:
        return next(
            (
                m
                for key, m in by_name.items()
                if key.startswith(prefix) and ("no faults" not in m.setting.name) == faulty
            ),
            None,
        )

    a = find("A:", True)
    if a is not None:
        share = a.rows_per_s / 50
        lines.append(
            f"A  {share:6.0%} of the 50/s ceiling (target >= 80 %)  {verdict(share >= 0.8)}"
        )
    b, b0 = find("B:", True), find("B:", False)
    if b is not None and b0 is not None and b0.rows_per_s:
        share = b.rows_per_s / b0.rows_per_s
        lines.append(
            f"B  {share:6.0%} of the fault-free rows/s (target >= 60 %)  {verdict(share >= 0.6)}"
        )
    c = find("C:", True)
    if c is not None and c.settled is not None:
        rate, share = c.settled
        off = rate / args.limit_rps - 1
        good = abs(off) <= 0.10 and share < 0.02
        lines.append(
            f"C  settled (from {c.setting.settle_s:g} s on): {rate:.1f} rows/s against a limit of "
            f"{args.limit_rps:g}/s ({off:+.0%}), {share:.1%} answered 429 "
            f"(target within 10 %, under 2 %)  {verdict(good)}; the whole run: "
            f"{c.rows_per_s:.1f} rows/s, {c.limited_share:.1%} answered 429"
        )
    return lines


def verdict(good: bool) -> str:
    return "PASS" if good else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small runs, for the tests")
    parser.add_argument("--only", choices=["A", "B", "C", "transport"])
    parser.add_argument("--limit-rps", type=float, default=100.0, help="C: the sandbox's limit")
    parser.add_argument("--transport-rows", type=int, default=20_000)
    parser.add_argument("--cli", help="the personyze-sync command to run (default: this venv's)")
    args = parser.parse_args(argv)
    cli = shlex.split(args.cli) if args.cli else [CLI]
    results: list[Measured] = []
    with fresh_database() as source_url, tempfile.TemporaryDirectory() as tmp_dir:
        engine = create_engine(source_url)
        try:
            for setting in settings(args):
                measured = backfill(setting, source_url, engine, Path(tmp_dir), cli)
                print(
                    f"{setting.name:<52} {setting.rows:>7,} rows {measured.seconds:7.1f} s "
                    f"{measured.rows_per_s:9.1f} rows/s {measured.requests:>7,} requests "
                    f"{measured.limited_share:6.1%} 429 {measured.cpu_s:6.1f} CPU s  "
                    f"{'ok' if measured.ok else 'FAILED'}",
                    flush=True,
                )
                results.append(measured)
        finally:
            engine.dispose()
    for line in targets(results, args):
        print(line)
    return 0 if all(m.ok for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
