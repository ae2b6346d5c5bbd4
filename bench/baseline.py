"""The sequential baseline: what a hand-written cron script does.

    python bench/baseline.py --source-url URL --table people --api-url URL --api-key K
                             [--seconds 20]

SQLAlchemy reads the rows in (updated_at, id) order, and one httpx client (keep-alive)
POSTs them one at a time, the same mapping as the benchmark's personyze-sync job. It
stops after ``--seconds`` and prints one JSON line: ``{"rows": n, "seconds": s}``.
"""

from __future__ import annotations

import argparse
import json
import time
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import create_engine, text


def payload(row: Any) -> dict[str, Any]:
    """One source row as a Personyze user."""
    score = row.score
    return {
        "internal_id": row.id,
        "email": row.email.strip().lower(),
        "first_name": row.first_name,
        "last_name": row.last_name,
        "custom_f_1": float(score) if isinstance(score, Decimal) else score,
        "custom_i_1": int(row.vip),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source-url", required=True)
    parser.add_argument("--table", default="people")
    parser.add_argument("--api-url", required=True, help="base URL, ending in /rest")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)

    engine = create_engine(args.source_url)
    query = text(
        f"SELECT id, email, first_name, last_name, score, vip FROM {args.table} "
        "ORDER BY updated_at, id"
    )
    sent = 0
    began = time.monotonic()
    with (
        engine.connect() as conn,
        httpx.Client(base_url=args.api_url, auth=("api", args.api_key), timeout=30) as client,
    ):
        for row in conn.execution_options(yield_per=1000).execute(query):
            client.post("/users", json=payload(row)).raise_for_status()
            sent += 1
            if time.monotonic() - began >= args.seconds:
                break
    seconds = time.monotonic() - began
    engine.dispose()
    print(json.dumps({"rows": sent, "seconds": seconds}))


if __name__ == "__main__":
    main()
