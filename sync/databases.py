"""Database URLs, engines and reconnection, for the sources and the state store alike.

Plain ``postgresql://`` and ``mysql://`` URLs are given the drivers this package
installs (psycopg 3, PyMySQL), and every failure to parse a URL or load a driver
becomes a :class:`ConfigError` that shows the URL with its password hidden. A
database that restarts in the middle of a run is waited for (:class:`Reconnecting`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from sync.config import redact_url
from sync.errors import ConfigError

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
        raise ConfigError(f"{key}: not a database URL ({redact_url(url)})") from None
    if parsed.drivername in DRIVERS:
        parsed = parsed.set(drivername=DRIVERS[parsed.drivername])
    return parsed


def engine_for(url: URL, key: str, **options: Any) -> Engine:
    """An engine, or a ConfigError naming the driver that is missing."""
    try:
        return create_engine(url, **options)
    except ModuleNotFoundError as exc:
        hint = (
            " (for MySQL/MariaDB: pip install 'personyze-sync[mysql]')"
            if url.get_backend_name() in ("mysql", "mariadb")
            else ""
        )
        raise ConfigError(
            f"{key} {redact_url(url.render_as_string(hide_password=False))}: "
            f"the database driver {exc.name!r} is not installed{hint}"
        ) from None
    except ArgumentError:
        raise ConfigError(
            f"{key} {redact_url(url.render_as_string(hide_password=False))}: "
            f"the database driver {url.drivername!r} is not available"
        ) from None


def source_engine(url: str) -> Engine:
    """An engine for a source database (connections checked before each use).

    SQLite text that is not UTF-8 is read with its bad bytes kept as surrogates, so
    the mapper rejects that one row (naming the column) instead of the whole batch
    failing to decode.
    """
    parsed = database_url(url, "source.url")
    engine = engine_for(parsed, "source.url", pool_pre_ping=True)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _lenient_text(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")

    return engine


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
