"""Shards on a key that is not a number (a UUID, text), on PostgreSQL, MariaDB and SQLite.

Such a key is sharded by a hash (sync.shard_hash) that each database computes in the
reader's queries and Python computes for ``checkpoint reset --reshard``: the two must
agree on every key, or a resharded row would be read by a shard that does not hold it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, text

from sync.databases import source_engine
from sync.extract.reader import reflect
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import SandboxServer
from sync.shard_hash import key_hash, shard_of, text_hash
from sync.wiring import Wiring
from tests.support import (
    BASE_TIME,
    Outcome,
    config_doc,
    load,
    users_by_internal_id,
    write_config,
    writer,
)

KEY_TYPES = {
    "uuid": {"sqlite": "CHAR(36)", "postgresql": "UUID", "mariadb": "UUID", "duckdb": "UUID"},
    "text": dict.fromkeys(("sqlite", "postgresql", "mariadb", "duckdb"), "VARCHAR(100)"),
}
STAMP = {
    "sqlite": "TIMESTAMP",
    "postgresql": "TIMESTAMP",
    "mariadb": "DATETIME",
    "duckdb": "TIMESTAMP",
}
WORDS = ["plain", "zoë", "Straße", "Ωmega", "日本語", "naïve café", "😀", "Ab-CD"]
# what random keys are made of: ASCII (quotes, %, \, spaces), Latin-1, Greek, Cyrillic,
# CJK, emoji (4 bytes in UTF-8), a combining accent and a zero-width space
POOL = "abcXYZ0189 -_.'\"%\\/" + "éßøÅñü" + "Ωλжя" + "日本語中文" + "😀🎉" + "\u0301\u200b"
LATIN1 = "abcXYZ09 -_'%" + "éßøÅñü¿"


def backend(url: str) -> str:
    return source_engine(url).dialect.name.replace("mysql", "mariadb")


def make_people(url: str, kind: str, count: int) -> list[str]:
    """Table ``people`` keyed by ``kind`` (a UUID or text), ``count`` rows; its keys as
    the driver returns them (a UUID in lower case with dashes). A fifth share a cursor."""
    rng = random.Random(f"{kind}-{count}")
    if kind == "uuid":
        keys = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
    else:
        keys = [f"{WORDS[i % len(WORDS)]}-{i}" for i in range(count)]
    name = backend(url)
    engine = writer(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE people (id {KEY_TYPES[kind][name]} PRIMARY KEY, "
                f"email VARCHAR(200), first_name VARCHAR(100), updated_at {STAMP[name]})"
            )
        )
    people = reflect(engine, "people")  # its types write the values
    typed = people.c.id.type.python_type  # uuid.UUID for a UUID type, else str
    rows = [
        {"id": typed(key), "email": f"p{i}@example.com", "first_name": f"P{i}"}
        | {"updated_at": BASE_TIME + timedelta(seconds=i % 5)}
        for i, key in enumerate(keys)
    ]
    with engine.begin() as conn:
        conn.execute(people.insert(), rows)
    engine.dispose()
    return keys


def people_config(
    tmp_path: Path, source_url: str, sandbox: SandboxServer, shards: int
) -> tuple[Path, dict[str, Any]]:
    doc = config_doc(
        source_url=source_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/s.db",
        source={"table": "people", "batch_size": 20},
        job={
            "shards": shards,
            "mapping": {"id": "internal_id", "email": "email", "first_name": "first_name"},
        },
    )
    return write_config(tmp_path / "sync.yaml", doc), doc


def read_by_shard(config: Path) -> dict[str, list[str]]:
    """Per part: the keys its reader reads, in the order read."""
    with Wiring(load(config)) as app:
        job = app.config.jobs[0]
        found: dict[str, list[str]] = {}
        for name, shard in app.parts(job):
            reader = app.reader(job, shard)
            keys = [str(r["id"]) for batch in reader.batches_after(None) for r in batch]
            assert reader.count(None, None) == len(keys)  # the count sees the same part
            found[name] = keys
        return found


def random_text(rng: random.Random, pool: str) -> str:
    return "".join(rng.choice(pool) for _ in range(rng.randint(1, 24)))


def test_each_database_hashes_text_as_python_does(source_url: str) -> None:
    """Property-style: 300 random strings (non-ASCII, quotes, spaces at either end) as
    VARCHAR and CHAR(n), UUIDs where the database has the type, Latin-1 on MariaDB: the
    hash each database computes is Python's, for the key as the driver hands it over."""
    rng = random.Random(19)
    name = backend(source_url)
    values = ["", " ", "a", *(random_text(rng, POOL) for _ in range(300))]
    columns = {"k": "VARCHAR(200)"}
    if name != "sqlite":  # a CHAR(n): PostgreSQL returns it padded, MariaDB trimmed
        columns |= {"u": "UUID", "c": "CHAR(30)"}
    if name == "mariadb":
        columns |= {
            "k": "VARCHAR(200) CHARACTER SET utf8mb4",
            "l": "VARCHAR(200) CHARACTER SET latin1",
        }
    uuids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in values]
    rows = [
        # a UUID written in upper case: it is read back in lower case
        {"id": i, "k": value, "u": uuids[i].upper(), "l": random_text(rng, LATIN1), "c": value}
        for i, value in enumerate(values)
    ]
    engine = writer(source_url)
    names = ", ".join(columns)
    with engine.begin() as conn:
        body = ", ".join(f"{c} {t}" for c, t in columns.items())
        conn.execute(text(f"CREATE TABLE hashes (id INTEGER PRIMARY KEY, {body})"))
        marks = ", ".join(f":{c}" for c in columns)
        conn.execute(text(f"INSERT INTO hashes (id, {names}) VALUES (:id, {marks})"), rows)
        if name == "sqlite":  # text that is not UTF-8, read back with surrogates
            conn.execute(text("INSERT INTO hashes (id, k) VALUES (-1, CAST(X'66ff6fc3' AS TEXT))"))
    table = reflect(engine, "hashes")
    hashed = [key_hash(table.c[c]) for c in columns]
    with engine.connect() as conn:
        found = conn.execute(select(*(table.c[c] for c in columns), *hashed)).all()
    engine.dispose()
    assert len(found) == len(rows) + (name == "sqlite")
    width = len(columns)
    wrong = [
        (value, database)
        for row in found
        for value, database in zip(row[:width], row[width:], strict=True)
        if database != text_hash(str(value))
    ]
    assert not wrong
    read = {str(v) for row in found for v in row[:width]}
    assert set(uuids) <= read or name == "sqlite"
    assert name != "sqlite" or "f\udcffo\udcc3" in read  # the bad bytes were kept as surrogates


