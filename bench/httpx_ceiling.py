"""The best a Python HTTP client reaches on this machine: P processes, nothing but POSTs.

    python bench/httpx_ceiling.py --api-url URL --api-key K --processes P
                                  (--seconds S | --requests N) [--transport sync|httpcore]

Starts P worker processes (multiprocessing, spawn). Each builds one keep-alive
connection and, once every worker is ready, sends ``POST /users`` one at a time
through its ``handle_request``: an ``httpx.Request`` with the ``Authorization: Basic``
header and a JSON body built the way ``sync/load/client.py`` builds its own, a
distinct email per request. The connection is personyze-sync's own (``--transport
sync``, the default: ``BoundedConnection`` of ``sync/load/transport.py``, httpx's
transport with a deadline per request and a size cap) or httpx's plain default
``httpx.HTTPTransport`` (``--transport httpcore``: httpcore and h11). No
database, no mapping, no state: only the HTTP client's cost. Every worker stops after
``--seconds`` (or after its share of ``--requests``) and reports its requests, failures
(any answer other than 200, or an exception), timed span and own CPU time
(``time.process_time()``).

Prints one JSON line: ``{"processes", "requests", "ok", "failures", "seconds",
"requests_per_s", "cpu_s", "first_failure"}``; ``seconds`` runs from the first worker's
start to the last worker's end, ``requests_per_s`` is the 200 answers over it, and
``cpu_s`` is the workers' CPU time summed. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from queue import Empty
from typing import Any

import httpx

from sync.load.transport import BoundedConnection

READY_TIMEOUT_S = 60.0  # for every worker to start, import httpx and build its transport


@dataclass(frozen=True)
class Job:
    """What one worker does."""

    api_url: str  # ends in /rest
    api_key: str
    worker: int
    seconds: float | None  # send for this long ...
    requests: int | None  # ... or this many requests
    transport: str  # "sync" (personyze-sync's connection) or "httpcore" (httpx's default)


@dataclass(frozen=True)
class Result:
    """What one worker did."""

    requests: int
    ok: int
    began: float  # time.monotonic(): one clock for every process on Linux
    ended: float
    cpu_s: float
    first_failure: str


def send(job: Job, start: Event, results: Queue[Any]) -> None:
    """One worker: sequential POSTs through one keep-alive connection, then its Result."""
    transport = connection(job.transport)
    url = httpx.URL(job.api_url + "/users")
    token = base64.b64encode(f"api:{job.api_key}".encode()).decode()
    headers = {
        "Authorization": f"Basic {token}",
        "User-Agent": "personyze-sync-bench/httpx-ceiling",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    extensions = {"timeout": httpx.Timeout(30).as_dict()}
    prefix = f"httpx-{os.getpid()}-{job.worker}"
    results.put(("ready", job.worker))
    start.wait()

    sent = ok = 0
    first_failure = ""
    began = time.monotonic()
    cpu_began = time.process_time()
    deadline = began + job.seconds if job.seconds is not None else None
    while True:
        if job.requests is not None and sent >= job.requests:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        body = {
            "internal_id": sent + 1,
            "email": f"{prefix}-{sent}@example.com",
            "first_name": "Httpx",
            "last_name": f"Worker{job.worker}",
            "custom_f_1": sent * 1.25,
            "custom_i_1": sent % 2,
        }
        content = json.dumps(body, separators=(",", ":")).encode()
        request = httpx.Request(
            "POST", url, headers=headers, content=content, extensions=extensions
        )
        sent += 1
        try:
            response = transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.HTTPError as exc:
            first_failure = first_failure or f"{type(exc).__name__}: {exc}"
            continue
        if response.status_code == 200:
            ok += 1
        elif not first_failure:
            first_failure = f"{response.status_code} {response.text[:200]}"
    cpu_s = time.process_time() - cpu_began
    ended = time.monotonic()
    transport.close()
    # a plain dict: the class, defined in the spawned __main__, would not unpickle
    results.put(("done", asdict(Result(sent, ok, began, ended, cpu_s, first_failure))))


def connection(kind: str) -> httpx.BaseTransport:
    if kind == "httpcore":
        return httpx.HTTPTransport()
    return BoundedConnection(httpx.create_ssl_context(), deadline_s=30, max_answer_bytes=2**26)


def run(
    api_url: str,
    api_key: str,
    processes: int,
    seconds: float | None,
    requests: int | None,
    transport: str = "sync",
) -> dict[str, Any]:
    """Start the workers, let them go at once, gather what they did."""
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results: Queue[Any] = context.Queue()
    shares: list[int | None] = (
        [None] * processes if requests is None else list(_split(requests, processes))
    )
    workers = [
        context.Process(
            target=send,
            args=(
                Job(api_url.rstrip("/"), api_key, w, seconds, shares[w], transport),
                start,
                results,
            ),
        )
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            kind, _worker = results.get(timeout=READY_TIMEOUT_S)
            assert kind == "ready", kind
        start.set()
        limit = (seconds or 0) + (requests or 0) / 10 + READY_TIMEOUT_S
        done: list[Result] = []
        for _ in workers:
            kind, result = results.get(timeout=limit)
            assert kind == "done", kind
            done.append(Result(**result))
    except Empty:
        raise SystemExit("a worker did not answer in time") from None
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    span = max(r.ended for r in done) - min(r.began for r in done)
    total = sum(r.requests for r in done)
    ok = sum(r.ok for r in done)
    return {
        "processes": processes,
        "transport": transport,
        "requests": total,
        "ok": ok,
        "failures": total - ok,
        "seconds": span,
        "requests_per_s": ok / span if span > 0 else 0.0,
        "cpu_s": sum(r.cpu_s for r in done),
        "first_failure": next((r.first_failure for r in done if r.first_failure), ""),
        "workers": [asdict(r) for r in done],
    }


def _split(total: int, parts: int) -> list[int]:
    """``total`` requests in ``parts`` shares as even as they go."""
    return [total // parts + (1 if w < total % parts else 0) for w in range(parts)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True, help="base URL, ending in /rest")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--seconds", type=float, help="each worker sends for this long")
    amount.add_argument("--requests", type=int, help="requests in all, split over workers")
    parser.add_argument(
        "--transport",
        choices=("sync", "httpcore"),
        default="sync",
        help="personyze-sync's own connection (sync) or httpx's default transport (httpcore)",
    )
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    figures = run(
        args.api_url, args.api_key, args.processes, args.seconds, args.requests, args.transport
    )
    print(json.dumps(figures), flush=True)
    sys.exit(1 if figures["failures"] else 0)


if __name__ == "__main__":
    main()
