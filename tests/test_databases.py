"""Database engines: a connect timeout by default, and errors that say where they tried.

A server that accepts the connection and never answers (a dead proxy, a database frozen
mid-start) used to hold a run for the driver's own wait: 130 s for psycopg, and for
ever in PyMySQL's handshake. Here a real socket server plays it, on loopback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from sync import databases
from sync.config import SourceSettings
from sync.databases import source_engine
from sync.errors import SourceError, StateError
from sync.extract.reader import SourceReader
from sync.state.store import StateStore, state_engine
from tests.support import SilentServer

PASSWORD = "Sil3nt-pw-9q"
# A bound on a hang, not a speed test: a 1 s timeout (psycopg waits at least 2 s) must
# end the attempt far inside the drivers' own waits.
BOUND = 15.0
SCHEMES = ["postgresql", "mysql+pymysql"]


def silent_url(scheme: str, port: int, query: str = "") -> str:
    return f"{scheme}://reader:{PASSWORD}@127.0.0.1:{port}/shop{query}"


def failure_within(work: Callable[[], object], bound: float = BOUND) -> BaseException:
    """What ``work`` raised, which it must do within ``bound`` seconds."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still connecting after {time.monotonic() - started:.0f} s"
    (error,) = outcome
    assert error is not None, "connected to a server that never answers"
    return error


def assert_names_where_not_who(error: BaseException, port: int) -> None:
    message = str(error)
    assert f"127.0.0.1:{port}/shop" in message, message
    assert PASSWORD not in message, message
    assert "reader" not in message, message  # the URL's user-info, not only its password
    assert "timeout" in message.lower() or "timed out" in message.lower(), message


def source_settings(url: str) -> SourceSettings:
    return SourceSettings.model_validate(
        {"url": url, "table": "customers", "cursor": "updated_at", "key": "id"}
    )


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_silent_source_fails_within_the_default_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    monkeypatch.setattr(databases, "CONNECT_TIMEOUT_S", 1)
    with SilentServer() as server:
        url = silent_url(scheme, server.port)
        engine = source_engine(url)
        try:
            error = failure_within(lambda: SourceReader(engine, source_settings(url), ("email",)))
        finally:
            engine.dispose()
        assert server.accepted, "the driver never reached the server"
    assert isinstance(error, SourceError), repr(error)
    assert_names_where_not_who(error, server.port)


def test_a_silent_state_store_fails_within_the_default_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(databases, "CONNECT_TIMEOUT_S", 1)
    with SilentServer() as server:
        store = StateStore(state_engine(silent_url("postgresql", server.port)), time.time)
        try:
            error = failure_within(lambda: store.part("customers").checkpoint())
        finally:
            store.close()
    assert isinstance(error, StateError), repr(error)
    assert_names_where_not_who(error, server.port)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_urls_own_connect_timeout_wins(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    monkeypatch.setattr(databases, "CONNECT_TIMEOUT_S", 600)  # past the bound: never waited for
    with SilentServer() as server:
        url = silent_url(scheme, server.port, "?connect_timeout=1")
        engine = source_engine(url)
        try:
            error = failure_within(lambda: SourceReader(engine, source_settings(url), ("email",)))
        finally:
            engine.dispose()
    assert isinstance(error, SourceError), repr(error)
    assert_names_where_not_who(error, server.port)


class Seen(Exception):
    """Stops a connection attempt once its arguments are seen."""


def what_the_driver_is_given(monkeypatch: pytest.MonkeyPatch, url: str) -> dict[str, Any]:
    """The keyword arguments the engine for ``url`` passes to the driver's ``connect``."""
    engine = source_engine(url)
    seen: dict[str, Any] = {}

    def connect(*_args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise Seen

    monkeypatch.setattr(engine.dialect.loaded_dbapi, "connect", connect)
    try:
        with pytest.raises(Seen):
            engine.connect()
    finally:
        engine.dispose()
    return seen


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@127.0.0.1:1/db", 10),
        ("postgresql://u:pw@127.0.0.1:1/db?connect_timeout=3", "3"),
        ("mysql://u:pw@127.0.0.1:1/db", 10),
        ("mysql+pymysql://u:pw@127.0.0.1:1/db?connect_timeout=3", 3),
        ("mariadb://u:pw@127.0.0.1:1/db", 10),
    ],
)
def test_the_default_connect_timeout_unless_the_url_sets_one(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: Any
) -> None:
    assert databases.CONNECT_TIMEOUT_S == 10  # as README.md says
    given = what_the_driver_is_given(monkeypatch, url)
    assert given["connect_timeout"] == expected
    if url.startswith(("mysql", "mariadb")):  # PyMySQL's handshake is a read: the same bound
        assert given["read_timeout"] == expected


def test_pgconnect_timeout_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq's own setting is the user's choice too: psycopg reads it when not overridden."""
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    given = what_the_driver_is_given(monkeypatch, "postgresql://u:pw@127.0.0.1:1/db")
    assert "connect_timeout" not in given


def test_sqlite_keeps_its_own_timeout(tmp_path: Any) -> None:
    """SQLite's ``timeout`` is a wait for a lock, not for a server; no connect timeout."""
    engine = source_engine(f"sqlite:///{tmp_path / 'source.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.mariadb
def test_a_slow_query_is_not_cut_short_by_the_handshake_timeout(mariadb_url: str) -> None:
    """PyMySQL's handshake is bounded by reading with a timeout; queries then are not."""
    engine = source_engine(mariadb_url + "?connect_timeout=1")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT SLEEP(2)")).scalar() == 0
    finally:
        engine.dispose()
