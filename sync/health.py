"""``/healthz``, ``/readyz`` and ``/metrics`` over HTTP, for the daemon.

A plain threaded HTTP server: the daemon hands it two callables, one that says
whether it is ready (and why not) and one that renders the metrics.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from sync.errors import port_unavailable

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """Serves the daemon's health and metrics on ``host:port`` (port 0: any free port).

    It listens from the start: a port it cannot take raises
    :class:`~sync.errors.PortUnavailable` here, before the daemon runs anything.
    """

    def __init__(
        self, host: str, port: int, *, ready: Readiness, metrics: Callable[[], bytes]
    ) -> None:
        handler = _handler(ready, metrics)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise port_unavailable(host, port, exc) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(ready: Readiness, metrics: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                ok, doc = ready()
                body = json.dumps(doc, default=str, indent=2).encode() + b"\n"
                self._send(200 if ok else 503, body, "application/json")
            elif path == "/metrics":
                self._send(200, metrics(), CONTENT_TYPE_LATEST)
            else:
                self._send(
                    404,
                    b"not found: try /healthz, /readyz or /metrics\n",
                    "text/plain; charset=utf-8",
                )

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health request: " + format, *args)

    return Handler
