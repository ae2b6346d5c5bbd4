"""Secrets with URL characters in them, searched for in every output there is.

The secret tests of ``test_security.py``, continued (with the same helpers): a
password holding ``@ : / %`` put into a URL by ``${VAR}`` must reach the database
intact and never show, not even the part a URL parser would take for the host; the
API key, its Basic token and every password are looked for, raw, percent-encoded and
in base64, in what each command prints, the JSON logs, every table of the state store,
``status --json``, the daemon's ``/readyz`` and ``/metrics``, and the alert webhook's
bodies. Every command runs as a real process.
"""

from __future__ import annotations

import base64
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

from sync.sandbox import SandboxServer
from tests.support import (
    API_KEY,
    MARIADB_PASSWORD,
    PG_SERVER,
    WRONG_KEY,
    Daemon,
    Receiver,
    assert_no_secret,
    config_doc,
    config_file,
    execute,
    make_customers,
    run_script,
    state_bytes,
    wait_until,
    write_config,
)


@pytest.mark.parametrize("password", ["p@ss:w/rd%x#y", "Tail@0f-the-Secret"])
def test_a_password_spliced_into_a_url_may_hold_url_characters(
    tmp_path: Path, sandbox: SandboxServer, pg_url: str, monkeypatch: Any, password: str
) -> None:
    """Issue 15, item 8: the URL parser split such a password at its '@', showing the tail."""
    make_customers(pg_url, range(1, 6))
    database = pg_url.rsplit("/", 1)[1]
    monkeypatch.setenv("PG_PASSWORD", password)  # trust auth: any password connects
    url = f"postgresql://postgres:${{PG_PASSWORD}}@127.0.0.1:5432/{database}"
    config = config_file(tmp_path, url, sandbox.url)
    tail = password.split("@", 1)[1]

    def check(*args: str) -> Any:
        result = run_script(*args, "-c", config)  # a real process
        assert_no_secret(result.text, " ".join(args), (password, tail))
        assert result.code == 0, result.text
        return result

    assert "source reachable" in check("validate", "--connect").out
    ran = check("-vv", "--log-format", "json", "once")
    assert "read 5, sent 5" in ran.out and '"event": "run finished"' in ran.err
    check("status")
    check("status", "--json")
    assert_no_secret(state_bytes(tmp_path), "the state store", (password, tail))
    assert {int(u["internal_id"]) for u in sandbox.users()} == set(range(1, 6))


STATE_PASSWORD = "St@te:pw/x%25y#z"  # PostgreSQL trusts loopback: it takes any password
HOOK_PASSWORD = "Ho@ok:pw/q%3Ar"


def tokens(key: str) -> list[str]:
    """The key and the Basic token each request carries."""
    return [key, base64.b64encode(f"api:{key}".encode()).decode()]


