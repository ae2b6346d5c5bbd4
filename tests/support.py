"""Helpers the tests share: sample source tables, config files, a webhook receiver,
a database server that never answers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import yaml
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    update,
)

from sync.config import Config, load_config
from sync.databases import source_engine

API_KEY = "test-key-3f9a1c"
BASE_TIME = datetime(2024, 5, 1, 12, 0, 0)

metadata = MetaData()
customers = Table(
    "customers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("email", String(200)),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("score", Numeric(10, 2)),
    Column("vip", Boolean),
    Column("password_hash", String(100)),
    Column("updated_at", DateTime, nullable=True),
)


def customer(i: int, *, updated_at: datetime | None = None, **overrides: Any) -> dict[str, Any]:
    row = {
        "id": i,
        "email": f"user{i}@example.com",
        "first_name": f"First{i}",
        "last_name": f"Last{i}",
        "score": i * 1.5,
        "vip": i % 2 == 0,
        "password_hash": f"secret-hash-{i}",
        # a third of the rows share one timestamp: ties on the cursor
        "updated_at": updated_at or (BASE_TIME if i % 3 == 0 else BASE_TIME + timedelta(seconds=i)),
    }
    row.update(overrides)
    return row


def make_customers(url: str, ids: Iterable[int], **overrides: Any) -> None:
    engine = source_engine(url)
    metadata.create_all(engine)
    rows = [customer(i, **overrides) for i in ids]
    with engine.begin() as conn:
        if rows:
            conn.execute(customers.insert(), rows)
    engine.dispose()


def change_customers(url: str, where: Any, **values: Any) -> None:
    engine = source_engine(url)
    with engine.begin() as conn:
        conn.execute(update(customers).where(where).values(**values))
    engine.dispose()


def execute(url: str, *statements: Any) -> None:
    engine = source_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)
    engine.dispose()


DEFAULT_MAPPING = {
    "id": "internal_id",
    "email": "email",
    "first_name": "first_name",
    "last_name": "lastName",
    "score": "custom_f_1",
    "vip": "custom_i_1",
}


def config_doc(
    *,
    source_url: str,
    api_url: str,
    state_url: str,
    job: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    personyze: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "personyze": {
            "api_key": "${TEST_API_KEY}",
            "base_url": api_url,
            "concurrency": 4,
            "requests_per_second": None,
            "timeout_s": 5,
            "max_attempts": 4,
            **(personyze or {}),
        },
        "state": {"url": state_url},
        "jobs": [
            {
                "name": "customers",
                "source": {
                    "url": source_url,
                    "table": "customers",
                    "cursor": "updated_at",
                    "key": "id",
                    "batch_size": 50,
                    **(source or {}),
                },
                "mapping": dict(DEFAULT_MAPPING),
                **(job or {}),
            }
        ],
    }
    return doc


def write_config(path: Path, doc: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    return path


def load(path: Path) -> Config:
    return load_config(path, {"TEST_API_KEY": API_KEY})


def users_by_internal_id(users: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for user in users:
        found.setdefault(str(user.get("internal_id")), []).append(user)
    return found


def self_signed_certificate(folder: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` (an IP address or a name) and its key, made by openssl."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make a self-signed certificate"
    cert, key = folder / "cert.pem", folder / "key.pem"
    kind = "IP" if host.replace(".", "").isdigit() else "DNS"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={host}",
         "-addext", f"subjectAltName={kind}:{host}"],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class LoopbackServer:
    """An HTTP(S) server on a free loopback port, served from a thread inside a with-block."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
    ) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Receiver(LoopbackServer):
    """A Slack-compatible webhook: records each posted ``text`` and body, answers ``status``."""

    def __init__(self, token: str = "T0K3N") -> None:
        self.texts: list[str] = []
        self.bodies: list[bytes] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(body)
                receiver.texts.append(json.loads(body)["text"])
                answer = b"ok" if receiver.status < 300 else b"no_service"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler)
        self.url = f"http://127.0.0.1:{self.port}/services/T0/B0/{token}"


class SilentServer:
    """A TCP server on loopback that accepts every connection and never says a word.

    A database behind a dead proxy, or one frozen mid-start, looks like this: the
    connection is made, and the handshake's first answer never comes. The connections
    are held open until the with-block ends, then closed (which frees a client still
    waiting on one).
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)


class FakeTime:
    """A monotonic clock that only moves when slept on (or told to)."""

    def __init__(self, advance_on_sleep: bool = True) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._advance = advance_on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self._advance:
            self.now += seconds


# -- the command line, in a test ------------------------------------------------------

WRONG_KEY = "wrong-key-7d1e0b"
DB_PASSWORD = "Hunter2pw77"
SECRETS = (API_KEY, WRONG_KEY, DB_PASSWORD)


def script() -> str:
    beside = Path(sys.executable).with_name("personyze-sync")
    found = str(beside) if beside.exists() else shutil.which("personyze-sync")
    assert found, "the personyze-sync console script is not installed"
    return found


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def flat(self) -> str:
        """The output with rich's line wrapping undone."""
        return " ".join(self.text.split())

    def json(self) -> Any:
        return json.loads(self.out)


def no_secrets(result: Outcome) -> Outcome:
    for secret in SECRETS:
        assert secret not in result.text, f"a secret was printed: {result.text}"
    return result


def run_script(*args: str, key: str | None = API_KEY, timeout: float = 60) -> Outcome:
    """Run the installed console script as a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "TEST_API_KEY"}
    if key is not None:
        env["TEST_API_KEY"] = key
    done = subprocess.run(
        [script(), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    return no_secrets(Outcome(done.returncode, done.stdout, done.stderr))


def status_json(cli: Callable[..., Outcome], config: str) -> dict[str, Any]:
    result = cli("status", "-c", config, "--json")
    assert result.code == 0, result.text
    (job,) = result.json()
    return job
