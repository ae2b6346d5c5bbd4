"""The sandbox as a separate process for the benchmark, with an added latency per request.

    python bench/sandbox_server.py --port P --latency-ms L [--faults JSON] [--stats-port S]
                                   [--api-key K]

Serves ``sync.sandbox.SandboxServer`` with ``Faults(latency_s=L / 1000, **JSON)`` until killed
(SIGTERM or SIGINT), and a tiny second server on ``--stats-port`` for the benchmark:

- ``GET /stats``: ``{"requests": n, "by_method": {...}, "by_status": {...}, "users": n,
  "by_second": {...}}``, the requests the API port answered since the start (or the
  last reset), by method, by status (``"none"``: no answer) and by whole second of
  the sandbox's monotonic clock they came in (``[requests, answered 429]``), and the
  users it holds;
- ``POST /reset``: forget every user and zero the counts.

Requests are counted, not logged (the request log is switched off), so the sandbox's
own memory does not grow with the number of requests. Once both ports listen, one JSON
line ``{"api": URL, "stats": URL}`` is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sync.sandbox import Faults, RecordedRequest, SandboxServer


class CountingSandbox(SandboxServer):
    """A sandbox that counts the requests it answered instead of keeping a log."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, request_log_limit=0, **kwargs)
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.seconds: dict[int, list[int]] = {}
        self._count_lock = threading.Lock()

    def _record(self, entry: RecordedRequest) -> None:
        with self._count_lock:
            self.counts[entry.method] += 1
            self.statuses[str(entry.status) if entry.status is not None else "none"] += 1
            second = self.seconds.setdefault(int(entry.start), [0, 0])
            second[0] += 1
            second[1] += entry.status == 429

    def stats(self) -> dict[str, Any]:
        with self._count_lock:
            by_method, by_status = dict(self.counts), dict(self.statuses)
            by_second = {str(k): list(v) for k, v in sorted(self.seconds.items())}
        return {
            "requests": sum(by_method.values()),
            "by_method": by_method,
            "by_status": by_status,
            "users": len(self.store),
            "by_second": by_second,
        }

    def reset_all(self) -> None:
        self.store.reset()
        with self._count_lock:
            self.counts.clear()
            self.statuses.clear()
            self.seconds.clear()


def stats_server(sandbox: CountingSandbox, host: str, port: int) -> ThreadingHTTPServer:
    """The ``/stats`` and ``/reset`` endpoints, on a port of their own."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, value: Any) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/stats":
                self._answer(200, sandbox.stats())
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path == "/reset":
                sandbox.reset_all()
                self._answer(200, sandbox.stats())
            else:
                self._answer(404, {"error": "not found"})

        def log_message(self, format: str, *args: Any) -> None:
            """Silent."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    parser.add_argument("--stats-port", type=int, default=0, help="stats port (0: any free)")
    parser.add_argument("--api-key", default="bench")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--faults", type=json.loads, default={}, help="more Faults fields, JSON")
    args = parser.parse_args(argv)

    sandbox = CountingSandbox(
        args.api_key,
        host=args.host,
        port=args.port,
        faults=Faults(latency_s=args.latency_ms / 1000, **args.faults),
    )
    sandbox.start()
    stats = stats_server(sandbox, args.host, args.stats_port)
    threading.Thread(target=stats.serve_forever, daemon=True).start()

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    print(
        json.dumps({"api": sandbox.url, "stats": f"http://{args.host}:{stats.server_port}"}),
        flush=True,
    )
    done.wait()
    stats.shutdown()
    sandbox.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