def psync_tables(url: str) -> str:
    """Every column of every row of every psync_* table, as text."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = conn.execute(
                text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'psync%' ORDER BY 1")
            ).scalars()
            dumped = {n: conn.execute(text(f'SELECT * FROM "{n}"')).all() for n in list(names)}
    finally:
        engine.dispose()
    assert dumped.get("psync_runs") and dumped.get("psync_rows"), dumped
    return "\n".join(f"{name}: {rows!r}" for name, rows in dumped.items())


def test_every_output_of_a_sync_hides_the_key_its_token_and_passwords_with_url_characters(
    tmp_path: Path,
    sandbox: SandboxServer,
    mariadb_url: str,
    mariadb_reader: str,
    pg_url: str,
    monkeypatch: Any,
) -> None:
    """A real sync, a failing job, a wrong key and the daemon; every channel searched.

    The MariaDB user's password (``@ : / %``) really is checked by the server: it
    connects only if ``${DB_PASSWORD}`` reached it intact. The state store's password is
    spliced the same way, and so is the webhook's, which a failing job makes post.
    """
    for name, value in [
        ("DB_PASSWORD", MARIADB_PASSWORD),
        ("STATE_PASSWORD", STATE_PASSWORD),
        ("HOOK_PASSWORD", HOOK_PASSWORD),
    ]:
        monkeypatch.setenv(name, value)
    source = mariadb_reader.replace(quote(MARIADB_PASSWORD, safe=""), "${DB_PASSWORD}")
    server, database = pg_url.rsplit("/", 1)
    state = server.replace("postgres@", "postgres:${STATE_PASSWORD}@") + f"/{database}"
    dead = "postgresql+psycopg://postgres:${STATE_PASSWORD}@127.0.0.1:1/shop"
    doc = config_doc(source_url=source, api_url=sandbox.url, state_url=state)
    job = doc["jobs"][0]
    doc["jobs"].append({**job, "name": "dead", "source": {**job["source"], "url": dead}})
    passwords = (MARIADB_PASSWORD, STATE_PASSWORD, HOOK_PASSWORD)
    secrets = [*tokens(API_KEY), *tokens(WRONG_KEY), *passwords]
    secrets += [p.split("@", 1)[1] for p in passwords]  # the tail a parser split off
    secrets.append(base64.b64encode(f"hook:{HOOK_PASSWORD}".encode()).decode())
    channels: dict[str, str | bytes] = {}

    with Receiver() as receiver:
        doc["alerts"] = {"webhook_url": receiver.url.replace("://", "://hook:${HOOK_PASSWORD}@")}
        config = str(write_config(tmp_path / "sync.yaml", doc))

        def run(*args: str, code: int, key: str = API_KEY) -> Any:
            result = run_script(*args, "-c", config, key=key)  # a real process
            assert result.code == code, result.text
            channels[f"{' '.join(args)} (key {key}), stdout and stderr"] = result.text
            return result

        checked = run("validate", "--connect", code=1)  # the dead job's source is down
        assert "127.0.0.1:1/shop" in checked.err
        ran = run("-vv", "--log-format", "json", "once", code=1)
        assert "read 10, sent 10" in ran.out, ran.text  # DB_PASSWORD arrived intact
        assert '"event": "run finished"' in ran.err and "127.0.0.1:1" in ran.err
        execute(
            mariadb_url,
            text("UPDATE customers SET first_name = 'New', updated_at = '2030-01-01' WHERE id = 3"),
        )
        assert "refused the API key" in run("once", "customers", code=1, key=WRONG_KEY).flat
        assert '"job": "dead"' in run("status", "--json", code=0).out
        assert "failed" in run("status", code=0).out

        daemon = Daemon(Path(config), tmp_path / "daemon.log")
        try:
            wait_until(lambda: receiver.bodies, what="the alert of the failing job")
            ready = wait_until(
                lambda: (
                    (r := daemon.get("/readyz")).status_code == 503
                    and r.json()["jobs"]["dead"]["state"] == "failing"
                    and r
                ),
                what="/readyz to name the failing job",
            )
            channels["/readyz"] = ready.text
            channels["/metrics"] = daemon.get("/metrics").text
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(15) == 0
        finally:
            daemon.kill()
        channels["the daemon's JSON log"] = daemon.logs()
        assert '"event": "run failed"' in daemon.logs() and '"job": "dead"' in daemon.logs()
    assert "127.0.0.1:1" in ready.json()["jobs"]["dead"]["last_error"]
    assert "job dead failed" in receiver.texts[0]
    channels["the alert webhook's bodies"] = b"\n".join(receiver.bodies)
    channels["the state store"] = psync_tables(f"{PG_SERVER}/{database}")
    assert "refused the API key" in str(channels["the state store"])
    assert "127.0.0.1:1" in str(channels["the state store"])
    assert {int(u["internal_id"]) for u in sandbox.users()} == set(range(1, 11))
    for where, seen in channels.items():
        assert seen, f"{where}: nothing was captured, so nothing was searched"
        assert_no_secret(seen, where, secrets)
