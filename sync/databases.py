"""Database URLs, engines and reconnection, for the sources and the state store alike.

Plain ``postgresql://`` and ``mysql://`` URLs are given the drivers this package
installs (psycopg 3, PyMySQL), and every failure to parse a URL or load a driver
becomes a :class:`ConfigError`. Errors name a database by :func:`shown`: its host,
port and database, never its user or password. Every server connection gives up after
:data:`CONNECT_TIMEOUT_S` unless its URL says otherwise. A database that restarts in
the middle of a run is waited for (:class:`Reconnecting`). A source's failures become
our errors here (:func:`source_error`): a missing privilege is named as one, with its GRANT.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import NullPool
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from sync.errors import ConfigError, MissingPrivilege, SourceError
from sync.shard_hash import register_sqlite

log = logging.getLogger(__name__)
T = TypeVar("T")

DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def database_url(url: str, key: str) -> URL:
    """``url`` parsed, with an installed driver; ``key`` names it in errors (``state.url``)."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - any parse failure is a config error
        # ``from None``: the parser's own message repeats the URL, password and all.
        raise ConfigError(f"{key}: not a database URL ({shown(url)})") from None
    if parsed.drivername in DRIVERS:
        parsed = parsed.set(drivername=DRIVERS[parsed.drivername])
    return parsed


# Seconds to wait for a database server to accept a connection and finish its
# handshake. The drivers' own waits are far longer (psycopg: 130 s; PyMySQL: none at all
# for the handshake), and a server that accepts the connection and never answers (a dead
# proxy, a database frozen mid-start) would hold a run, or ``validate --connect``, that
# long. A URL's own ``?connect_timeout=N`` (or, for PostgreSQL, PGCONNECT_TIMEOUT) wins.
CONNECT_TIMEOUT_S = 10

_LIBPQ_DRIVERS = ("psycopg", "psycopg2", "psycopg2cffi")
_WHERE_PARAMETERS = ("host", "hostaddr", "port", "unix_socket")


def shown(url: str | URL) -> str:
    """A database as errors name it: driver, host, port and database, nothing else.

    The user-info goes (not only the password: some services put a token in the user
    name), and so does the query, which may carry ``?password=``, except the parameters
    that say where the server is (``?host=/run/postgresql``).
    """
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - any parse failure; never show the text itself
        return "<unparseable url>"
    where = {k: v for k, v in parsed.query.items() if k in _WHERE_PARAMETERS}
    return URL.create(
        parsed.drivername,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=where,
    ).render_as_string()


