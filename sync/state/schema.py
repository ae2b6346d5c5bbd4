"""The state store's tables, and how cursor and key values are kept as text.

One schema for SQLite and PostgreSQL alike; every table is keyed by job, so several
jobs (and several replicas) share one store. These tables are the latest version;
``sync.state.migrations`` brings an older store up to them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

from sync.errors import StateError

DIED = "the process ended before the run did (killed or crashed); nothing was lost"

metadata = MetaData()

schema_version = Table(
    "psync_schema",
    metadata,
    # one row: the version of these tables (see sync.state.migrations)
    Column("version", Integer, nullable=False),
)

checkpoints = Table(
    "psync_checkpoints",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("cursor_type", String(16), nullable=False),
    Column("cursor_value", Text, nullable=False),
    Column("key_type", String(16), nullable=False),
    Column("key_value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)
rows = Table(
    "psync_rows",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("fingerprint", String(32), nullable=False),
    Column("sent_at", Float, nullable=False),
    Index("ix_psync_rows_user", "job", "user_id"),
)
pending = Table(
    "psync_pending",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("internal_id", Text, nullable=False),  # "" when the payload has none
    Column("sent_at", Float, nullable=False),
    # version 4: what was sent (mapped columns only), its fingerprint, and the newest
    # data_last_modified Personyze held before it was sent (NULL: not read)
    Column("payload", Text, nullable=True),
    Column("fingerprint", String(32), nullable=True),
    Column("watermark", BigInteger, nullable=True),
)
rejected = Table(
    "psync_rejected",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("payload", Text, nullable=False),
    Column("reason", Text, nullable=False),
    # Personyze's HTTP status; NULL: refused by the mapper
    Column("status", Integer, nullable=True),
    Column("fingerprint", String(32), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("first_at", Float, nullable=False),
    Column("last_at", Float, nullable=False),
)
collisions = Table(
    "psync_collisions",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("other_key", String(), nullable=False),
    Column("seen_at", Float, nullable=False),
)
runs = Table(
    "psync_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(200), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("rows_read", Integer, nullable=False, default=0),
    Column("rows_sent", Integer, nullable=False, default=0),
    # the rows skipped as unchanged (the name predates the word; renaming it needs a migration)
    Column("rows_skipped", Integer, nullable=False, default=0),
    Column("rows_rejected", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("holder", String(200), nullable=True),  # version 2; NULL in older runs
)
jobs = Table(
    "psync_jobs",
    metadata,
    Column("job", String(200), primary_key=True),
    Column("shards", Integer, nullable=False),  # the layout its state was kept in
)
leases = Table(
    "psync_leases",
    metadata,
    # who runs a job (or a shard of one) now; counts only while its lock is held
    Column("job", String(200), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("since", Float, nullable=False),
    # version 4: bumped by every take, checked by every write of the run that took it
    Column("generation", BigInteger, nullable=True),
    Column("renewed_at", Float, nullable=True),  # the holder's last renewal, store's clock
)
duplicates = Table(
    "psync_duplicates",
    metadata,
    # a row whose identifiers Personyze holds in two users: ``kept_user_id`` is adopted
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("kept_user_id", BigInteger, nullable=False),
    Column("seen_at", Float, nullable=False),
)
vanished = Table(
    "psync_vanished",
    metadata,
    # rows whose users a mirror run deleted because they left the source: sent again
    # if they come back
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("user_id", BigInteger, nullable=False),
    Column("deleted_at", Float, nullable=False),
)
adoptions = Table(
    "psync_adoptions",
    metadata,
    # how a part's identity map was first built from the users Personyze already held
    Column("job", String(200), primary_key=True),
    Column("state", String(16), nullable=False),  # running | done | skipped
    Column("after_user_id", BigInteger, nullable=False),  # users read up to this one
    Column("highest_user_id", BigInteger, nullable=False),
    Column("wanted", Integer, nullable=False),
    Column("found", Integer, nullable=False),
    Column("reads", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
)
adopt_wanted = Table(
    "psync_adopt_wanted",
    metadata,
    # during an adoption: the source rows looked for, by their identifier's text
    Column("job", String(200), primary_key=True),
    Column("row_key", String(), primary_key=True),
    Column("identifier", Text, nullable=False),
    Column("payload", Text, nullable=False),  # what the row maps to, to compare
    Column("fingerprint", String(32), nullable=False),
    Column("user_id", BigInteger, nullable=True),
    Column("in_step", Integer, nullable=True),  # 1: the user holds the payload already
    Index("ix_psync_adopt_wanted", "job", "identifier"),
)
deliveries = Table(
    "psync_deliveries",
    metadata,
    # version 5: each row's deliveries, for ``history`` and ``runs``; pruned by retention
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("job", String(200), nullable=False),
    Column("row_key", String(), nullable=False),
    Column("run_id", Integer, nullable=True),
    Column("at", Float, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("operation", String(8), nullable=True),  # NULL: refused by the mapper
    Column("fingerprint", String(32), nullable=True),
    Column("columns", Text, nullable=False),  # "column:hash,...": a CRC-32 of each value
    Column("changed", Text, nullable=True),  # JSON: columns changed since the last one
    Column("status", Integer, nullable=True),
    Column("user_id", BigInteger, nullable=True),
    Column("reason", Text, nullable=True),
    Index("ix_psync_deliveries_row", "job", "row_key"),
    Index("ix_psync_deliveries_run", "run_id"),
    Index("ix_psync_deliveries_at", "job", "at"),
)

audiences = Table(
    "psync_audiences",
    metadata,
    # version 6: the Personyze list an audience job feeds, found or created once by name
    Column("job", String(200), primary_key=True),
    Column("name", Text, nullable=False),
    Column("list_id", BigInteger, nullable=True),  # NULL: a create was sent, no answer kept
    Column("since", Float, nullable=False),
    Column("waiting", Integer, nullable=False),  # rows whose users the last run did not find
)
audience_members = Table(
    "psync_audience_members",
    metadata,
    # version 6: the members an audience job added, each confirmed by reading it back
    Column("job", String(200), primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("row_key", String(), nullable=False),
    Column("added_at", Float, nullable=False),
)

senders = Table(
    "psync_senders",
    metadata,
    # version 7: the processes sending to Personyze now, sharing the account's rate
    Column("holder", String(200), primary_key=True),
    Column("seen_at", Float, nullable=False),  # its last beat, store's clock
    Column("cut_rate", Float, nullable=True),  # the account's rate after its last cut
    Column("cut_at", Float, nullable=True),
)


# -- typed values as text ------------------------------------------------------


def encode_value(value: Any) -> tuple[str, str]:
    """A cursor or key value as (type, text), so it comes back with its type."""
    if value is None:
        return "none", ""
    if isinstance(value, bool):
        return "int", str(int(value))
    if isinstance(value, int):
        return "int", str(value)
    if isinstance(value, Decimal):
        return "decimal", str(value)
    if isinstance(value, float):
        return "float", repr(value)
    if isinstance(value, datetime):
        return "datetime", value.isoformat()
    if isinstance(value, date):
        return "date", value.isoformat()
    if isinstance(value, UUID):
        return "uuid", str(value)
    if isinstance(value, str):
        return "str", value
    raise StateError(f"cannot keep a cursor or key of type {type(value).__name__}")


DECODERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "decimal": Decimal,
    "float": float,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "uuid": UUID,
    "str": str,
    "none": lambda _text: None,
}


def decode_value(kind: str, text: str) -> Any:
    return DECODERS[kind](text)


def key_text(key: Any) -> str:
    """The identity map's form of a row key."""
    return str(key)
