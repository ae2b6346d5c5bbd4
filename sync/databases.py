"""Database URLs and engines, for the sources and the state store alike.

Plain ``postgresql://`` and ``mysql://`` URLs are given the drivers this package
installs (psycopg 3, PyMySQL), and every failure to parse a URL or load a driver
becomes a :class:`ConfigError` that shows the URL with its password hidden.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from sync.config import redact_url
from sync.errors import ConfigError

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
    """An engine for a source database (connections checked before each use)."""
    return engine_for(database_url(url, "source.url"), "source.url", pool_pre_ping=True)
