"""What a database URL's scheme asks for, checked without connecting to anything.

A URL names a database (``postgresql``) and optionally a driver (``+psycopg``). Both
are looked up here when the config is read, as SQLAlchemy would look them up when an
engine is made: an unknown name (``sqlit:///``) is refused with the nearest known one,
and a driver that is not installed (PyMySQL for ``mysql://``) is named with the pip
command that installs it. Nothing is connected to; the driver's module is imported,
which is what would happen first on connecting anyway, so a driver that is installed
but cannot be loaded is found too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sync.config.yaml import suggest

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# The driver a plain scheme means here: the ones this package installs (psycopg 3; PyMySQL
# with the [mysql] extra), not SQLAlchemy's defaults (psycopg2, mysqlclient). The same
# table as sync.databases.DRIVERS, which the engines use (a test holds them equal).
DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}

# For "did you mean": the databases SQLAlchemy knows without a plugin, and their drivers.
_MYSQL_DRIVERS = ("pymysql", "mysqldb", "mysqlconnector", "mariadbconnector", "cymysql")
KNOWN_DRIVERS: dict[str, tuple[str, ...]] = {
    "sqlite": ("pysqlite", "pysqlcipher"),
    "postgresql": ("psycopg", "psycopg2", "psycopg2cffi", "pg8000"),
    "postgres": ("psycopg",),
    "mysql": _MYSQL_DRIVERS,
    "mariadb": _MYSQL_DRIVERS,
    "mssql": ("pyodbc", "pymssql"),
    "oracle": ("oracledb", "cx_oracle"),
}

# What to install, by the module a driver imports.
_MYSQL_EXTRA = "pip install 'personyze-sync[mysql]'"
DUCKDB_EXTRA = "pip install 'personyze-sync[duckdb]'"  # duckdb and its SQLAlchemy dialect
INSTALL = {
    "pymysql": ("PyMySQL", _MYSQL_EXTRA),
    "duckdb": ("duckdb", DUCKDB_EXTRA),
    "psycopg": ("psycopg", "pip install 'psycopg[binary]' (personyze-sync depends on it)"),
    "psycopg2": (
        "psycopg2",
        "write postgresql:// or postgresql+psycopg:// for psycopg 3, which personyze-sync "
        "installs (or pip install psycopg2-binary)",
    ),
    "MySQLdb": (
        "mysqlclient",
        f"write mysql:// or mysql+pymysql:// for PyMySQL ({_MYSQL_EXTRA}), "
        "or pip install mysqlclient",
    ),
}


def with_default_driver(url: URL) -> URL:
    """``url`` with the driver a plain ``postgresql://`` or ``mysql://`` means here."""
    if url.drivername in DEFAULT_DRIVERS:
        return url.set(drivername=DEFAULT_DRIVERS[url.drivername])
    return url


def driver_problem(url: URL) -> str | None:
    """Why no engine could be made for ``url`` on this machine, or None.

    The message never quotes the URL: only its scheme, which holds no secret.
    """
    from sqlalchemy.exc import NoSuchModuleError

    url = with_default_driver(url)
    try:
        dialect: Any = url.get_dialect()
    except NoSuchModuleError:
        return _unknown(url)
    except ImportError as exc:  # a dialect of a plugin whose own imports fail
        return _unloadable(url, exc, url.get_backend_name())
    if dialect.is_async:
        return (
            f"{url.drivername!r} is an asyncio driver; personyze-sync needs a synchronous one "
            "(postgresql+psycopg://, mysql+pymysql://, sqlite:///)"
        )
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return _unloadable(url, exc, dialect.driver)
    return None


def _unloadable(url: URL, exc: ImportError, module: str) -> str:
    """A driver that is not installed (ModuleNotFoundError), or one that fails to load."""
    module = exc.name or module
    package, hint = INSTALL.get(module, (module, f"pip install the package of {module!r}"))
    if isinstance(exc, ModuleNotFoundError) and exc.name is not None:
        return f"the database driver {package} ({url.drivername}) is not installed: {hint}"
    why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return f"the database driver {package} ({url.drivername}) cannot be loaded: {why}"


def _unknown(url: URL) -> str:
    backend, _, driver = url.drivername.partition("+")
    if backend == "duckdb" and not driver:  # a dialect of its own package, not SQLAlchemy's
        return f"DuckDB's SQLAlchemy dialect (duckdb-engine) is not installed: {DUCKDB_EXTRA}"
    if backend not in KNOWN_DRIVERS:
        examples = "sqlite:///, postgresql://, mysql://, mariadb:// or duckdb:///"
        return (
            f"unknown database {backend!r}{suggest(backend, [*KNOWN_DRIVERS, 'duckdb'])}; expected "
            f"{examples} (another database needs its SQLAlchemy dialect installed)"
        )
    known = KNOWN_DRIVERS[backend]
    return (
        f"unknown driver {driver!r} for {backend}{suggest(driver, known)}; "
        f"known: {', '.join(known)}"
    )