def _connect_timeout(url: URL, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the default connect timeout added, unless the URL sets its own."""
    if "connect_timeout" in url.query or "connect_timeout" in options.get("connect_args", {}):
        return options
    driver = url.get_driver_name()
    libpq = url.get_backend_name() == "postgresql" and driver in _LIBPQ_DRIVERS
    if not (libpq or driver == "pymysql"):
        return options  # SQLite's ``timeout`` waits for a lock, not a server: kept as it is
    if libpq and "PGCONNECT_TIMEOUT" in os.environ:
        return options  # libpq's own setting, which the driver reads
    connect_args = {**options.get("connect_args", {}), "connect_timeout": CONNECT_TIMEOUT_S}
    return {**options, "connect_args": connect_args}


def _pymysql_handshake_timeout(engine: Engine) -> None:
    """PyMySQL's ``connect_timeout`` covers only the TCP connect: its handshake (the
    server's greeting, the login) waits for ever, as long as ``read_timeout``. The
    handshake is given the connect timeout as its read timeout, then the connection's
    read timeout is put back (None unless the URL set one): a long query is not cut.
    """

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        timeout = cparams.get("connect_timeout")
        if not timeout or cparams.get("read_timeout") is not None:
            return None  # the default connect, with the URL's own read timeout
        connection = dialect.loaded_dbapi.connect(*cargs, **{**cparams, "read_timeout": timeout})
        connection._read_timeout = None  # no public setter; PyMySQL applies it at each read
        return connection


def engine_for(url: URL, key: str, **options: Any) -> Engine:
    """An engine with a connect timeout, or a ConfigError naming the driver that is missing."""
    try:
        engine = create_engine(url, **_connect_timeout(url, options))
        if url.get_driver_name() == "pymysql":
            _pymysql_handshake_timeout(engine)
        return engine
    except ModuleNotFoundError as exc:
        hint = (
            " (for MySQL/MariaDB: pip install 'personyze-sync[mysql]')"
            if url.get_backend_name() in ("mysql", "mariadb")
            else ""
        )
        raise ConfigError(
            f"{key} {shown(url)}: the database driver {exc.name!r} is not installed{hint}"
        ) from None
    except ArgumentError:
        raise ConfigError(
            f"{key} {shown(url)}: the database driver {url.drivername!r} is not available"
        ) from None


def source_engine(url: str) -> Engine:
    """An engine for a source database (connections checked before each use).

    SQLite text that is not UTF-8 is read with its bad bytes kept as surrogates, so
    the mapper rejects that one row (naming the column) instead of the whole batch
    failing to decode. SQLite is given the hash that shards a text key
    (:mod:`sync.shard_hash`), which the other databases compute with their own MD5.
    """
    parsed = database_url(url, "source.url")
    if parsed.get_backend_name() == "duckdb":
        return duckdb_source_engine(parsed)
    engine = engine_for(parsed, "source.url", pool_pre_ping=True)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _connected(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
            register_sqlite(dbapi_conn)

    return engine


def duckdb_source_engine(url: URL) -> Engine:
    """An engine that opens a DuckDB file read-only, and only while it reads.

    A DuckDB file has one writing process or any number of reading ones: a sync that
    kept it open between runs would lock out the dbt run (or the script) that writes
    it. So no connection is pooled (opening one costs about 25 ms, once a batch). A
    writer's lock met in the middle of a run is waited for as a restart is
    (:func:`is_transient`); met at the start, the run fails and the next one tries again.
    """
    connect_args = {"read_only": True} if url.database not in (None, "", ":memory:") else {}
    return engine_for(url, "source.url", poolclass=NullPool, connect_args=connect_args)


TRANSIENT_WORDS = (
    "connection",
    "server closed",
    "terminating",
    "shutting down",
    "starting up",
    "gone away",
    "lost",
    "database is locked",
    "timeout",
    "timed out",
    "reset by peer",
    "could not set lock",  # DuckDB: a writing process holds the file
)


def is_transient(exc: BaseException) -> bool:
    """A failure a database restart or a lock explains, which a short wait may heal."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError | InterfaceError):
        message = str(exc.orig if isinstance(exc, DBAPIError) else exc).lower()
        return any(word in message for word in TRANSIENT_WORDS)
    return False


class Reconnecting:
    """Retries work on a database that answered before and is briefly gone.

    A database that never answered is a setup error and fails at once; one that
    answered and then went away (a restart, a failover, a lock) is waited for, about
    15 s in all, before the error is let through.
    """

    def __init__(self, what: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self._what = what
        self._sleep = sleep
        self._answered = False

    def answered(self) -> None:
        """The database has answered once: from now on, losing it is worth a wait."""
        self._answered = True

    def __call__(self, work: Callable[[], T]) -> T:
        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "database connection lost; retrying",
                extra={
                    "database": self._what,
                    "attempt": state.attempt_number,
                    "error": str(getattr(error, "orig", error)).strip().splitlines()[0],
                },
            )

        retrying = Retrying(
            stop=stop_after_attempt(6),
            wait=wait_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception(lambda exc: self._answered and is_transient(exc)),
            before_sleep=note,
            sleep=self._sleep,
            reraise=True,
        )
        result = retrying(work)
        self._answered = True
        return result


# -- a source's failures, as the reader and the checks report them ---------------------

PG_INSUFFICIENT_PRIVILEGE = "42501"
# MySQL/MariaDB: 1044 no access to the database, 1142 to a table, 1143 to a column.
MYSQL_PRIVILEGE_ERRORS = (1044, 1142, 1143)
_PG_DENIED = re.compile(r'permission denied for (table|view|materialized view|schema|database)'
                        r' "?([^"\s]+)"?')  # fmt: skip
_MYSQL_TABLE = re.compile(r"for table [`']?(?:([^`'.]+)[`']?\.[`']?)?([^`']+)[`']?")
_MYSQL_DATABASE = re.compile(r"to database [`']([^`']+)[`']")
_MYSQL_USER = re.compile(r" (?:to|for) user '[^']*'@'[^']*'")  # the user is never shown
_PG_GRANTS = {"schema": "USAGE ON SCHEMA {}", "database": "CONNECT ON DATABASE {}"}


def source_error(
    exc: SQLAlchemyError, url: str, doing: str, *, table: str | None = None
) -> SourceError:
    """A failure of the source at ``url`` as our error, translated once, where it enters.

    A missing privilege (PostgreSQL 42501; MySQL 1044, 1142, 1143) is named as one,
    with the GRANT the README's "A read-only database user" shows, for ``table`` (the
    job's) or the object the database names. Anything else: the database's own first line.
    """
    orig = getattr(exc, "orig", None) or exc
    args = orig.args
    said = args[1] if len(args) == 2 and isinstance(args[0], int) else orig  # PyMySQL: (code, text)
    detail = _MYSQL_USER.sub("", (str(said).strip() or type(orig).__name__).splitlines()[0])
    where = shown(url)
    missing = _privilege(orig, url, table)
    if missing is None:
        return SourceError(f"source database {where}: error while {doing}: {detail}")
    thing, grant = missing
    return MissingPrivilege(
        f"missing privilege: the database user may not read {thing} at {where} ({detail}); "
        f"grant it, <user> being the user of source.url: {grant}",
        grant,
    )


def _privilege(orig: BaseException, url: str, table: str | None) -> tuple[str, str] | None:
    """What the user may not read and the GRANT that lets it; None: not a privilege error."""
    message = str(orig)
    parsed = make_url(url)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if parsed.get_backend_name() == "postgresql":
        denied = _PG_DENIED.search(message)
        if code != PG_INSUFFICIENT_PRIVILEGE and denied is None:
            return None
        kind, name = denied.groups() if denied else ("table", table or "<table>")
        if kind in _PG_GRANTS:
            return f"{kind} {name!r}", f"GRANT {_PG_GRANTS[kind].format(name)} TO <user>;"
        if table is not None and table.rpartition(".")[2] == name:
            name = table  # as the config names it, with its schema
        return f"{kind} {name!r}", f"GRANT SELECT ON {name} TO <user>;"
    number = orig.args[0] if orig.args and isinstance(orig.args[0], int) else None
    mysql = parsed.get_backend_name() in ("mysql", "mariadb")
    if not mysql or number not in MYSQL_PRIVILEGE_ERRORS:
        return None
    found = _MYSQL_TABLE.search(message)
    database = _MYSQL_DATABASE.search(message)
    schema = (found and found.group(1)) or (database and database.group(1)) or parsed.database
    name = table or (found.group(2) if found else "*")
    target = name if "." in name else f"{schema}.{name}"
    thing = f"database {schema!r}" if number == 1044 else f"table {target!r}"
    return thing, f"GRANT SELECT ON {target} TO '<user>'@'%';"