@pytest.mark.parametrize("kind", ["uuid", "text"])
def test_shards_on_a_uuid_or_text_key_split_the_rows_and_a_backfill_sends_each_once(
    source_url: str, kind: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    keys = make_people(source_url, kind, 90)
    config, _ = people_config(tmp_path, source_url, sandbox, 3)

    parts = read_by_shard(config)
    for i, (name, read) in enumerate(parts.items()):
        assert name == f"customers#{i}/3"
        assert len(read) == len(set(read)) > 10  # no row twice; and a fair share
        assert {shard_of(k, 3, numeric=False) for k in read} == {i}  # as Python says
    union = [k for read in parts.values() for k in read]
    assert sorted(union) == sorted(keys)  # disjoint, and every row

    with Wiring(load(config)) as app:
        job = app.config.jobs[0]
        stats = run_job(app, job, RunOptions(kind="backfill"))
        assert stats.sent == 90 and stats.held_elsewhere == []
        sandbox.clear_requests()
        assert run_job(app, job, RunOptions()).sent == 0
    users = users_by_internal_id(sandbox.users())
    assert sorted(users) == sorted(keys)
    assert all(len(found) == 1 for found in users.values())
    assert [r.method for r in sandbox.requests if r.method != "GET"] == []


def test_reshard_of_a_text_key_moves_each_row_to_the_shard_that_reads_it(
    cli: Callable[..., Outcome], source_url: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    keys = make_people(source_url, "text", 60)
    config, doc = people_config(tmp_path, source_url, sandbox, 2)
    assert cli("once", "-c", str(config)).code == 0
    assert len(sandbox.users()) == 60

    doc["jobs"][0]["shards"] = 3
    config.write_text(yaml.safe_dump(doc))
    moved = cli("checkpoint", "reset", "-c", str(config), "customers", "--reshard")
    assert moved.code == 0, moved.text
    assert "60 synced row(s) moved to 3 shard(s) (from 2)" in moved.flat

    reads = read_by_shard(config)
    with Wiring(load(config)) as app:
        kept = {
            name: {k for k, _ in app.store.part(name).known_keys(None, 1000)}
            for name, _ in app.parts(app.config.jobs[0])
        }
    assert kept == {name: set(read) for name, read in reads.items()}
    assert sorted(k for part in kept.values() for k in part) == sorted(keys)

    sandbox.clear_requests()
    again = cli("once", "-c", str(config))
    assert again.code == 0, again.text
    assert [r.method for r in sandbox.requests if r.method != "GET"] == []  # nothing new
    assert len(sandbox.users()) == 60


def test_a_numeric_key_keeps_its_shard() -> None:
    """State sharded before text keys were possible stays valid: abs(key) % N."""
    assert [shard_of(k, 3, numeric=True) for k in ("7", "-7", "0", "12.0")] == [1, 1, 0, 0]
    assert shard_of("7", 3, numeric=False) == text_hash("7") % 3
    with pytest.raises(ValueError, match="not a number"):
        shard_of("abc", 3, numeric=True)
