"""Which shard a key is in, computed alike by PostgreSQL, MySQL/MariaDB, SQLite, DuckDB
and Python.

A numeric key is in shard ``abs(key) % N``, as it always was (state sharded before
text keys could be stays where it is). Any other key (text, a UUID) is hashed: the
first 32 bits of the MD5 of its text in UTF-8, an unsigned number, modulo N. The
text is the one the driver hands us and the state store keeps (``str(key)``): a
PostgreSQL UUID as lower case with dashes, a CHAR(n) with its padding.

The database computes it in the reader's queries (:class:`key_hash`), so that each
replica reads its part only; Python computes it for ``checkpoint reset --reshard``
(:func:`shard_of`), so that each state row moves to the shard that will read it.
SQLite has no MD5: :func:`register_sqlite` gives each source connection ours.

Whether a key is numeric is the reader's to say (the key column's type), once.
Pure: nothing here imports from sync.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

SQLITE_FUNCTION = "psync_key_hash"


def digest(data: bytes) -> int:
    """The hash of a key's bytes: the first 32 bits of their MD5, unsigned."""
    return int(hashlib.md5(data, usedforsecurity=False).hexdigest()[:8], 16)


def text_hash(key: str) -> int:
    """The hash of a text key, over its UTF-8 (a SQLite text that is not UTF-8 is read
    with its bytes kept as surrogates: they are hashed as the bytes they were)."""
    return digest(key.encode("utf-8", "surrogateescape"))


def shard_of(key: str, count: int, *, numeric: bool) -> int:
    """The shard of ``count`` that holds the key kept as ``key`` in the state store.

    Raises ValueError when ``numeric`` and the key is not a number."""
    if not numeric:
        return text_hash(key) % count
    try:
        return abs(int(Decimal(key))) % count
    except ArithmeticError:
        raise ValueError(f"key {key!r} is not a number") from None


class key_hash(FunctionElement[int]):  # lower case, as SQLAlchemy's own functions
    """``text_hash`` of a column, computed by the source database."""

    type = BigInteger()
    name = "key_hash"
    inherit_cache = True


def _argument(element: key_hash, compiler: Any, **kw: Any) -> str:
    (argument,) = element.clauses
    return str(compiler.process(argument, **kw))


@compiles(key_hash)
def _unsupported(element: key_hash, compiler: Any, **kw: Any) -> str:
    raise CompileError(
        "shards on a key that is not a number need PostgreSQL, MySQL/MariaDB, SQLite or "
        f"DuckDB, not {compiler.dialect.name}"
    )


@compiles(key_hash, "postgresql")
def _postgresql(element: key_hash, compiler: Any, **kw: Any) -> str:
    # concat() renders the value by its type's output (a UUID in lower case with
    # dashes, a CHAR(n) padded: what the driver returns); ::text would trim a CHAR(n).
    text = f"convert_to(concat({_argument(element, compiler, **kw)}), 'UTF8')"
    return f"('x' || substr(md5({text}), 1, 8))::bit(32)::bigint"


@compiles(key_hash, "mysql")
@compiles(key_hash, "mariadb")
def _mysql(element: key_hash, compiler: Any, **kw: Any) -> str:
    text = f"CONVERT({_argument(element, compiler, **kw)} USING utf8mb4)"  # a latin1 column too
    return f"CAST(CONV(SUBSTR(MD5({text}), 1, 8), 16, 10) AS UNSIGNED)"


@compiles(key_hash, "duckdb")
def _duckdb(element: key_hash, compiler: Any, **kw: Any) -> str:
    # VARCHAR is what the driver's value prints as (a UUID in lower case with dashes).
    text = f"CAST({_argument(element, compiler, **kw)} AS VARCHAR)"
    return f"CAST('0x' || substr(md5({text}), 1, 8) AS BIGINT)"


@compiles(key_hash, "sqlite")
def _sqlite(element: key_hash, compiler: Any, **kw: Any) -> str:
    # As a BLOB: the stored bytes, even those that are not UTF-8 (and a number as its text).
    return f"{SQLITE_FUNCTION}(CAST({_argument(element, compiler, **kw)} AS BLOB))"


def _sqlite_hash(data: bytes | None) -> int | None:
    return None if data is None else digest(bytes(data))


def register_sqlite(dbapi_connection: Any) -> None:
    """Give a sqlite3 connection the function :class:`key_hash` calls there."""
    dbapi_connection.create_function(SQLITE_FUNCTION, 1, _sqlite_hash, deterministic=True)
