"""Log lines: one event each, JSON or text, and no secret in any of them."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from sync.config import parse_config
from sync.logs import configure_logging, redact, secrets_of, set_secrets

log = logging.getLogger("sync.daemon")

API_KEY = "sk-TOPSECRET-4242"
PASSWORD = "p@ss:w/rd 99"  # needs percent-encoding in a URL
SECRETS = (API_KEY, PASSWORD)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def root_logger() -> Iterator[None]:
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    set_secrets(())


def capture(fmt: str = "json", secrets: tuple[str, ...] = SECRETS) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt=fmt, secrets=secrets, stream=stream)  # type: ignore[arg-type]
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def boom(message: str) -> None:
    try:
        raise ValueError(message)
    except ValueError:
        log.exception("run failed", extra={"job": "customers"})


# ------------------------------------------------------------------------ JSON

# (case id, how to log, fields the one JSON line must have)
JSON_CASES: list[tuple[str, Callable[[], None], dict[str, Any]]] = [
    (
        "extras at the top level",
        lambda: log.info("run finished", extra={"job": "customers", "rows_sent": 12, "s": 1.5}),
        {"level": "info", "logger": "sync.daemon", "event": "run finished", "job": "customers",
         "rows_sent": 12, "s": 1.5},
    ),
    (
        "message args are applied",
        lambda: log.warning("sent %d of %s", 3, "customers"),
        {"level": "warning", "event": "sent 3 of customers"},
    ),
    (
        "values JSON cannot carry are str()-ed",
        lambda: log.info("odd", extra={"path": Path("/tmp/x"), "nan": float("nan"), "ok": [1]}),
        {"path": "/tmp/x", "nan": "nan", "ok": [1]},
    ),
    (
        "an extra never hides a field of the line",
        lambda: log.info("clash", extra={"level": "mine"}),
        {"level": "info", "level_": "mine"},
    ),
    (
        "an exception becomes error and traceback",
        lambda: boom("no such table: customers"),
        {"level": "error", "event": "run failed", "job": "customers",
         "error": "no such table: customers"},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("call", "expected"), [c[1:] for c in JSON_CASES],
                         ids=[c[0] for c in JSON_CASES])  # fmt: skip
def test_json_line(call: Callable[[], None], expected: dict[str, Any]) -> None:
    stream = capture("json")
    call()
    (line,) = json_lines(stream)
    assert {k: line.get(k) for k in expected} == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert not {"args", "msg", "levelno", "pathname", "exc_info"} & set(line)


def test_json_traceback_is_one_field_of_one_line() -> None:
    stream = capture("json")
    boom("first line\nsecond line")
    (line,) = json_lines(stream)
    assert line["error"] == "first line second line"
    assert line["traceback"].startswith("Traceback (most recent call last):")
    assert line["traceback"].endswith("ValueError: first line\nsecond line")


# ------------------------------------------------------------------------ text


def test_text_line() -> None:
    stream = capture("text")
    log.info("run finished", extra={"job": "customers", "rows_sent": 12, "seconds": 1.5})
    log.warning("slow", extra={"note": "two words", "none": None})
    first, second = stream.getvalue().splitlines()
    stamp, rest = first[:23], first[23:]
    datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S UTC")  # the zone named: no guessing
    assert rest == " INFO  sync.daemon: run finished job=customers rows_sent=12 seconds=1.5"
    assert second.endswith(' WARNING sync.daemon: slow note="two words" none=null')


def test_text_traceback_follows_the_line() -> None:
    stream = capture("text")
    boom("no such table")
    first, *trace = stream.getvalue().splitlines()
    assert first.endswith("ERROR sync.daemon: run failed job=customers")
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == "ValueError: no such table"


@pytest.mark.parametrize(
    ("fmt", "stream", "is_json"),
    [
        ("auto", io.StringIO(), True),
        ("auto", Terminal(), False),
        ("json", Terminal(), True),
        ("text", io.StringIO(), False),
    ],
    ids=["auto-pipe", "auto-tty", "json-on-tty", "text-on-pipe"],
)
def test_format_choice(fmt: str, stream: io.StringIO, is_json: bool) -> None:
    configure_logging(fmt=fmt, stream=stream)  # type: ignore[arg-type]
    log.info("hello")
    line = stream.getvalue().strip()
    assert line.startswith("{") is is_json


def test_configure_twice_keeps_one_handler() -> None:
    first = capture("json")
    second = capture("text")
    log.info("once", extra={"job": "x"})
    ours = [h for h in logging.getLogger().handlers if type(h).__module__ == "sync.logs"]
    assert len(ours) == 1
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_level_filters() -> None:
    stream = io.StringIO()
    configure_logging(fmt="json", level=logging.WARNING, stream=stream)
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in json_lines(stream)] == ["loud"]


# ------------------------------------------------------------------- redaction

# (case id, how to log a secret)
LEAKS: list[tuple[str, Callable[[], None]]] = [
    ("in the message", lambda: log.info(f"key is {API_KEY}")),
    ("in an argument", lambda: log.info("key is %s", API_KEY)),
    ("in a repr argument", lambda: log.info("password %r", PASSWORD)),
    ("in an extra", lambda: log.info("connect", extra={"url": f"pg://u:{PASSWORD}@db/x"})),
    ("in a nested extra", lambda: log.info("connect", extra={"headers": {"key": API_KEY}})),
    ("in an exception and its traceback", lambda: boom(f"auth failed for {API_KEY}")),
    ("percent-encoded", lambda: log.info(f"pg://u:{quote(PASSWORD, safe='')}@db/x")),
    ("percent-encoded, lower-case hex", lambda: log.info("pg://u:p%40ss%3aw%2frd+99@db/x")),
]


@pytest.mark.parametrize("fmt", ["json", "text"])
@pytest.mark.parametrize("call", [c[1] for c in LEAKS], ids=[c[0] for c in LEAKS])
def test_secrets_are_masked(fmt: str, call: Callable[[], None]) -> None:
    stream = capture(fmt)
    call()
    out = stream.getvalue()
    assert "***" in out
    for secret in (*SECRETS, quote(PASSWORD, safe=""), "p%40ss", "TOPSECRET", "w/rd"):
        assert secret not in out
    if fmt == "json":
        json_lines(stream)  # still valid JSON


def test_longest_secret_first() -> None:
    url = f"postgresql://reader:{PASSWORD}@db/shop"
    stream = capture("json", secrets=(PASSWORD, url))
    log.info("connect %s", url)
    assert json_lines(stream)[0]["event"] == "connect ***"


def test_short_values_are_not_masked() -> None:
    stream = capture("json", secrets=("abc", ""))
    log.info("abc def")
    assert json_lines(stream)[0]["event"] == "abc def"


def test_set_secrets_replaces_the_list() -> None:
    stream = capture("json", secrets=("old-secret",))
    set_secrets(["new-secret"])
    log.info("old-secret new-secret")
    assert json_lines(stream)[0]["event"] == "old-secret ***"
    assert redact("new-secret!") == "***!"


def test_threads_share_one_stream() -> None:
    stream = capture("json")

    def work(n: int) -> None:
        for i in range(200):
            log.info("tick %s", API_KEY, extra={"worker": n, "i": i})
            if i % 50 == 0:
                set_secrets(SECRETS)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = json_lines(stream)
    assert len(lines) == 800
    assert {line["event"] for line in lines} == {"tick ***"}


# -------------------------------------------------------------------- secrets_of

CONFIG = """\
personyze:
  api_key: ${API_KEY}
