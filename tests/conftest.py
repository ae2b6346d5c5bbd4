"""Fixtures for real databases and the sandbox.

PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306) must be running: a test
that needs one fails, loudly, when it is missing (``.ci/run`` starts them). Each
test gets its own fresh database.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from sync.cli import main
from sync.sandbox import SandboxServer
from tests.support import (
    API_KEY,
    MARIADB_PASSWORD,
    MARIADB_SERVER,
    PG_PASSWORD,
    PG_SERVER,
    SOURCE_FIXTURES,
    Daemon,
    Outcome,
    config_file,
    copy_to_duckdb,
    execute,
    make_customers,
    no_secrets,
)

ROOT = Path(__file__).resolve().parents[1]
SAKILA = ROOT.parent / "shared" / "datasets" / "sakila" / "sakila.sql"


def _admin(server: str, database: str, what: str):  # type: ignore[no-untyped-def]
    engine = create_engine(f"{server}/{database}", isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        engine.connect().close()
    except OperationalError as exc:
        pytest.fail(
            f"{what} is not reachable at {server}: {exc.orig}. "
            "Start it (see .ci/run); these tests never skip.",
            pytrace=False,
        )
    return engine


@pytest.fixture
def pg_url() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = _admin(PG_SERVER, "test", "PostgreSQL")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{PG_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = _admin(MARIADB_SERVER, "test", "MariaDB")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}`"))
    yield f"{MARIADB_SERVER}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture
def pg_reader(pg_url: str) -> Iterator[str]:
    """customers 1..10 in PostgreSQL, and the URL of a role that may only SELECT them."""
    make_customers(pg_url, range(1, 11))
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{PG_PASSWORD}'"))
    execute(pg_url, text(f'GRANT SELECT ON customers TO "{role}"'))
    yield pg_url.replace("postgres@", f"{role}:{quote(PG_PASSWORD, safe='')}@")
    execute(pg_url, text(f'DROP OWNED BY "{role}"'))
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
            {"r": role},
        )
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


@pytest.fixture
def mariadb_reader(mariadb_url: str) -> Iterator[str]:
    """customers 1..10 in MariaDB, and the URL of a user with a password and SELECT only."""
    make_customers(mariadb_url, range(1, 11))
    user = f"u_{uuid.uuid4().hex[:10]}"
    database = mariadb_url.rsplit("/", 1)[1]
    admin = create_engine(f"{MARIADB_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for host in ("%", "localhost"):
            conn.execute(
                text(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY :pw"), {"pw": MARIADB_PASSWORD}
            )
            conn.execute(text(f"GRANT SELECT ON `{database}`.customers TO '{user}'@'{host}'"))
    yield f"mysql+pymysql://{user}:{quote(MARIADB_PASSWORD, safe='')}@127.0.0.1:3306/{database}"
    with admin.connect() as conn:
        for host in ("%", "localhost"):
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'{host}'"))
    admin.dispose()


@pytest.fixture
def pg_role(pg_url: str) -> Iterator[tuple[str, str]]:
    """A login role of the test database's cluster, granted nothing, and that database's URL
    (its owner's: grant with it)."""
    role = f"r_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    yield role, pg_url
    owner = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
    owner.dispose()
    with admin.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role"),
            {"role": role},
        )
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


