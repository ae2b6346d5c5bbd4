"""What re-reading the checkpoint's own cursor value costs when many rows share it.

A run reads every row from the checkpoint's cursor value on (``cursor >= c``), so a
row updated within that value with a smaller key is never missed. Rows sharing the
value are read again by every run and skipped by their fingerprints: no request. This
times a run with nothing changed after a backfill of N rows that all share one
timestamp (a bulk load), beside N rows with distinct timestamps, and prints a table.

    .venv/bin/python bench/one_cursor_value.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine

from sync.config import load_config
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import SandboxServer
from sync.wiring import Wiring

T0 = datetime(2025, 1, 1)  # noqa: DTZ001 - a naive column, as the source has


def source(path: Path, rows: int, *, shared: bool) -> str:
    url = f"sqlite:///{path}"
    people = Table(
        "people",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("email", String(80)),
        Column("updated_at", DateTime, index=True),
    )
    engine = create_engine(url)
    people.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            people.insert(),
            [
                {"id": i, "email": f"p{i}@example.com",
                 "updated_at": T0 if shared else T0 + timedelta(seconds=i)}
                for i in range(1, rows + 1)
            ],
        )  # fmt: skip
    engine.dispose()
    return url


def measure(folder: Path, rows: int, *, shared: bool) -> tuple[float, int, int]:
    url = source(folder / "source.db", rows, shared=shared)
    with SandboxServer("bench-key") as api:
        doc = {
            "personyze": {"api_key": "bench-key", "base_url": api.url, "concurrency": 16,
                          "requests_per_second": None},
            "state": {"url": f"sqlite:///{folder}/state.db"},
            "jobs": [{"name": "people",
                      "source": {"url": url, "table": "people", "cursor": "updated_at",
                                 "key": "id"},
                      "mapping": {"id": "internal_id", "email": "email"}}],
        }  # fmt: skip
        (folder / "sync.yaml").write_text(yaml.safe_dump(doc))
        with Wiring(load_config(folder / "sync.yaml", {})) as app:
            job = app.config.jobs[0]
            run_job(app, job, RunOptions(kind="backfill"))
            api.clear_requests()
            started = time.perf_counter()
            stats = run_job(app, job, RunOptions())
            seconds = time.perf_counter() - started
        return seconds, stats.read, len(api.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    rows = parser.parse_args().rows
    print(f"a run with nothing changed, after a backfill of {rows:,} rows (SQLite source)")
    print(f"{'cursor values':<28} {'seconds':>8} {'rows read':>10} {'requests':>9}")
    for shared, label in ((False, "one per row"), (True, "one for every row")):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, read, requests = measure(Path(tmp), rows, shared=shared)
        print(f"{label:<28} {seconds:8.2f} {read:10,} {requests:9}")


if __name__ == "__main__":
    main()