state:
  url: postgresql+psycopg://state:${STATE_PASSWORD}@db/state
jobs:
  - name: customers
    source:
      url: postgresql+psycopg://reader:${PG_PASSWORD}@db/shop
      table: customers
      cursor: updated_at
      key: id
    mapping: {id: internal_id}
  - name: orders
    source:
      url: mysql+pymysql://reader:ab@db/orders
      table: orders
      cursor: updated_at
      key: id
    mapping: {id: internal_id}
  - name: local
    source:
      url: sqlite:///local.db
      table: people
      cursor: updated_at
      key: id
    mapping: {id: internal_id}
alerts:
  webhook_url: ${WEBHOOK}
"""
WEBHOOK = "https://hooks.example.com/services/T0/B0/XYZtoken"
ENV = {
    "API_KEY": API_KEY,
    "STATE_PASSWORD": "state-pw-77",
    "PG_PASSWORD": PASSWORD,  # given as it is: the config percent-encodes it in the URL
    "WEBHOOK": WEBHOOK,
}


def test_secrets_of_config(tmp_path: Path) -> None:
    config = parse_config(CONFIG, environ=ENV, base_dir=tmp_path)
    found = secrets_of(config)
    token = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    assert set(found) == {
        API_KEY,
        token,  # the Basic token of the Authorization header
        base64.b64encode(API_KEY.encode()).decode(),
        "state-pw-77",
        base64.b64encode(b"state-pw-77").decode(),
        "postgresql+psycopg://state:state-pw-77@db/state",
        PASSWORD,  # decoded, as the driver sees it
        quote(PASSWORD, safe=""),  # percent-encoded, as in the URL: p%40ss%3Aw%2Frd%2099
        quote_plus(PASSWORD),  # as a form would encode it: ...%2Frd+99
        base64.b64encode(PASSWORD.encode()).decode(),
        f"postgresql+psycopg://reader:{quote(PASSWORD, safe='')}@db/shop",
        "mysql+pymysql://reader:ab@db/orders",  # its password (and its forms) too short alone
        WEBHOOK,
    }  # the sqlite URL has no password
    assert "ab" not in found
    assert found == sorted(found, key=len, reverse=True)


def test_secrets_of_feeds_redaction(tmp_path: Path) -> None:
    config = parse_config(CONFIG, environ=ENV, base_dir=tmp_path)
    stream = capture("json", secrets=tuple(secrets_of(config)))
    log.info("posting to %s", WEBHOOK, extra={"dsn": config.jobs[0].source.url.get_secret_value()})
    (line,) = json_lines(stream)
    assert line["event"] == "posting to ***"
    assert line["dsn"] == "***"
