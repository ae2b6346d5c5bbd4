"""Secrets stay secret, TLS is always verified, and a read-only database user is enough.

The secrets are the API key (and a wrong one), the password of a PostgreSQL source URL
(trust auth accepts any) and the real password of a MariaDB user made for the test,
with characters that must be percent-encoded in a URL. Every output is searched for
each of them, raw, percent-encoded and in base64. Continued in
``test_security_channels.py``: passwords spliced into URLs by ``${VAR}``, and every
output channel of a real sync, the daemon and the alert webhook.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
import traceback
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from sync.config import PersonyzeSettings
from sync.databases import source_engine
from sync.errors import SyncError
from sync.model import RunOptions
from sync.run import run_job
from sync.sandbox import SandboxServer
from sync.wiring import Wiring
from tests.support import (
    API_KEY,
    DEFAULT_MAPPING,
    MARIADB_PASSWORD,
    PG_PASSWORD,
    WRONG_KEY,
    LoopbackServer,
    assert_no_secret,
    config_doc,
    config_file,
    execute,
    load,
    make_customers,
    self_signed_certificate,
    state_bytes,
    status_json,
    write_config,
)


def shown(result: Any, where: str) -> Any:
    assert_no_secret(result.text, where)
    return result


# -- a read-only user, and nothing printed holds a secret -----------------------------------


@pytest.mark.parametrize("reader", ["pg_reader", "mariadb_reader"])
def test_a_read_only_user_is_enough_and_no_output_holds_a_secret(
    cli, tmp_path, sandbox, request, reader
):
    url = request.getfixturevalue(reader)
    engine = source_engine(url)
    try:
        with pytest.raises(SQLAlchemyError), engine.begin() as conn:  # really read-only
            conn.execute(text("UPDATE customers SET first_name = 'x' WHERE id = 1"))
    finally:
        engine.dispose()
    config = config_file(tmp_path, url, sandbox.url)

    result = shown(cli("validate", "-c", config, "--connect"), "validate --connect")
    assert result.code == 0, result.text
    assert "API key accepted" in result.out
    result = shown(cli("once", "-c", config, "--dry-run"), "--dry-run")
    assert result.code == 0 and "would send 10" in result.out
    assert sandbox.requests == [r for r in sandbox.requests if r.method == "GET"]

    result = shown(cli("-vv", "--log-format", "json", "once", "-c", config), "a run's -vv log")
    assert result.code == 0, result.text
    assert '"event": "run finished"' in result.err  # the debug log was really written
    assert "read 10, sent 10" in result.out
    assert {int(u["internal_id"]) for u in sandbox.users()} == set(range(1, 11))

    for args in (["status"], ["status", "--json"]):
        result = shown(cli(*args, "-c", config), " ".join(args))
        assert result.code == 0, result.text
    assert_no_secret(state_bytes(tmp_path), "the state store")


# -- failing runs: errors, logs, tracebacks, status ------------------------------------------


@pytest.fixture
def failing(tmp_path: Path, sandbox: SandboxServer, pg_url: str, mariadb_reader: str):  # type: ignore[no-untyped-def]
    """name -> (config path, API key, words of the expected error)."""
    wrong_password = mariadb_reader.replace(quote(MARIADB_PASSWORD, safe=""), quote(PG_PASSWORD))
    pg_dead = f"postgresql+psycopg://reader:{quote(PG_PASSWORD, safe='')}@127.0.0.1:1/shop"
    sqlite_url = f"sqlite:///{tmp_path}/source.db"
    make_customers(sqlite_url, range(1, 4))
    cases = {
        "wrong-api-key": (sqlite_url, {}, WRONG_KEY, "Personyze refused the API key"),
        "wrong-db-password": (wrong_password, {}, API_KEY, "Access denied"),
        "unreachable-db": (pg_dead, {}, API_KEY, "127.0.0.1:1"),
        "unreachable-state-store": (
            sqlite_url,
            {"state_url": pg_dead.replace("/shop", "/state")},
            API_KEY,
            "state store",
        ),
    }
    made = {}
    for name, (url, state, key, words) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        doc = config_doc(
            source_url=url,
            api_url=sandbox.url,
            state_url=state.get("state_url", f"sqlite:///{folder}/state.db"),
            job={"mapping": dict(DEFAULT_MAPPING)},
        )
        made[name] = (str(write_config(folder / "sync.yaml", doc)), key, words)
    return made


CASES = ["wrong-api-key", "wrong-db-password", "unreachable-db", "unreachable-state-store"]


@pytest.mark.parametrize("case", CASES)
def test_a_failing_run_never_shows_a_secret(cli, failing, case):
    config, key, words = failing[case]
    result = shown(
        cli("-vv", "--log-format", "json", "once", "-c", config, key=key), "a failing run"
    )
    assert result.code == 1, result.text
    assert words in result.flat
    result = shown(cli("validate", "-c", config, "--connect", key=key), "validate --connect")
    assert result.code == 1, result.text
    if case != "unreachable-state-store":
        for args in (["status"], ["status", "--json"]):
            result = shown(cli(*args, "-c", config, key=key), " ".join(args))
            assert result.code == 0, result.text
            assert "failed" in result.text


@pytest.mark.parametrize("case", CASES)
def test_tracebacks_of_a_failing_run_never_show_a_secret(failing, case, monkeypatch):
    config, key, words = failing[case]
    monkeypatch.setenv("TEST_API_KEY", key)
    from sync.config import load_config

    with Wiring(load_config(config)) as app, pytest.raises(SyncError) as caught:
        run_job(app, app.config.jobs[0], RunOptions())
    chain = "".join(traceback.format_exception(caught.value))  # every cause, with locals' reprs
    assert words in chain
    assert_no_secret(chain, "the traceback")


def test_the_state_store_never_holds_the_api_key(cli, tmp_path, sandbox, sqlite_url):
    make_customers(sqlite_url, range(1, 6))
    execute(sqlite_url, text("UPDATE customers SET email = 'no-email' WHERE id = 2"))
    config = config_file(tmp_path, sqlite_url, sandbox.url)
    assert cli("once", "-c", config).code == 0  # sent, and one rejected with its payload
    assert "no-email" in state_bytes(tmp_path).decode("utf-8", "replace")
    execute(
        sqlite_url,
        text("UPDATE customers SET first_name = 'New', updated_at = '2030-01-01' WHERE id = 3"),
    )
    assert cli("once", "-c", config, key=WRONG_KEY).code == 1
    assert "refused the API key" in state_bytes(tmp_path).decode("utf-8", "replace")
    assert_no_secret(state_bytes(tmp_path), "the state store")


# -- TLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["verify", "verify_ssl", "ssl_verify", "tls_verify", "insecure", "insecure_skip_verify"]
)
def test_no_config_key_turns_certificate_checks_off(cli, tmp_path, sandbox, sqlite_url, key):
    make_customers(sqlite_url, range(1, 3))
    config = config_file(tmp_path, sqlite_url, sandbox.url, personyze={key: False})
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    assert f"personyze.{key}: unknown key" in result.err


def test_the_client_verifies_certificates_and_hostnames(tmp_path, sandbox, sqlite_url):
    assert not [
        f
        for f in PersonyzeSettings.model_fields
        if any(word in f for word in ("verify", "ssl", "tls", "cert"))
    ]
    make_customers(sqlite_url, range(1, 3))
    with Wiring(
        load(Path(config_file(tmp_path, sqlite_url, "https://app.personyze.com/rest")))
    ) as app:
        made = app.client._transport._make()  # what each sending thread gets
        context = made._pool._ssl_context  # HTTP/1.1 and HTTP/2 alike  # type: ignore[attr-defined]
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True


class SelfSigned(LoopbackServer):
    """An https server on loopback with a self-signed certificate, answering user_id 1."""

    def __init__(self, folder: Path) -> None:
        cert, key = self_signed_certificate(folder, "127.0.0.1")
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1")
                self.end_headers()
                self.wfile.write(b"1")

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        super().__init__(Handler, tls=context)
        self.url = f"https://127.0.0.1:{self.port}/rest"


def test_a_self_signed_certificate_is_refused_with_a_clear_error(cli, tmp_path, sqlite_url):
    make_customers(sqlite_url, range(1, 4))
    with SelfSigned(tmp_path) as server:
        config = config_file(
            tmp_path,
            sqlite_url,
            server.url,
            personyze={"max_attempts": 2, "backoff_initial_s": 0.01},
        )
        checked = cli("validate", "-c", config, "--connect")
        ran = cli("once", "-c", config)
        assert server.requests == 0, "a request was answered over an unverified connection"
    assert checked.code == 1, checked.text
    assert ran.code == 1, ran.text
    assert "API key accepted" not in checked.out
    for result in (checked, ran):
        assert "Traceback" not in result.text
        assert "certificate" in result.flat, f"the error does not say why: {result.flat}"
    job = status_json(cli, config)
    assert job["checkpoint"] is None and job["rows_known"] == 0


class EchoesHeaders(BaseHTTPRequestHandler):
    """A server that refuses every write, quoting back the request's headers."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Basic ")

        key = base64.b64decode(token).decode().removeprefix("api:")
        body = f"Bad request. You sent: Authorization: {auth}; key={key}; token={token}".encode()
        self.send_response(400)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_answer_that_echoes_the_key_is_masked_wherever_it_is_kept_or_shown(
    cli: Any, tmp_path: Path, sqlite_url: str
) -> None:

    token = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    make_customers(sqlite_url, range(1, 4))
    with LoopbackServer(EchoesHeaders) as server:
        config = config_file(tmp_path, sqlite_url, f"http://127.0.0.1:{server.port}/rest")
        once = cli("-vv", "once", "-c", config)
        listed = cli("rejected", "list", "-c", config, "--json")
        status = cli("status", "-c", config, "--json")
    assert "Bad request. You sent" in listed.text, once.text  # the reason is kept, masked
    for where, shown_text in (
        ("once", once.text),
        ("rejected list", listed.text),
        ("status", status.text),
        ("state store", state_bytes(tmp_path)),
    ):
        assert_no_secret(shown_text, where)
        needle: Any = token.encode() if isinstance(shown_text, bytes) else token
        assert needle not in shown_text, f"{where} holds the Basic token"  # fmt: skip


def test_the_basic_token_and_h2_header_logs_are_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from sync.logs import configure_logging, secrets_of

    config = load(write_config(
        Path(tempfile.mkdtemp()) / "sync.yaml",
        config_doc(source_url="sqlite://", api_url="http://127.0.0.1:1/rest", state_url="sqlite://"),
    ))  # fmt: skip
    token = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    assert token in secrets_of(config)
    configure_logging(fmt="json", level=logging.DEBUG, secrets=secrets_of(config))
    logging.getLogger("hpack.hpack").debug("Encoded header block to %s", token.encode())
    logging.getLogger("h2.connection").debug("headers %s", token)
    logging.getLogger("sync.test").warning("answer said Basic %s", token)
    logged = capsys.readouterr().err
    assert "Encoded header block" not in logged and "headers" not in logged
    assert token not in logged and "answer said Basic" in logged
