"""Helpers the tests share, in one place (tests/test_tests.py keeps it so).

Sample source tables; config files; loopback servers (HTTP, raw sockets, one that never
says a word); waiting for a condition, and a clock the test moves; the command line,
as a subprocess and as a daemon; the database servers and what the state store holds;
secrets and the places they must not show; clients of the sandbox.
Fixtures built on these are in ``conftest.py``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote, quote_plus

import httpx
import yaml
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    inspect,
    text,
    update,
)
from sqlalchemy.pool import NullPool

from sync.config import Config, PersonyzeSettings, load_config
from sync.databases import source_engine
from sync.load.client import PersonyzeClient
from sync.sandbox import SandboxServer
from sync.state.leases import key_halves, lease_key

T = TypeVar("T")

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


# The fixture of each source database (in conftest.py), by the name tests use for it.
SOURCE_FIXTURES = {
    "sqlite": "sqlite_url",
    "postgres": "pg_url",
    "mariadb": "mariadb_url",
    "duckdb": "duckdb_url",
}


def writer(url: str) -> Engine:
    """An engine to write a test's source with: the sync's own, except for DuckDB, which
    the sync opens read-only (each connection opened and closed, as the sync's are)."""
    if url.startswith("duckdb"):
        return create_engine(url, poolclass=NullPool)
    return source_engine(url)


def copy_to_duckdb(url: str, target: str, tables: Mapping[str, str], folder: Path) -> None:
    """Copy ``tables`` (name: its columns, or ``*``) of database ``url`` into DuckDB
    ``target`` through CSV files in ``folder``; text columns stay text."""
    import csv

    source = source_engine(url)
    with writer(target).begin() as duck:
        for name, columns in tables.items():
            with source.connect() as conn:
                result = conn.execute(text(f"SELECT {columns} FROM {name}"))
                path = folder / f"{name}.csv"
                names = list(result.keys())
                with path.open("w", newline="", encoding="utf-8") as file:
                    out = csv.writer(file)
                    out.writerow(names)
                    out.writerows(result)
            texts = ", ".join(
                f"'{c['name']}': 'VARCHAR'"
                for c in inspect(source).get_columns(name)
                if isinstance(c["type"], String) and c["name"] in names
            )
            duck.execute(
                text(
                    f"CREATE TABLE {name} AS SELECT * FROM "
                    f"read_csv('{path}', header = true, types = {{{texts}}})"
                )
            )
    source.dispose()


def make_customers(url: str, ids: Iterable[int], **overrides: Any) -> None:
    engine = writer(url)
    metadata.create_all(engine)
    rows = [customer(i, **overrides) for i in ids]
    with engine.begin() as conn:
        if rows:
            conn.execute(customers.insert(), rows)
    engine.dispose()


catalog = Table(
    "catalog",
    MetaData(),
    Column("sku", String(40), primary_key=True),
    Column("title", String(200)),
    Column("price", Numeric(10, 2)),
    Column("sale_price", Numeric(10, 2), nullable=True),
    Column("in_stock", Boolean),
    Column("url", String(300)),
    Column("image", String(300)),
    Column("cost", Numeric(10, 2)),  # not mapped: never sent
    Column("deleted_at", DateTime, nullable=True),
    Column("updated_at", DateTime),
)
PRODUCT_MAPPING = {
    "title": "title",
    "price": "price",
    "sale_price": "sale_price",
    "in_stock": "is_in_stock",
    "url": "guide_url",
    "image": "image_big_url",
}


def product(i: int, **overrides: Any) -> dict[str, Any]:
    """Product ``i`` of the catalog: every 10 share one updated_at (ties on the cursor)."""
    row = {
        "sku": f"sku-{i:05d}",
        "title": f"Product {i}",
        "price": Decimal(f"{i % 500}.{i % 100:02d}"),
        "sale_price": Decimal(f"{i % 400}.99") if i % 4 == 0 else None,
        "in_stock": i % 3 != 0,
        "url": f"https://shop.example/p/{i}",
        "image": f"https://cdn.shop.example/p/{i}.jpg",
        "cost": Decimal("1.10"),
        "deleted_at": None,
        "updated_at": BASE_TIME + timedelta(seconds=i // 10),
    }
    row.update(overrides)
    return row


def make_products(url: str, ids: Iterable[int], **overrides: Any) -> None:
    engine = writer(url)
    catalog.metadata.create_all(engine)
    rows = [product(i, **overrides) for i in ids]
    with engine.begin() as conn:
        if rows:
            conn.execute(catalog.insert(), rows)
    engine.dispose()


def expected_product(row: Mapping[str, Any]) -> dict[str, Any]:
    """What Personyze must hold for a catalog row, computed without the mapper."""
    want: dict[str, Any] = {
        "internal_id": row["sku"],
        "title": row["title"],
        "price": float(row["price"]) if row["price"] % 1 else int(row["price"]),
        "is_in_stock": "yes" if row["in_stock"] else "no",
        "guide_url": row["url"],
        "image_big_url": row["image"],
    }
    if row["sale_price"] is not None:
        want["sale_price"] = float(row["sale_price"])
    return want


def catalog_rows(url: str) -> dict[str, dict[str, Any]]:
    engine = source_engine(url)
    with engine.connect() as conn:
        rows = {r["sku"]: dict(r) for r in conn.execute(catalog.select()).mappings()}
    engine.dispose()
    return rows


def assert_catalog_in_sandbox(url: str, sandbox: SandboxServer) -> None:
    """Every source product not deleted is in the sandbox once, with its latest values,
    and no other product; the unmapped column never is."""
    held = sandbox.products()
    doubled = [k for k, n in Counter(p["internal_id"] for p in held).items() if n > 1]
    assert doubled == [], f"products held twice: {doubled[:10]}"
    by_id = {p["internal_id"]: p for p in held}
    rows = {k: r for k, r in catalog_rows(url).items() if r["deleted_at"] is None}
    lost = sorted(set(rows) - set(by_id))
    assert lost == [], f"{len(lost)} product(s) lost, e.g. {lost[:10]}"
    unknown = sorted(set(by_id) - set(rows))
    assert unknown == [], f"products that are not in the source: {unknown[:10]}"
    wrong = []
    for key, row in rows.items():
        want = expected_product(row)
        have = {c: by_id[key][c] for c in want if c in by_id[key]}
        if have != want:
            wrong.append((key, want, have))
    assert wrong == [], f"{len(wrong)} product(s) hold wrong values, e.g. {wrong[:3]}"
    assert not any("cost" in p for p in held)  # not mapped: never sent


def change_customers(url: str, where: Any, **values: Any) -> None:
    engine = writer(url)
    with engine.begin() as conn:
        conn.execute(update(customers).where(where).values(**values))
    engine.dispose()


def execute(url: str, *statements: Any) -> None:
    engine = writer(url)
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


def three_shard_config(
    tmp_path: Path, source_url: str, state_url: str, sandbox: SandboxServer, rows: int, **job: Any
) -> Path:
    """``customers`` 1..``rows`` in a job of three shards (batches of 50, concurrency 4)."""
    make_customers(source_url, range(1, rows + 1))
    doc = config_doc(
        source_url=with_password(source_url),
        api_url=sandbox.url,
        state_url=with_password(state_url),
        source={"batch_size": 50},
        personyze={"concurrency": 4},
        job={"shards": 3, **job},
    )
    return write_config(tmp_path / "sync.yaml", doc)


def load(path: Path) -> Config:
    return load_config(path, {"TEST_API_KEY": API_KEY})


def config_file(
    tmp_path: Path,
    source_url: str,
    api_url: str,
    *,
    mapping: Mapping[str, str] | None = None,
    **parts: Any,
) -> str:
    """``tmp_path/sync.yaml``, its SQLite state store in ``tmp_path/state`` (where
    ``state_bytes`` reads it, and the ``state_url`` fixture points); ``parts`` as
    config_doc takes them."""
    doc = config_doc(
        source_url=source_url,
        api_url=api_url,
        state_url=f"sqlite:///{tmp_path}/state/state.db",
        job={"mapping": dict(mapping or DEFAULT_MAPPING)},
        **parts,
    )
    return str(write_config(tmp_path / "sync.yaml", doc))


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


class SocketServer:
    """A TCP server on loopback, in a with-block: each accepted connection is handed to
    ``_talk`` in a thread of its own (subclasses say what to talk).

    ``connections`` counts the accepted connections, ``ended`` those whose ``_talk``
    returned (so a test can wait for the server to have hung up). With ``tls``, a
    subclass wraps each connection itself.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = 0
        self.ended = 0
        self._ended_lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self._talk(conn)
        finally:
            with self._ended_lock:
                self.ended += 1

    def _talk(self, conn: socket.socket) -> None:
        raise NotImplementedError


class SilentServer(SocketServer):
    """A socket server that accepts every connection and never says a word.

    A database behind a dead proxy, or one frozen mid-start, looks like this: the
    connection is made, and the handshake's first answer never comes. The connections
    are held open until the with-block ends, then closed (which frees a client still
    waiting on one).
    """

    def __init__(self) -> None:
        super().__init__()
        self.accepted: list[socket.socket] = []

    def _accepted(self, conn: socket.socket) -> None:
        self.accepted.append(conn)  # held, silent: no thread talks on it

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        for conn in self.accepted:
            conn.close()


def free_port() -> int:
    """A loopback port nothing listens on (free when asked: a test binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- waiting, and time the test moves ----------------------------------------------------


def wait_until(condition: Callable[[], T], timeout: float = 20.0, what: str = "") -> T:
    """Look at ``condition`` until it is true, and return what it said; fail after ``timeout`` s.

    How a test waits for something to happen, instead of sleeping a fixed time. It
    looks every 5 ms at first, then less often, up to every 50 ms. ``condition`` may
    assert (that a process is still running, say): the failure comes at once.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class FakeClock:
    """Time that moves only when the test moves it: for ``clock=`` and ``sleep=`` alike.

    Calling it reads the time; ``advance`` (or setting ``now``) moves it; ``sleep``
    records how long was asked for and, unless ``advance_on_sleep=False``, moves the
    time by as much.
    """

    def __init__(self, now: float = 1000.0, *, advance_on_sleep: bool = True) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self._advance = advance_on_sleep

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self._advance:
            self.now += seconds


# -- the command line, in a test ------------------------------------------------------

WRONG_KEY = "wrong-key-7d1e0b"
DB_PASSWORD = "Hunter2pw77"  # PostgreSQL here trusts loopback: any password connects
SECRETS = (API_KEY, WRONG_KEY, DB_PASSWORD)


def script() -> str:
    """The installed ``personyze-sync`` console script: beside this Python, or on PATH."""
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
    jobs: list[dict[str, Any]] = result.json()
    (job,) = jobs
    return job


# -- the daemon, as a real process ----------------------------------------------------------


class Daemon:
    """A ``personyze-sync run`` subprocess and its HTTP endpoints, up once it is healthy."""

    def __init__(self, config: Path, log: Path) -> None:
        self.port = free_port()
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [script(), "run", "-c", str(config), "--http-port", str(self.port),
             "--log-format", "json"],
            env={**os.environ, "TEST_API_KEY": API_KEY},
            stdout=self._log,
            stderr=self._log,
        )  # fmt: skip
        wait_until(self.alive, what="the health endpoint")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def alive(self) -> bool:
        try:
            return self.get("/healthz").status_code == 200
        except httpx.TransportError:
            assert self.process.poll() is None, self.logs()
            return False

    def metric(self, name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} " if labels else f"{name} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


# -- the database servers, and what the state store holds ------------------------------------

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
MARIADB_SERVER = "mysql+pymysql://root@127.0.0.1:3306"
PG_PASSWORD = "Pg-S3cret.word99"
MARIADB_PASSWORD = "Ma/ri@db:S3%cret!"  # characters a URL's user-info must percent-encode


def with_password(url: str) -> str:
    """A PostgreSQL URL of the tests' server with ``DB_PASSWORD`` in it."""
    return url.replace("postgres@", f"postgres:{DB_PASSWORD}@")


def psync_runs(url: str) -> list[dict[str, Any]]:
    """The run history a state store holds (``psync_runs``), one dict a run."""
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT job, holder, started_at, ended_at, outcome, rows_sent FROM psync_runs")
        )
        rows = [dict(r._mapping) for r in found]
    engine.dispose()
    return rows


def assert_one_user_per_row(sandbox: SandboxServer, rows: int) -> None:
    """Rows 1..``rows`` are in the sandbox, each as exactly one user."""
    users = users_by_internal_id(sandbox.users())
    assert sorted(users, key=int) == [str(i) for i in range(1, rows + 1)]
    doubled = [k for k, found in users.items() if len(found) != 1]
    assert not doubled, f"rows that became several users: {doubled[:10]}"


# -- secrets, in every form they may be written -----------------------------------------------

KEYS_AND_PASSWORDS = (API_KEY, WRONG_KEY, PG_PASSWORD, MARIADB_PASSWORD)


def forms(secret: str) -> set[str]:
    """A secret as it may be written: raw, percent-encoded (either hex case, + for a space)
    and base64."""
    encoded = quote(secret, safe="")
    b64 = base64.b64encode(secret.encode()).decode()
    return {secret, encoded, encoded.lower(), quote_plus(secret), b64}


def assert_no_secret(
    text: str | bytes, where: str, secrets: Iterable[str] = KEYS_AND_PASSWORDS
) -> None:
    for secret in secrets:
        for form in forms(secret):
            held = form.encode() in text if isinstance(text, bytes) else form in text
            assert not held, f"{where} holds a secret ({form!r}):\n{text!r}"


def state_bytes(tmp_path: Path) -> bytes:
    """The SQLite state store's files, write-ahead log included, and every row of it."""
    files = sorted((tmp_path / "state").glob("state.db*"))
    assert files
    raw = b"".join(f.read_bytes() for f in files)
    conn = sqlite3.connect(tmp_path / "state" / "state.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert "psync_rejected" in tables and "psync_runs" in tables
        rows = [repr(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables]
    finally:
        conn.close()
    return raw + "\n".join(rows).encode()


# -- clients of the sandbox ------------------------------------------------------------------


def sandbox_client(sandbox: SandboxServer, timeout: float = 5) -> httpx.Client:
    """An httpx client of the sandbox, with its key."""
    return httpx.Client(base_url=sandbox.url, auth=("api", sandbox.api_key), timeout=timeout)


def make_client(
    sandbox: SandboxServer, sleep: Callable[[float], None] = lambda _: None, **overrides: Any
) -> PersonyzeClient:
    """The sync's own client of the sandbox; ``sleep`` receives the waits between attempts."""
    values: dict[str, Any] = {
        "api_key": API_KEY, "base_url": sandbox.url, "requests_per_second": None,
        "timeout_s": 5, "max_attempts": 4, "concurrency": 8,
        "backoff_initial_s": 0.01, "backoff_max_s": 0.05,  # the pool's parked retries wait
    }  # fmt: skip
    values.update(overrides)
    return PersonyzeClient(PersonyzeSettings(**values), sleep=sleep)


def terminate_lease(pg_url: str, part: str) -> None:
    """pg_terminate_backend on the connection holding ``part``'s advisory lock."""
    hi, lo = key_halves(lease_key(part))
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND granted AND classid::bigint = :hi AND objid::bigint = :lo AND database"
                    " = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"hi": hi, "lo": lo},
            ).scalars()
            assert list(killed) == [True], f"no lease of {part} held"
    finally:
        engine.dispose()
