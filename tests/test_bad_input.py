"""Bad input, source by source: a clear message, the documented exit code, nothing lost.

Each case runs ``personyze-sync`` in-process against real databases and the sandbox
over HTTP (or, where the sandbox cannot misbehave that way, a stand-in server), then
checks that the message names what is wrong and where, the exit code (0 / 1 / 2), that
the rest of the data was delivered where that is safe, and that the checkpoint passed
no row that was neither delivered nor recorded as rejected.

Covered elsewhere, not repeated here: every config error (tests/test_config.py: malformed
YAML, unknown keys, wrong types, missing variables and secret files, duplicate job names,
no identifier, http:// to a remote host); a missing table or column on SQLite, an
unreachable database, a wrong password, a refused key, empty or invalid identifiers and a
SQLite BLOB (tests/test_cli.py); a 400 on some rows with the others delivered
(tests/integration/test_sync.py, tests/test_rejected.py).
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from sync import admin
from sync.databases import source_engine
from sync.extract.reader import reflect
from sync.sandbox import SandboxServer
from sync.wiring import Wiring
from tests.support import (
    DEFAULT_MAPPING,
    SOURCE_FIXTURES,
    LoopbackServer,
    config_doc,
    execute,
    load,
    make_customers,
    status_json,
    write_config,
)

MAPPING = DEFAULT_MAPPING


def write(
    tmp_path: Path,
    source_url: str,
    api_url: str,
    state_url: str,
    *,
    source: dict[str, Any] | None = None,
    mapping: dict[str, str] | None = None,
) -> str:
    doc = config_doc(
        source_url=source_url,
        api_url=api_url,
        state_url=state_url,
        source=source,
        job={"mapping": mapping or MAPPING},
    )
    return str(write_config(tmp_path / "sync.yaml", doc))


def delivered(sandbox: SandboxServer) -> dict[int, dict[str, Any]]:
    return {int(u["internal_id"]): u for u in sandbox.users()}


def assert_nothing_lost(
    config: str, sandbox_users: set[int], *, table: str = "customers", cursor: str = "updated_at"
) -> None:
    """Every source row at or before the checkpoint was delivered or recorded as rejected."""
    with Wiring(load(Path(config))) as app:
        job = app.config.jobs[0]
        checkpoint = app.store.part(job.name).checkpoint()
        rejected = {r.key for r in admin.rejections(app, job)}
        url = job.source.url.get_secret_value()
    if checkpoint is None:
        return
    engine = source_engine(url)
    source = reflect(engine, table)  # typed as the reader types them
    with engine.connect() as conn:
        rows = conn.execute(
            select(source.c.id, source.c[cursor]).where(source.c[cursor].is_not(None))
        ).all()
    engine.dispose()
    for key, value in rows:
        if (value, key) <= (checkpoint.cursor, checkpoint.key):
            assert key in sandbox_users or str(key) in rejected, (
                f"the checkpoint {checkpoint} passed row {key}, neither delivered nor rejected"
            )


# -- the source ------------------------------------------------------------------------


SYNTAX_ERRORS = {
    "sqlite": "syntax error",
    "postgres": "syntax error at or near",
    "mariadb": "You have an error in your SQL syntax",
}


@pytest.mark.parametrize("source_url", list(SYNTAX_ERRORS), indirect=True)
def test_a_query_with_a_syntax_error_names_the_job_and_shows_the_database_error(
    cli, tmp_path, source_url, state_url, sandbox, request
):
    make_customers(source_url, range(1, 4))
    query = "SELECT id, email, first_name, last_name, score, vip, updated_at FROM customers WHERE"
    config = write(
        tmp_path, source_url, sandbox.url, state_url, source={"table": None, "query": query}
    )
    result = cli("once", "-c", config)
    assert result.code == 1, result.text
    assert "job customers failed" in result.err
    assert SYNTAX_ERRORS[request.node.callspec.params["source_url"]] in result.flat
    assert "Traceback" not in result.text
    assert sandbox.requests == []
    job = status_json(cli, config)
    assert job["checkpoint"] is None
    assert job["runs"][0]["outcome"] == "failed"


def test_a_user_without_select_gets_permission_denied_named(
    cli, tmp_path, pg_role, state_url, sandbox
):
    role, pg_url = pg_role
    make_customers(pg_url, range(1, 4))
    as_role = pg_url.replace("postgres@", f"{role}@")
    config = write(tmp_path, as_role, sandbox.url, state_url)
    result = cli("once", "-c", config)
    assert result.code == 1, result.text
    assert "job customers failed" in result.err
    assert "permission denied for table customers" in result.flat
    assert sandbox.requests == []
    assert status_json(cli, config)["checkpoint"] is None

    result = cli("validate", "-c", config, "--connect")
    assert result.code == 1, result.text
    assert "permission denied for table customers" in result.flat


def test_null_cursors_are_warned_about_and_the_others_synced(cli, setup, sqlite_url, sandbox):
    config = setup()
    execute(sqlite_url, text("UPDATE customers SET updated_at = NULL WHERE id IN (3, 7)"))
    result = cli("validate", "-c", config, "--connect")
    assert result.code == 0, result.text
    warning = "WARNING 2 row(s) have a NULL 'updated_at' and will never be synced"
    assert f"warn job customers: cursor column 'updated_at': {warning}" in result.flat
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    assert set(delivered(sandbox)) == {1, 2, 4, 5, 6, 8, 9, 10}
    assert_nothing_lost(config, set(delivered(sandbox)))


@pytest.mark.parametrize(
    ("source", "mapping", "expected", "right"),
    [
        pytest.param(
            {"table": "customer"}, MAPPING, "table 'customer' does not exist", "customers"
        ),
        pytest.param({"cursor": "updatedat"}, MAPPING, "column 'updatedat'", "updated_at"),
        pytest.param({}, {**MAPPING, "emial": "custom_s_1"}, "column 'emial'", "email"),
    ],
    ids=["table", "cursor", "mapped-column"],
)
def test_a_missing_table_or_column_on_mariadb_is_named(
    cli, tmp_path, mariadb_url, state_url, sandbox, source, mapping, expected, right
):
    make_customers(mariadb_url, range(1, 4))
    config = write(tmp_path, mariadb_url, sandbox.url, state_url, source=source, mapping=mapping)
    result = cli("once", "-c", config)
    assert result.code == 1, result.text
    assert "job customers failed" in result.err
    assert expected in result.flat
    assert "mysql+pymysql://127.0.0.1:3306/" in result.flat
    assert f"did you mean '{right}'" in result.flat
    assert sandbox.requests == []
    assert status_json(cli, config)["checkpoint"] is None


# -- the data ----------------------------------------------------------------------------

# (database, type of column v, its values for rows 1..4, rows rejected with words of the
# reason; the other rows are delivered, with the values held in Personyze when given)
DATA: dict[str, tuple[str, str, list[str], dict[int, str], dict[int, Any]]] = {
    "nan-and-infinities": (
        "postgres",
        "double precision",
        ["1.5", "'NaN'", "'Infinity'", "'-Infinity'"],
        {2: "not a finite number", 3: "not a finite number", 4: "not a finite number"},
        {1: 1.5},
    ),
    "numeric-nan": (
        "postgres",
        "numeric",
        ["2.25", "'NaN'", "NULL", "7"],
        {2: "not a finite number"},
        {1: 2.25, 4: 7},
    ),
    "nested-json": (
        "postgres",
        "jsonb",
        ["'{\"a\": 1}'", "'[1, 2]'", "NULL", "'\"plain\"'"],
        {1: "nested value", 2: "nested value"},
        {4: "plain"},
    ),
    "binary": (
        "postgres",
        "bytea",
        ["'\\x00ff'::bytea", "NULL", "'\\x41'::bytea", "NULL"],
        {1: "binary", 3: "binary"},
        {},
    ),
    # DuckDB's own types: LIST, STRUCT and MAP are nested values; DECIMAL is exact.
    "duckdb-list": (
        "duckdb",
        "INTEGER[]",
        ["[1, 2]", "[]", "NULL", "[3]"],
        {1: "nested value", 2: "nested value", 4: "nested value"},
        {},
    ),
    "duckdb-struct": (
        "duckdb",
        "STRUCT(a INTEGER)",
        ["{'a': 1}", "NULL", "{'a': NULL}", "NULL"],
        {1: "nested value", 3: "nested value"},
        {},
    ),
    "duckdb-map": (
        "duckdb",
        "MAP(VARCHAR, INTEGER)",
        ["MAP {'k': 1}", "NULL", "NULL", "NULL"],
        {1: "nested value"},
        {},
    ),
    "duckdb-decimal": (
        "duckdb",
        "DECIMAL(18, 3)",
        ["1.250", "123456789012.345", "NULL", "-0.001"],
        {},
        {1: 1.25, 2: 123456789012.345, 4: -0.001},
    ),
    "duckdb-double": (
        "duckdb",
        "DOUBLE",
        ["'nan'", "'inf'", "0.1", "'-inf'"],
        {1: "not a finite number", 2: "not a finite number", 4: "not a finite number"},
        {3: 0.1},
    ),
    "duckdb-blob": ("duckdb", "BLOB", ["'\\xAA'::BLOB", "NULL", "NULL", "NULL"], {1: "binary"}, {}),
}


@pytest.mark.parametrize("case", list(DATA))
def test_values_personyze_cannot_take_reject_their_row_naming_the_column(
    cli, tmp_path, state_url, sandbox, case, request
):
    database, kind, values, rejected, held = DATA[case]
    url = request.getfixturevalue(SOURCE_FIXTURES[database])
    execute(
        url,
        text(f"CREATE TABLE items (id int PRIMARY KEY, email text, v {kind}, version int)"),
        *(
            text(f"INSERT INTO items VALUES ({i}, 'i{i}@example.com', {value}, {i})")
            for i, value in enumerate(values, start=1)
        ),
    )
    config = write(
        tmp_path,
        url,
        sandbox.url,
        state_url,
        source={"table": "items", "cursor": "version"},
        mapping={"id": "internal_id", "email": "email", "v": "custom_s_1"},
    )
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    assert f"rejected {len(rejected)}" in result.out
    reasons = {int(r["key"]): r["reason"] for r in status_json(cli, config)["rejections"]}
    assert reasons.keys() == rejected.keys()
    for key, words in rejected.items():
        assert reasons[key].startswith("column 'v': "), reasons[key]
        assert words in reasons[key]
    assert set(delivered(sandbox)) == {1, 2, 3, 4} - rejected.keys()
    assert {k: u["custom_s_1"] for k, u in delivered(sandbox).items() if k in held} == held
    job = status_json(cli, config)
    assert job["checkpoint"] == {"cursor": 4, "key": "4"}
    assert_nothing_lost(config, set(delivered(sandbox)), table="items", cursor="version")


def test_a_very_long_string_is_sent_as_is_or_recorded_as_rejected(cli, setup, sqlite_url, sandbox):
    config = setup()
    long = "x" * 100_000
    execute(sqlite_url, text(f"UPDATE customers SET last_name = '{long}' WHERE id = 5"))
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    users = delivered(sandbox)
    job = status_json(cli, config)
    if 5 in users:
        assert users[5]["last_name"] == long
        assert job["rejected"] == 0
    else:
        (rejection,) = job["rejections"]
        assert rejection["key"] == "5" and rejection["reason"]
    assert set(users) - {5} == {1, 2, 3, 4, 6, 7, 8, 9, 10}
    assert job["checkpoint"]["key"] == "10"
    assert_nothing_lost(config, set(users))


@pytest.mark.parametrize("database", ["postgres", "duckdb"])
def test_naive_and_zone_aware_timestamps_are_both_sent_in_utc(
    cli, tmp_path, state_url, sandbox, database, request
):
    url = request.getfixturevalue(SOURCE_FIXTURES[database])
    execute(
        url,
        text("SET TimeZone = 'Europe/Berlin'"),
        text(
            "CREATE TABLE members (id int PRIMARY KEY, email text, "
            "seen timestamptz NOT NULL, born timestamp)"
        ),
        text(
            "INSERT INTO members VALUES "
            "(1, 'm1@example.com', '2024-05-01 14:00:00+02', '2024-05-01 12:00:00'), "
            "(2, 'm2@example.com', '2024-12-24 23:30:00-05', '1990-01-02 03:04:05.678')"
        ),
    )
    config = write(
        tmp_path,
        url,
        sandbox.url,
        state_url,
        source={"table": "members", "cursor": "seen"},
        mapping={"id": "internal_id", "email": "email", "seen": "custom_s_1", "born": "custom_s_2"},
    )
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    users = delivered(sandbox)
    assert (users[1]["custom_s_1"], users[1]["custom_s_2"]) == (
        "2024-05-01 12:00:00",
        "2024-05-01 12:00:00",
    )
    assert (users[2]["custom_s_1"], users[2]["custom_s_2"]) == (
        "2024-12-25 04:30:00",
        "1990-01-02 03:04:05",
    )
    assert_nothing_lost(config, set(users), table="members", cursor="seen")


def test_text_that_is_not_utf8_in_sqlite_rejects_that_row_naming_the_column(
    cli, setup, sqlite_url, sandbox
):
    """The bad bytes are read as they are; the mapper rejects that one row, the rest go."""
    config = setup(rows=range(1, 121))
    execute(
        sqlite_url,
        text("UPDATE customers SET first_name = CAST(x'41c328ff' AS TEXT) WHERE id = 118"),
        text("UPDATE customers SET updated_at = '2024-06-01 00:00:00' WHERE id = 118"),
    )
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    assert "rejected 1" in result.out
    assert "Traceback" not in result.text
    users = set(delivered(sandbox))
    assert 118 not in users and len(users) == 119
    assert_nothing_lost(config, users)
    job = status_json(cli, config)
    [rejection] = job["rejections"]
    assert rejection["key"] == "118"
    assert "column 'first_name'" in rejection["reason"]
    assert "not valid UTF-8" in rejection["reason"]


def test_latin1_bytes_in_mariadb_arrive_as_the_server_converts_them(
    cli, tmp_path, mariadb_url, state_url, sandbox
):
    """MariaDB converts latin1 to the connection's utf8mb4 itself: no invalid text reaches us.

    Bytes that are not UTF-8 (C3 28 FF) are read as the latin1 characters they are in
    latin1 (mojibake, but valid text), and sent as such; nothing fails.
    """
    execute(
        mariadb_url,
        text(
            "CREATE TABLE people (id int PRIMARY KEY, email varchar(50), "
            "name varchar(50) CHARACTER SET latin1, version int)"
        ),
        text(
            "INSERT INTO people VALUES (1, 'p1@example.com', UNHEX('C328FF'), 1), "
            "(2, 'p2@example.com', 'plain', 2)"
        ),
    )
    config = write(
        tmp_path,
        mariadb_url,
        sandbox.url,
        state_url,
        source={"table": "people", "cursor": "version"},
        mapping={"id": "internal_id", "email": "email", "name": "first_name"},
    )
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    users = delivered(sandbox)
    assert users[1]["first_name"] == "Ã(ÿ"
    assert users[2]["first_name"] == "plain"
    assert_nothing_lost(config, set(users), table="people", cursor="version")


def test_duplicate_emails_across_keys_are_one_user_and_a_reported_collision(
    cli, setup, sqlite_url, sandbox
):
    config = setup()
    execute(sqlite_url, text("UPDATE customers SET email = 'USER2@example.com' WHERE id = 6"))
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    assert "identity collisions 1" in result.out
    assert len(sandbox.users()) == 9
    job = status_json(cli, config)
    (collision,) = job["collisions"]
    assert {collision["key"], collision["other_key"]} == {"2", "6"}
    assert collision["user_id"] == next(
        u["user_id"] for u in sandbox.users() if u["email"] == "user2@example.com"
    )
    shown = cli("status", "-c", config).flat
    assert (
        f"row {collision['key']} and row {collision['other_key']} are one Personyze user" in shown
    )


# -- the API -----------------------------------------------------------------------------


class NotJson(LoopbackServer):
    """A stand-in for Personyze on loopback that answers 200 with an HTML page."""

    def __init__(self) -> None:
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.command == "POST":
                    outer.posts += 1
                body = b"<html><body>Welcome! Please sign in.</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler)
        self.url = f"http://127.0.0.1:{self.port}/rest"


def test_answers_that_are_not_json_fail_the_run_and_hold_the_checkpoint(
    cli, tmp_path, sqlite_url, state_url
):
    """An HTML page where a user_id belongs is not Personyze refusing a row: the job stops."""
    make_customers(sqlite_url, range(1, 11))
    with NotJson() as server:
        config = write(tmp_path, sqlite_url, server.url, state_url)
        result = cli("once", "-c", config)
        assert server.posts > 0
    assert result.code == 1, result.text
    assert "job customers failed" in result.err
    assert "not JSON" in result.flat and "<html>" in result.flat
    assert "Traceback" not in result.text
    job = status_json(cli, config)
    assert job["checkpoint"] is None, "the checkpoint passed rows Personyze never acknowledged"
    assert job["rejected"] == 0, "rows were recorded as refused by Personyze, which never saw them"
    assert job["runs"][0]["outcome"] == "failed"