@pytest.fixture
def mariadb_user(mariadb_url: str) -> Iterator[tuple[str, str]]:
    """A MariaDB user (no password) granted nothing, and the URL it connects with."""
    user = f"u_{uuid.uuid4().hex[:10]}"
    database = mariadb_url.rsplit("/", 1)[1]
    admin = create_engine(f"{MARIADB_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for host in ("%", "localhost"):
            conn.execute(text(f"CREATE USER '{user}'@'{host}'"))
    yield user, f"mysql+pymysql://{user}@127.0.0.1:3306/{database}"
    with admin.connect() as conn:
        for host in ("%", "localhost"):
            conn.execute(text(f"DROP USER IF EXISTS '{user}'@'{host}'"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/source.db"


@pytest.fixture
def duckdb_url(tmp_path: Path) -> str:
    return f"duckdb:///{tmp_path}/source.duckdb"


@pytest.fixture(params=list(SOURCE_FIXTURES))
def source_url(request: pytest.FixtureRequest) -> str:
    """The same test on each source database."""
    return str(request.getfixturevalue(SOURCE_FIXTURES[request.param]))


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/state/state.db"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(API_KEY) as server:
        yield server


@pytest.fixture
def wiki_sandbox() -> Iterator[SandboxServer]:
    """The sandbox as the wiki says the service behaves (internal_id and fb_id merge)."""
    with SandboxServer(API_KEY, internal_id_merges=True) as server:
        yield server


@pytest.fixture(params=["live", "wiki"])
def any_sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    """The sandbox as the live service behaves, and as the wiki says it does."""
    with SandboxServer(API_KEY, internal_id_merges=request.param == "wiki") as server:
        yield server


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Append each ``Daemon`` started: whatever is still running at the end is killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.fixture
def sakila_url(mariadb_url: str) -> str:
    """The Sakila dump loaded into a fresh MariaDB database."""
    import subprocess

    name = mariadb_url.rsplit("/", 1)[1]
    dump = SAKILA.read_text(encoding="utf-8")
    dump = dump.replace("CREATE SCHEMA IF NOT EXISTS sakila;", "").replace(
        "use sakila;", f"use `{name}`;"
    )
    subprocess.run(
        ["mariadb", "-h127.0.0.1", "-uroot", "--protocol=tcp"],
        input=dump,
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return mariadb_url


# Sakila's tables the tests read, copied to DuckDB (without address's GEOMETRY column).
SAKILA_COPIED = {
    "customer": "*",
    "address": "address_id, address, district, city_id, postal_code, phone, last_update",
    "city": "*",
    "country": "*",
}


@pytest.fixture(params=["mariadb", "duckdb"])
def sakila_source(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Sakila in MariaDB, and the same tables copied into a DuckDB file (through CSV,
    as many teams load an export: DuckDB infers the types)."""
    url = str(request.getfixturevalue("sakila_url"))
    if request.param == "mariadb":
        return url
    target = str(request.getfixturevalue("duckdb_url"))
    copy_to_duckdb(url, target, SAKILA_COPIED, tmp_path)
    return target


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Outcome]:
    """Run ``personyze-sync ARGS`` in-process; ``key=None`` leaves TEST_API_KEY unset."""

    def run(*args: str, key: str | None = API_KEY) -> Outcome:
        if key is None:
            monkeypatch.delenv("TEST_API_KEY", raising=False)
        else:
            monkeypatch.setenv("TEST_API_KEY", key)
        monkeypatch.setattr(sys, "argv", ["personyze-sync", *args])
        capsys.readouterr()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            with pytest.raises(SystemExit) as exited:
                main()
        finally:  # the command's log handler writes to this run's captured stderr only
            root.handlers[:], root.level = handlers, level
        out, err = capsys.readouterr()
        code = exited.value.code
        return no_secrets(Outcome(code if isinstance(code, int) else 1, out, err))

    return run


@pytest.fixture
def setup(tmp_path: Path, sqlite_url: str, sandbox: SandboxServer) -> Callable[..., str]:
    """Write a config (SQLite source of customers 1..10 unless told; the state store at
    ``state_url``) and return its path."""
    made: list[str] = []

    def write(
        *,
        rows: range | None = range(1, 11),
        source_url: str | None = None,
        mapping: dict[str, str] | None = None,
        **overrides: Any,
    ) -> str:
        if rows is not None and not made:
            make_customers(sqlite_url, rows)
            made.append(sqlite_url)
        return config_file(
            tmp_path, source_url or sqlite_url, sandbox.url, mapping=mapping, **overrides
        )

    return write
