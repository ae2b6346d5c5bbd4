"""``validate --connect`` checks everything at once (issue 17, items 2 and 7).

One line per check, each ok or its problem at the config's line; a failure stops none
of the others; exit 1 if any failed. A database user without SELECT is told the
privilege it misses and the GRANT that gives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.support import (
    WRONG_KEY,
    config_doc,
    execute,
    make_customers,
    write_config,
)

COLUMNS = ("id", "email", "first_name", "last_name", "score", "vip")


def two_jobs(tmp_path: Path, url: str, api_url: str, **job: Any) -> tuple[str, dict[str, Any]]:
    """A config of job ``customers`` (with ``job``) and a copy of it called ``orders``."""
    doc = config_doc(
        source_url=url, api_url=api_url, state_url=f"sqlite:///{tmp_path}/state.db", job=job
    )
    doc["jobs"].append({**doc["jobs"][0], "name": "orders"})
    return str(tmp_path / "sync.yaml"), doc


def line_of(path: str, needle: str, after: int = 0) -> int:
    lines = Path(path).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if n > after and needle in line)


def test_every_check_is_printed_and_no_failure_stops_the_others(cli, tmp_path, sqlite_url, sandbox):
    make_customers(sqlite_url, range(1, 11))
    path, doc = two_jobs(tmp_path, sqlite_url, sandbox.url)
    doc["jobs"][1]["mapping"] = {**doc["jobs"][1]["mapping"], "emial": "custom_s_1"}
    config = str(write_config(Path(path), doc))

    result = cli("validate", "-c", config, "--connect", key=WRONG_KEY)
    assert result.code == 1, result.text
    for job in ("customers", "orders"):
        expected = [
            "driver sqlite installed",
            f"source reachable ({sqlite_url})",
            "table 'customers' readable",
            "key column 'id'",
            "cursor column 'updated_at'",
            *(f"mapped column {c!r}" for c in COLUMNS),
            "key 'id' unique",
        ]
        for check in expected:
            assert f"ok    job {job}: {check}\n" in result.out, check
    assert "ok    config (2 job(s): customers, orders)" in result.out
    assert "ok    state store reachable" in result.out
    column = line_of(config, "emial:")
    key = line_of(config, "api_key:")
    assert result.err.splitlines() == [
        f"FAIL  job orders: mapped column 'emial': {config}:{column}: column 'emial' does not "
        "exist in table 'customers' at "
        f"{sqlite_url} (did you mean 'email'?); its columns are: id, email, first_name, "
        "last_name, score, vip, password_hash, updated_at",
        f"FAIL  API key accepted: {config}:{key}: Personyze refused the API key (401 Invalid "
        "API key): check personyze.api_key; the job stopped",
        "2 of 28 checks failed",
    ]
    assert sandbox.users() == []

    checks = cli("validate", "-c", config, "--connect", "--json", key=WRONG_KEY)
    assert checks.code == 1, checks.text
    found = checks.json()
    assert len(found) == 28
    assert {tuple(sorted(c)) for c in found} == {
        ("check", "detail", "job", "ok", "problem", "warning")
    }
    failed = [(c["check"], c["job"]) for c in found if not c["ok"]]
    assert failed == [("mapped column 'emial'", "orders"), ("API key accepted", None)]
    assert all(c["problem"] is None for c in found if c["ok"])


@pytest.mark.parametrize("source_url", ["sqlite", "postgres", "mariadb"], indirect=True)
def test_a_key_that_is_not_unique_is_caught(cli, tmp_path, source_url, sandbox):
    """It passed: a dry run of such a table would have sent every row, one user each."""
    make_customers(source_url, range(1, 11))
    shared = text("UPDATE customers SET email = 'same@example.com' WHERE id IN (2, 5, 7)")
    execute(source_url, shared, text("UPDATE customers SET email = NULL WHERE id = 9"))
    doc = config_doc(
        source_url=source_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        source={"key": "email"},
    )
    config = str(write_config(tmp_path / "sync.yaml", doc))
    result = cli("validate", "-c", config, "--connect")
    assert result.code == 1, result.text
    line = line_of(config, "key: email")
    assert result.err.splitlines() == [
        f"FAIL  job customers: key 'email' unique: {config}:{line}: key 'email' is not unique "
        "in table 'customers': 'same@example.com' is in 3 rows; 1 row(s) have a NULL 'email': "
        "each row needs a key of its own, never NULL",
        "1 of 15 checks failed",
    ]
    assert "ok    API key accepted" in result.out


def test_all_good_exits_0_with_every_check_ok(cli, tmp_path, pg_url, sandbox):
    make_customers(pg_url, range(1, 11))
    execute(pg_url, text("UPDATE customers SET updated_at = NULL WHERE id = 4"))
    path, doc = two_jobs(tmp_path, pg_url, sandbox.url, delete_when="vip AND score > 12")
    config = str(write_config(Path(path), doc))
    result = cli("validate", "-c", config, "--connect")
    assert result.code == 0, result.text
    assert result.err == ""
    lines = result.out.splitlines()
    assert len(lines) == 1 + 2 * 13 + 2
    null = "cursor column 'updated_at': WARNING 1 row(s) have a NULL 'updated_at'"
    for job in ("customers", "orders"):
        assert f"ok    job {job}: driver postgresql+psycopg installed" in lines
        assert f"ok    job {job}: delete_when" in lines
        assert f"warn  job {job}: {null} and will never be synced" in lines
    assert all(line.startswith(("ok    ", "warn  ")) for line in lines)
    assert lines[-1] == "ok    API key accepted"

    checks = cli("validate", "-c", config, "--connect", "--json")
    assert checks.code == 0, checks.text
    assert all(c["ok"] for c in checks.json())


def test_a_postgresql_role_without_select_is_told_the_grant(cli, tmp_path, pg_role, sandbox):
    """It was told "delete_when '...' is not a condition ... understands: permission denied"."""
    role, pg_url = pg_role
    make_customers(pg_url, range(1, 4))
    doc = config_doc(
        source_url=pg_url.replace("postgres@", f"{role}@"),
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"delete_when": "vip"},
    )
    config = str(write_config(tmp_path / "sync.yaml", doc))
    where = "postgresql+psycopg://127.0.0.1:5432/" + pg_url.rsplit("/", 1)[1]
    result = cli("validate", "-c", config, "--connect")
    assert result.code == 1, result.text
    line = line_of(config, "table: customers")
    assert result.err.splitlines() == [
        f"FAIL  job customers: table 'customers' readable: {config}:{line}: missing privilege: "
        f"the database user may not read table 'customers' at {where} (permission denied for "
        "table customers); grant it, <user> being the user of source.url: "
        "GRANT SELECT ON customers TO <user>;",
        "1 of 14 checks failed",
    ]
    assert "ok    job customers: key column 'id'" in result.out  # its columns are known
    assert "ok    API key accepted" in result.out
    assert role not in result.text
    ran = cli("once", "-c", config)
    assert ran.code == 1, ran.text
    assert "missing privilege" in ran.flat and "GRANT SELECT ON customers TO <user>;" in ran.flat
    assert "is not a condition" not in ran.flat

    execute(pg_url, text(f'GRANT SELECT ON customers TO "{role}"'))  # as the GRANT says
    assert cli("validate", "-c", config, "--connect").code == 0


@pytest.mark.parametrize("access", ["another table", "nothing"])
def test_a_mariadb_user_without_select_is_told_the_grant(
    cli, tmp_path, mariadb_url, mariadb_user, sandbox, access
):
    user, url = mariadb_user
    database = mariadb_url.rsplit("/", 1)[1]
    make_customers(mariadb_url, range(1, 4))
    if access == "another table":  # it may connect, but not read customers
        execute(mariadb_url, text("CREATE TABLE other (id INT)"))
        for host in ("%", "localhost"):
            execute(mariadb_url, text(f"GRANT SELECT ON `{database}`.other TO '{user}'@'{host}'"))
    doc = config_doc(
        source_url=url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        job={"delete_when": "vip = 1"},
    )
    config = str(write_config(tmp_path / "sync.yaml", doc))
    result = cli("validate", "-c", config, "--connect")
    assert result.code == 1, result.text
    (failure, summary) = result.err.splitlines()
    grant = f"GRANT SELECT ON {database}.customers TO '<user>'@'%';"
    assert "missing privilege: the database user may not read" in failure
    assert failure.endswith(f"grant it, <user> being the user of source.url: {grant}")
    if access == "nothing":  # refused at the door: 1044
        line = line_of(config, "url: mysql")
        assert failure.startswith(f"FAIL  job customers: source reachable: {config}:{line}: ")
        assert f"database '{database}'" in failure and summary == "1 of 5 checks failed"
    else:  # 1142
        line = line_of(config, "table: customers")
        assert failure.startswith(
            f"FAIL  job customers: table 'customers' readable: {config}:{line}: "
        )
        assert f"table '{database}.customers'" in failure and summary == "1 of 6 checks failed"
    assert user not in result.text
    assert "ok    API key accepted" in result.out

    for host in ("%", "localhost"):  # as the GRANT says
        execute(mariadb_url, text(grant.replace("<user>", user).replace("%", host)))
    assert cli("validate", "-c", config, "--connect").code == 0


def test_each_missing_postgresql_privilege_is_told_in_turn(cli, tmp_path, pg_role, sandbox):
    """A table in a schema the role may not use: USAGE first, then SELECT, then it passes."""
    role, pg_url = pg_role
    make_customers(pg_url, range(1, 4))
    execute(
        pg_url,
        text("CREATE SCHEMA sales"),
        text("CREATE TABLE sales.customers AS SELECT * FROM customers"),
    )
    doc = config_doc(
        source_url=pg_url.replace("postgres@", f"{role}@"),
        api_url=sandbox.url,
        state_url=f"sqlite:///{tmp_path}/state.db",
        source={"table": "sales.customers"},
    )
    config = str(write_config(tmp_path / "sync.yaml", doc))
    for grant in ("GRANT USAGE ON SCHEMA sales", "GRANT SELECT ON sales.customers"):
        result = cli("validate", "-c", config, "--connect")
        assert result.code == 1, result.text
        assert "missing privilege" in result.err
        assert result.err.splitlines()[0].endswith(f"{grant} TO <user>;")
        execute(pg_url, text(f'{grant} TO "{role}"'))
    assert cli("validate", "-c", config, "--connect").code == 0
