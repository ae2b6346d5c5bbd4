"""The config contract: what loads, and what each mistake is reported as (file:line: key)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from sync.config import (
    IDENTIFIERS,
    Config,
    ConstantTransform,
    StateSettings,
    TemplateTransform,
    load_config,
    parse_config,
    parse_duration,
    redact_url,
    resolve_file_database,
    suggest,
    to_snake_case,
)
from sync.errors import ConfigError
from sync.sandbox import SandboxServer
from tests import support

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk-TOPSECRET-4242"
PG_PASSWORD = "pw-hunter2-zz"
ENV = {"API_KEY": API_KEY, "PG_PASSWORD": PG_PASSWORD}
SECRETS = (API_KEY, PG_PASSWORD, "hunter2")

# Line numbers in the expectations below refer to this text.
BASE = """\
personyze:
  api_key: ${API_KEY}
jobs:
  - name: customers
    source:
      url: postgresql+psycopg://reader:${PG_PASSWORD}@db/shop
      table: public.customers
      cursor: updated_at
      key: id
    mapping:
      id: internal_id
      email: email
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    """BASE with exactly one line replaced, so a test cannot silently edit nothing."""
    assert text.count(old + "\n") == 1, old
    return text.replace(old + "\n", new + "\n" if new else "")


def parse(text: str, environ: Mapping[str, str] = ENV, base_dir: Path = REPO) -> Config:
    return parse_config(text, source="config.yaml", environ=environ, base_dir=base_dir)


def error_of(text: str, environ: Mapping[str, str] = ENV, base_dir: Path = REPO) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, environ, base_dir)
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, ValidationError)
    return str(info.value)


def assert_no_secret(message: str) -> None:
    for secret in SECRETS:
        assert secret not in message


# (case id, config text, a line the error must contain exactly)
ERRORS = [
    (
        "unknown key, did you mean",
        edit("      cursor: updated_at", "      cursr: updated_at"),
        "config.yaml:8: jobs[0].source.cursr: unknown key (did you mean 'cursor'?)",
    ),
    (
        "missing required key at the parent's line",
        edit("      cursor: updated_at", ""),
        "config.yaml:5: jobs[0].source: missing required key 'cursor' "
        "(or 'detect: diff' for a table without one)",
    ),
    (
        "missing api_key mentions api_key_file",
        edit("  api_key: ${API_KEY}", "  timeout_s: 5"),
        "config.yaml:1: personyze: missing required key 'api_key' (or 'api_key_file')",
    ),
    (
        "missing top-level section",
        edit("personyze:", "other:").replace("  api_key: ${API_KEY}\n", ""),
        "config.yaml:1: other: unknown key",
    ),
    (
        "concurrency out of range",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  concurrency: 500"),
        "config.yaml:3: personyze.concurrency: expected a whole number from 1 to 256 (got 500)",
    ),
    (
        "concurrency not a number",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  concurrency: eight"),
        "config.yaml:3: personyze.concurrency: expected a whole number from 1 to 256 (got 'eight')",
    ),
    (
        "concurrency a bool",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  concurrency: true"),
        "config.yaml:3: personyze.concurrency: expected a whole number from 1 to 256 (got True)",
    ),
    (
        "concurrency a fraction",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  concurrency: 2.5"),
        "config.yaml:3: personyze.concurrency: expected a whole number from 1 to 256 (got 2.5)",
    ),
    (
        "max_attempts out of range",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  max_attempts: 101"),
        "config.yaml:3: personyze.max_attempts: expected a whole number from 1 to 100 (got 101)",
    ),
    (
        "requests_per_second zero",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  requests_per_second: 0"),
        "config.yaml:3: personyze.requests_per_second: "
        "expected a number greater than 0, or null for no ceiling (got 0)",
    ),
    (
        "timeout negative",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  timeout_s: -1"),
        "config.yaml:3: personyze.timeout_s: expected a number greater than 0 (got -1)",
    ),
    (
        "bool field",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  allow_insecure_http: maybe"),
        "config.yaml:3: personyze.allow_insecure_http: expected true or false (got 'maybe')",
    ),
    (
        "base_url not http(s)",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  base_url: ftp://x.example"),
        "config.yaml:3: personyze.base_url: "
        "expected an http(s) URL such as https://app.personyze.com/rest",
    ),
    (
        "plain http to another host",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  base_url: http://api.example"),
        "config.yaml:3: personyze.base_url: plain http would send the API key unencrypted; "
        "use https (or set allow_insecure_http: true)",
    ),
    (
        "unknown personyze key",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  concurency: 4"),
        "config.yaml:3: personyze.concurency: unknown key (did you mean 'concurrency'?)",
    ),
    (
        "cursor and detect: diff",
        edit("      key: id", "      key: id\n      detect: diff"),
        "config.yaml:10: jobs[0].source.detect: give either 'cursor' or 'detect: diff', not both",
    ),
    (
        "detect: something else",
        edit("      cursor: updated_at", "      detect: guess"),
        "config.yaml:8: jobs[0].source.detect: expected one of: cursor or diff (got 'guess')",
    ),
    (
        "diff with a lookback",
        edit("      cursor: updated_at", "      detect: diff\n      lookback: 5m"),
        "config.yaml:9: jobs[0].source.lookback: "
        "a lookback needs a cursor; 'detect: diff' reads every row",
    ),
    (
        "sync mode unknown",
        edit("      email: email", "      email: email\n    sync: replace"),
        "config.yaml:13: jobs[0].sync: expected one of: upsert, update, mirror or add "
        "(got 'replace')",
    ),
    (
        "max_deletes_per_run not a count",
        edit("      email: email", "      email: email\n    max_deletes_per_run: lots"),
        "config.yaml:13: jobs[0].max_deletes_per_run: "
        "expected a count such as 100 or a share such as 1% (got 'lots')",
    ),
    (
        "max_deletes_per_run share over 100%",
        edit("      email: email", "      email: email\n    max_deletes_per_run: 120%"),
        "config.yaml:13: jobs[0].max_deletes_per_run: expected a count such as 100 or a "
        "share such as 1% (a share is between 0% and 100%) (got '120%')",
    ),
    (
        "delete_when with two statements",
        edit("      email: email", "      email: email\n    delete_when: 'x = 1; DROP TABLE t'"),
        "config.yaml:13: jobs[0].delete_when: "
        "expected a SQL condition such as \"deleted_at IS NOT NULL\" (got 'x = 1; DROP TABLE t')",
    ),
    (
        "batch_size out of range",
        edit("      key: id", "      key: id\n      batch_size: 0"),
        "config.yaml:10: jobs[0].source.batch_size: "
        "expected a whole number from 1 to 100000 (got 0)",
    ),
    (
        "lookback not a duration",
        edit("      key: id", "      key: id\n      lookback: 5 parsecs"),
        "config.yaml:10: jobs[0].source.lookback: "
        "expected a duration such as 5m or 1h30m, or a number (got '5 parsecs')",
    ),
    (
        "lookback negative",
        edit("      key: id", "      key: id\n      lookback: -5"),
        "config.yaml:10: jobs[0].source.lookback: "
        "expected a lookback that is not negative (got -5)",
    ),
    (
        "table and query",
        edit("      key: id", "      key: id\n      query: SELECT 1"),
        "config.yaml:10: jobs[0].source.query: give either 'table' or 'query', not both",
    ),
    (
        "neither table nor query",
        edit("      table: public.customers", ""),
        "config.yaml:5: jobs[0].source: missing required key 'table', 'query' or 'dbt_manifest'",
    ),
    (
        "bad table name",
        edit("      table: public.customers", "      table: a.b.c"),
        "config.yaml:7: jobs[0].source.table: "
        "expected a table name, 'name' or 'schema.name' (got 'a.b.c')",
    ),
    (
        "bad source url",
        edit("      url: postgresql+psycopg://reader:${PG_PASSWORD}@db/shop", "      url: nope"),
        "config.yaml:6: jobs[0].source.url: expected a SQLAlchemy database URL "
        "such as postgresql+psycopg://user:password@host:5432/db",
    ),
    (
        "bad job name",
        edit("  - name: customers", "  - name: -customers"),
        "config.yaml:4: jobs[0].name: "
        "expected letters, digits, '_', '.' or '-', starting with a letter or digit "
        "(got '-customers')",
    ),
    (
        "no jobs",
        "personyze:\n  api_key: x\njobs: []\n",
        "config.yaml:3: jobs: expected at least one job",
    ),
    (
        "jobs not a list",
        "personyze:\n  api_key: x\njobs: {name: a}\n",
        "config.yaml:3: jobs: expected a list",
    ),
    (
        "duplicate job name names both lines",
        BASE + BASE[BASE.index("  - name") :],
        "config.yaml:13: jobs[1].name: duplicate job name 'customers', also on line 4",
    ),
    (
        "no identifier lists them",
        edit("      id: internal_id", "      id: custom_i_1").replace(
            "      email: email\n", "      email: custom_i_2\n"
        ),
        "config.yaml:10: jobs[0].mapping: "
        "maps no identifier; map at least one of: user_id, email, internal_id, fb_id",
    ),
    (
        "two sources for one column, after snake_case",
        BASE + "      eMail: Email\n",
        "config.yaml:13: jobs[0].mapping.eMail: 'email' already maps to 'email'",
    ),
    (
        "bad Personyze column name",
        BASE + "      nick: nick name\n",
        "config.yaml:13: jobs[0].mapping.nick: "
        "expected a Personyze column name (letters, digits, _), got 'nick name'",
    ),
    (
        "mapping not a mapping",
        edit("    mapping:", "    mapping: [id]")
        .replace("      id: internal_id\n", "")
        .replace("      email: email\n", ""),
        "config.yaml:10: jobs[0].mapping: expected a mapping (key: value lines)",
    ),
    (
        "transform target not mapped",
        BASE + "    transforms:\n      emial: [strip]\n",
        "config.yaml:14: jobs[0].transforms.emial: 'emial' is not a mapped Personyze column "
        "(did you mean 'email'?); to create a column, start its list with a template or constant",
    ),
    (
        "transform keyed by source column",
        BASE + "    transforms:\n      id: [strip]\n",
        "config.yaml:14: jobs[0].transforms.id: 'id' is not a mapped Personyze column "
        "(did you mean 'internal_id'? transforms are keyed by Personyze column); "
        "to create a column, start its list with a template or constant",
    ),
    (
        "unknown transform",
        BASE + "    transforms:\n      email: [strip,\n        lowr]\n",
        "config.yaml:15: jobs[0].transforms.email[1]: unknown transform 'lowr' "
        "(did you mean 'lower'?); expected one of: strip, lower, upper, str, int, float, bool, "
        "date, datetime, unix, {template: ...} or {constant: ...}",
    ),
    (
        "transform mapping with unknown key",
        BASE + "    transforms:\n      email: [{templat: x}]\n",
        "config.yaml:14: jobs[0].transforms.email[0]: unknown key 'templat' "
        "(did you mean 'template'?); expected one of: strip, lower, upper, str, int, float, "
        "bool, date, datetime, unix, {template: ...} or {constant: ...}",
    ),
    (
        "malformed template",
        BASE + "    transforms:\n      name: [{template: '{first'}]\n",
        "config.yaml:14: jobs[0].transforms.name[0]: "
        "malformed template: expected '}' before end of string",
    ),
    (
        "transforms not a list",
        BASE + "    transforms:\n      email: strip\n",
        "config.yaml:14: jobs[0].transforms.email: expected a list (got 'strip')",
    ),
    (
        "schedule both",
        BASE + "    schedule: {every: 5m, cron: '* * * * *'}\n",
        "config.yaml:13: jobs[0].schedule: give exactly one of 'every' or 'cron'",
    ),
    (
        "schedule neither",
        BASE + "    schedule:\n      jitter: 5s\n",
        "config.yaml:13: jobs[0].schedule: give exactly one of 'every' or 'cron'",
    ),
    (
        "schedule bad every",
        BASE + "    schedule:\n      every: 5 minutes\n",
        "config.yaml:14: jobs[0].schedule.every: expected a duration such as 30s, 5m, 2h, 1d "
        "or 1h30m, or a number of seconds (got '5 minutes')",
    ),
    (
        "schedule every zero",
        BASE + "    schedule:\n      every: 0\n",
        "config.yaml:14: jobs[0].schedule.every: expected a duration greater than 0 (got 0)",
    ),
    (
        "schedule bad cron",
        BASE + "    schedule:\n      cron: '61 * * * *'\n",
        "config.yaml:14: jobs[0].schedule.cron: expected a 5-field crontab such as "
        "'*/5 * * * *' (Error validating expression '61': the last value (61) is higher than "
        "the maximum value (59)) (got '61 * * * *')",
    ),
    (
        "schedule unknown key",
        BASE + "    schedule:\n      every: 5m\n      run_at_strat: false\n",
        "config.yaml:15: jobs[0].schedule.run_at_strat: unknown key (did you mean 'run_at_start'?)",
    ),
    (
        "duplicate YAML key",
        BASE + "      id: user_id\n",
        "config.yaml:13: jobs[0].mapping.id: duplicate key 'id' (first given on line 11)",
    ),
    (
        "malformed YAML",
        edit("jobs:", "jobs: [unclosed"),
        "config.yaml:4: malformed YAML: expected ',' or ']', but got ':'",
    ),
    (
        "tab indentation",
        "personyze:\n\tapi_key: x\n",
        "config.yaml:2: malformed YAML: found character '\\t' that cannot start any token",
    ),
    (
        "environment variable not set",
        BASE.replace("${API_KEY}", "${PERSONYZE_API_KEY}"),
        "config.yaml:2: personyze.api_key: environment variable PERSONYZE_API_KEY is not set",
    ),
    (
        "malformed variable reference",
        BASE.replace("${API_KEY}", "${API_KEY"),
        "config.yaml:2: personyze.api_key: malformed ${...} reference (write $$ for a literal $)",
    ),
    (
        "empty api key from default",
        BASE.replace("${API_KEY}", "${UNSET_KEY:-}"),
        "config.yaml:2: personyze.api_key: must not be empty",
    ),
    (
        "api key and api key file",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  api_key_file: key.txt"),
        "config.yaml:3: personyze.api_key_file: give either 'api_key' or 'api_key_file', not both",
    ),
    (
        "secret file missing",
        edit("  api_key: ${API_KEY}", "  api_key_file: /nonexistent/key.txt"),
        "config.yaml:2: personyze.api_key_file: "
        "cannot read /nonexistent/key.txt: No such file or directory",
    ),
    (
        "unknown _file key",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  apikey_file: x"),
        "config.yaml:3: personyze.apikey_file: unknown key (did you mean 'api_key_file'?)",
    ),
    (
        "empty file",
        "# nothing here\n",
        "config.yaml:1: the config file is empty",
    ),
    (
        "top level not a mapping",
        "- personyze\n",
        "config.yaml:1: expected a mapping of settings at the top level",
    ),
    (
        "section not a mapping",
        edit("  api_key: ${API_KEY}", "").replace("personyze:", "personyze: yes"),
        "config.yaml:1: personyze: expected a mapping (key: value lines) (got True)",
    ),
    (
        "state url",
        BASE + "state:\n  url: ${PG_PASSWORD}\n",
        "config.yaml:14: state.url: expected a SQLAlchemy database URL "
        "such as postgresql+psycopg://user:password@host:5432/db",
    ),
    (
        "templates waiting for each other",
        BASE + "      a: custom_t_1\n      b: custom_t_2\n    transforms:\n"
        '      custom_t_1: [{template: "{b}"}]\n      custom_t_2: [{template: "{a}"}]\n',
        "config.yaml:16: jobs[0].transforms.custom_t_1: templates read each other's columns "
        "in a loop (custom_t_1 -> custom_t_2 -> custom_t_1): a template sees a mapped column "
        "after that column's own transforms",
    ),
    # what a URL's scheme asks for is looked up without connecting (issue 17, item 8)
    (
        "misspelt state store, did you mean",
        BASE + "state:\n  url: sqlit:///state.db\n",
        "config.yaml:14: state.url: the state store must be SQLite or PostgreSQL, not 'sqlit' "
        "(did you mean 'sqlite'?): sqlite:///state/personyze-sync.db or "
        "postgresql+psycopg://user@host/db",
    ),
    (  # a source's unknown database lists every source there is
        "unknown source database, did you mean",
        BASE.replace("postgresql+psycopg://", "postgresq://"),
        "config.yaml:6: jobs[0].source.url: unknown database 'postgresq' (did you mean "
        "'postgresql'?); expected sqlite:///, postgresql://, mysql://, mariadb:// or "
        "duckdb:/// (another database needs its SQLAlchemy dialect installed)",
    ),
    (  # DuckDB reads, but is no state store (one writing process, no leases)
        "a state store in DuckDB",
        BASE + "state:\n  url: duckdb:///state.duckdb\n",
        "config.yaml:14: state.url: the state store must be SQLite or PostgreSQL, not "
        "'duckdb': sqlite:///state/personyze-sync.db or postgresql+psycopg://user@host/db",
    ),
    (
        "unknown driver, did you mean",
        BASE.replace("postgresql+psycopg://", "postgresql+psycopgg://"),
        "config.yaml:6: jobs[0].source.url: unknown driver 'psycopgg' for postgresql "
        "(did you mean 'psycopg'?); known: psycopg, psycopg2, psycopg2cffi, pg8000",
    ),
    (
        "a driver not installed",
        BASE.replace("postgresql+psycopg://", "postgresql+psycopg2://"),
        "config.yaml:6: jobs[0].source.url: the database driver psycopg2 (postgresql+psycopg2) "
        "is not installed: write postgresql:// or postgresql+psycopg:// for psycopg 3, which "
        "personyze-sync installs (or pip install psycopg2-binary)",
    ),
    (
        "an asyncio driver",
        BASE.replace("postgresql+psycopg://", "postgresql+psycopg_async://"),
        "config.yaml:6: jobs[0].source.url: 'postgresql+psycopg_async' is an asyncio driver; "
        "personyze-sync needs a synchronous one (postgresql+psycopg://, mysql+pymysql://, "
        "sqlite:///)",
    ),
    (
        "a state store in MySQL",
        BASE + "state:\n  url: mysql://sync:${PG_PASSWORD}@db/state\n",
        "config.yaml:14: state.url: the state store must be SQLite or PostgreSQL, not 'mysql': "
        "sqlite:///state/personyze-sync.db or postgresql+psycopg://user@host/db",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_error_names_file_line_key_and_expectation(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message.splitlines(), message
    assert_no_secret(message)


def test_every_error_is_reported_once_in_file_order() -> None:
    text = (
        edit("  api_key: ${API_KEY}", "  api_key: ${MISSING}\n  concurrency: 0")
        .replace("      cursor: updated_at\n", "      cursr: updated_at\n")
        .replace("    mapping:\n", "    mapping:\n      x: y\n      x: z\n")
    )
    assert error_of(text).splitlines() == [
        "config.yaml:2: personyze.api_key: environment variable MISSING is not set",
        "config.yaml:3: personyze.concurrency: expected a whole number from 1 to 256 (got 0)",
        "config.yaml:6: jobs[0].source: missing required key 'cursor' "
        "(or 'detect: diff' for a table without one)",
        "config.yaml:9: jobs[0].source.cursr: unknown key (did you mean 'cursor'?)",
        "config.yaml:13: jobs[0].mapping.x: duplicate key 'x' (first given on line 12)",
    ]


# ------------------------------------------------------------------ secrets


SECRET_CASES = [
    ("api key a number", BASE.replace("${API_KEY}", "424242424242"), "424242424242"),
    ("api key a list", BASE.replace("${API_KEY}", "[${API_KEY}]"), API_KEY),
    ("url not a url", BASE.replace("postgresql+psycopg://", "${PG_PASSWORD} "), PG_PASSWORD),
    (
        "base_url with credentials",
        edit("  api_key: ${API_KEY}", "  api_key: x\n  base_url: ftp://u:${PG_PASSWORD}@h"),
        PG_PASSWORD,
    ),
    (
        "secret file content bad url",
        BASE.replace(
            "      url: postgresql+psycopg://reader:${PG_PASSWORD}@db/shop",
            "      url_file: url.txt",
        ),
        "sekrit-from-file",
    ),
    (
        "any value read from a file is not echoed",
        edit("      table: public.customers", "      table_file: table.txt"),
        "sekrit-table",
    ),
    (
        "secret file and key both",
        edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  api_key_file: key.txt"),
        "key-from-file",
    ),
]


@pytest.mark.parametrize(
    ("text", "secret"), [c[1:] for c in SECRET_CASES], ids=[c[0] for c in SECRET_CASES]
)
def test_secrets_never_appear_in_errors(text: str, secret: str, tmp_path: Path) -> None:
    (tmp_path / "url.txt").write_text("not a url sekrit-from-file\n")
    (tmp_path / "key.txt").write_text("key-from-file\n")
    (tmp_path / "table.txt").write_text("bad table sekrit-table\n")
    message = error_of(text, base_dir=tmp_path)
    assert "config.yaml:" in message
    assert secret not in message
    assert_no_secret(message)


def test_secret_values_hidden_in_repr() -> None:
    config = parse(BASE)
    shown = repr(config) + str(config.model_dump()) + config.model_dump_json()
    assert_no_secret(shown)
    assert redact_url(config.jobs[0].source.url.get_secret_value()) == (
        "postgresql+psycopg://reader:***@db/shop"
    )


# ------------------------------------------------------------ what loads


def test_minimal_config_and_defaults() -> None:
    config = parse(BASE)
    assert config.personyze.api_key.get_secret_value() == API_KEY
    assert config.personyze.base_url == "https://app.personyze.com/rest"
    assert (config.personyze.concurrency, config.personyze.requests_per_second) == (8, 50.0)
    assert (config.personyze.timeout_s, config.personyze.max_attempts) == (30.0, 8)
    assert config.personyze.allow_insecure_http is False
    assert config.state.url.get_secret_value() == f"sqlite:///{REPO}/state/personyze-sync.db"
    job = config.job("customers")
    assert job.source.url.get_secret_value() == f"postgresql+psycopg://reader:{PG_PASSWORD}@db/shop"
    assert (job.source.table, job.source.query, job.source.batch_size) == (
        "public.customers",
        None,
        1000,
    )
    assert job.source.lookback == 0
    assert (job.transforms, job.sync, job.schedule) == ({}, "upsert", None)


def test_models_are_frozen() -> None:
    config = parse(BASE)
    with pytest.raises(ValidationError):
        config.personyze.concurrency = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${API_KEY:-fallback}", API_KEY),
        ("pre-${API_KEY}-post", f"pre-{API_KEY}-post"),
        ("'$$literal$$'", "$literal$"),
        ("'$${API_KEY}'", "${API_KEY}"),
        ("a$b", "a$b"),
    ],
)
def test_environment_expansion(value: str, expected: str) -> None:
    config = parse(BASE.replace("${API_KEY}", value), {**ENV, "EMPTY": ""})
    assert config.personyze.api_key.get_secret_value() == expected


class ReadOnlyEnv(Mapping[str, str]):
    """A Mapping that is not a dict, as a caller might pass."""

    def __init__(self, data: dict[str, str]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class DictEnv(dict[str, str]):
    pass


@pytest.mark.parametrize("environ", [ReadOnlyEnv(ENV), DictEnv(ENV)])
def test_environ_may_be_any_mapping(environ: Mapping[str, str]) -> None:
    assert parse(BASE, environ).personyze.api_key.get_secret_value() == API_KEY


def test_numbers_from_environment() -> None:
    text = edit("  api_key: ${API_KEY}", "  api_key: k\n  concurrency: ${C}\n  timeout_s: ${T}")
    config = parse(text, {**ENV, "C": "16", "T": "2.5"})
    assert (config.personyze.concurrency, config.personyze.timeout_s) == (16, 2.5)


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("  key-from-file \n")
    db = tmp_path / "db-url"
    db.write_text("postgresql://u:file-pw@h/d\n")
    text = edit("  api_key: ${API_KEY}", "  api_key_file: secrets/key").replace(
        "      url: postgresql+psycopg://reader:${PG_PASSWORD}@db/shop", f"      url_file: {db}"
    )
    config = parse(text, {}, base_dir=tmp_path)
    assert config.personyze.api_key.get_secret_value() == "key-from-file"
    assert config.jobs[0].source.url.get_secret_value() == "postgresql://u:file-pw@h/d"


def test_unreadable_secret_file_names_relative_path(tmp_path: Path) -> None:
    text = edit("  api_key: ${API_KEY}", "  api_key_file: missing.txt")
    message = error_of(text, base_dir=tmp_path)
    assert message == (
        f"config.yaml:2: personyze.api_key_file: cannot read {tmp_path / 'missing.txt'}: "
        "No such file or directory"
    )


# ------------------------- the API key, for the commands that reach Personyze (item 9)

NO_KEY_ENV = {"PG_PASSWORD": PG_PASSWORD}


def keyless(text: str, environ: Mapping[str, str] = NO_KEY_ENV, base_dir: Path = REPO) -> Config:
    return parse_config(
        text, source="config.yaml", environ=environ, base_dir=base_dir, need_key=False
    )


@pytest.mark.parametrize(
    ("value", "environ", "said"),
    [
        ("${API_KEY}", NO_KEY_ENV, "environment variable API_KEY is not set"),
        ("${API_KEY}", {**NO_KEY_ENV, "API_KEY": ""}, "must not be empty"),
        ("${API_KEY}", {**NO_KEY_ENV, "API_KEY": "  "}, "must not be empty"),
        ("${API_KEY:-}", NO_KEY_ENV, "must not be empty"),
        ("key-${A}-${B}", NO_KEY_ENV, "environment variable A is not set"),
    ],
)
def test_a_key_the_environment_does_not_give_is_no_error_when_not_needed(
    value: str, environ: Mapping[str, str], said: str
) -> None:
    text = BASE.replace("${API_KEY}", value)
    needed = error_of(text, environ)
    assert f"config.yaml:2: personyze.api_key: {said}" in needed.splitlines()
    config = keyless(text, environ)
    assert config.personyze.api_key is None
    with pytest.raises(ConfigError) as asked:
        config.personyze.require_key()
    assert str(asked.value) == needed  # what loading for a command that sends would say
    assert config.jobs[0].source.url.get_secret_value().endswith(f"{PG_PASSWORD}@db/shop")


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_a_secret_file_that_cannot_be_read_or_is_empty_is_no_error_when_not_needed(
    tmp_path: Path, content: str | None
) -> None:
    if content is not None:
        (tmp_path / "key").write_text(content)
    text = edit("  api_key: ${API_KEY}", "  api_key_file: key")
    needed = error_of(text, base_dir=tmp_path)
    config = keyless(text, base_dir=tmp_path)
    assert config.personyze.api_key is None
    with pytest.raises(ConfigError) as asked:
        config.personyze.require_key()
    assert str(asked.value) == needed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            edit("  api_key: ${API_KEY}", "  base_url: https://app.personyze.com/rest"),
            "config.yaml:1: personyze: missing required key 'api_key' (or 'api_key_file')",
        ),
        (BASE.replace("${API_KEY}", "''"), "config.yaml:2: personyze.api_key: must not be empty"),
        (
            BASE.replace("${API_KEY}", "${API_KEY"),
            "config.yaml:2: personyze.api_key: malformed ${...} reference "
            "(write $$ for a literal $)",
        ),
        (
            edit("  api_key: ${API_KEY}", "  api_key: ${API_KEY}\n  api_key_file: key.txt"),
            "config.yaml:3: personyze.api_key_file: give either 'api_key' or 'api_key_file', "
            "not both",
        ),
        (
            BASE.replace("${API_KEY}", "null"),
            "config.yaml:2: personyze.api_key: expected text (put it in quotes)",
        ),
    ],
)
def test_a_key_the_file_itself_gets_wrong_is_an_error_for_every_command(
    text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        keyless(text)
    assert expected in str(info.value).splitlines()


def test_without_the_key_every_other_problem_is_still_reported() -> None:
    text = edit("      cursor: updated_at", "      cursr: updated_at")
    with pytest.raises(ConfigError) as info:
        keyless(text)
    lines = str(info.value).splitlines()
    assert not [line for line in lines if "api_key" in line]
    assert "config.yaml:8: jobs[0].source.cursr: unknown key (did you mean 'cursor'?)" in lines


def test_a_key_that_is_given_is_loaded_whether_needed_or_not() -> None:
    config = keyless(BASE, ENV)
    assert config.personyze.require_key().get_secret_value() == API_KEY
    assert API_KEY not in repr(config)


def test_load_config_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "sync.yaml"
    path.write_text(BASE)
    with pytest.raises(ConfigError, match="environment variable API_KEY is not set"):
        load_config(path, NO_KEY_ENV)
    assert load_config(path, NO_KEY_ENV, need_key=False).personyze.api_key is None


def test_nothing_can_send_without_the_key() -> None:
    """The one place the key is used, the client, asks for it: with none, it says why."""
    from sync.load.client import PersonyzeClient
    from sync.logs import secrets_of

    config = keyless(BASE)
    with pytest.raises(ConfigError) as info:
        PersonyzeClient(config.personyze)
    assert (
        str(info.value)
        == "config.yaml:2: personyze.api_key: environment variable API_KEY is not set"
    )
    assert PG_PASSWORD in secrets_of(config)  # the database passwords are still masked


@pytest.mark.parametrize(
    "url", ["http://localhost:8080/rest", "http://127.0.0.5/rest", "http://[::1]:9/"]
)
def test_plain_http_allowed_to_loopback(url: str) -> None:
    text = edit("  api_key: ${API_KEY}", f"  api_key: k\n  base_url: {url}")
    assert parse(text).personyze.base_url == url.rstrip("/")


def test_plain_http_allowed_when_insecure_http_allowed() -> None:
    text = edit(
        "  api_key: ${API_KEY}",
        "  api_key: k\n  base_url: http://api.example/rest/\n  allow_insecure_http: true",
    )
    assert parse(text).personyze.base_url == "http://api.example/rest"


def test_no_rate_ceiling() -> None:
    text = edit("  api_key: ${API_KEY}", "  api_key: k\n  requests_per_second: null")
    assert parse(text).personyze.requests_per_second is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5m", timedelta(minutes=5)), ("1h30m", timedelta(minutes=90)), (300, 300), (2.5, 2.5)],
)
def test_lookback(value: object, expected: object) -> None:
    text = edit("      key: id", f"      key: id\n      lookback: {value}")
    assert parse(text).jobs[0].source.lookback == expected


def test_mapping_and_transforms_normalised_to_snake_case() -> None:
    text = (
        BASE
        + "      first: firstName\n      on: custom_i_1\n    transforms:\n"
        + "      firstName: [strip]\n"
        + "      fullName: [{template: '{first} {last}'}, strip]\n"
        + "      channel: [{constant: web}]\n"
    )
    job = parse(text).jobs[0]
    assert job.mapping == {
        "id": "internal_id",
        "email": "email",
        "first": "first_name",
        "on": "custom_i_1",  # a YAML 1.1 boolean word stays a column name
    }
    assert job.transforms == {
        "first_name": ["strip"],
        "full_name": [TemplateTransform(template="{first} {last}"), "strip"],
        "channel": [ConstantTransform(constant="web")],
    }
    assert job.source_columns() == ("id", "email", "first", "on", "last")


def test_template_may_create_the_identifier() -> None:
    text = edit("      id: internal_id", "      id: custom_i_1").replace(
        "      email: email\n", "      handle: custom_i_2\n"
    )
    text += "    transforms:\n      email: [{template: '{handle}@example.com'}]\n"
    assert parse(text).jobs[0].transforms["email"] == [
        TemplateTransform(template="{handle}@example.com")
    ]


@pytest.mark.parametrize(
    ("schedule", "every", "cron"),
    [
        ("{every: 5m}", timedelta(minutes=5), None),
        ("{every: 90}", timedelta(seconds=90), None),
        ("{cron: '*/5 * * * *', jitter: 30s}", None, "*/5 * * * *"),
    ],
)
def test_schedule(schedule: str, every: timedelta | None, cron: str | None) -> None:
    got = parse(BASE + f"    schedule: {schedule}\n").jobs[0].schedule
    assert got is not None
    assert (got.every, got.cron, got.run_at_start) == (every, cron, True)


def test_yaml_anchors_and_merge_keys() -> None:
    text = (
        BASE
        + "    schedule: &every {every: 1m}\n"
        + BASE[BASE.index("  - name") :].replace("name: customers", "name: second")
        + "    schedule: *every\n"
    )
    config = parse(text)
    assert config.jobs[1].schedule == config.jobs[0].schedule
    merged = "x: &base {every: 5m, run_at_start: false}\n"
    text = merged + BASE.replace("\nx:", "") + "    schedule:\n      <<: *base\n      every: 1m\n"
    message = error_of(text)  # the anchor host 'x' is not a config key
    assert message == "config.yaml:1: x: unknown key"


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    message = error_of("\n".join(lines) + "\n")
    assert message.startswith("config.yaml:") and "more than 100000 values" in message


def test_job_lookup() -> None:
    config = parse(BASE + BASE[BASE.index("  - name") :].replace("customers", "orders"))
    assert config.job("orders").name == "orders"
    with pytest.raises(ConfigError) as info:
        config.job("custmers")
    assert (
        str(info.value)
        == "no job named 'custmers' (did you mean 'customers'?); jobs: customers, orders"
    )


def test_load_config_reads_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("API_KEY", "from-os-environ")
    monkeypatch.setenv("PG_PASSWORD", "pw")
    assert load_config(path).personyze.api_key.get_secret_value() == "from-os-environ"
    assert load_config(str(path), ENV).personyze.api_key.get_secret_value() == API_KEY
    path.write_text(BASE.replace("cursor:", "cursr:"))
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert (
        f"{path}:8: jobs[0].source.cursr: unknown key (did you mean 'cursor'?)"
        in str(info.value).splitlines()
    )


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_example_config_loads() -> None:
    env = {"PERSONYZE_API_KEY": "k", "PG_PASSWORD": "p", "MYSQL_PASSWORD": "m"}
    config = load_config(REPO / "config" / "personyze-sync.example.yaml", env)
    names = [job.name for job in config.jobs]
    assert names[:3] == ["customers", "mysql-orders", "loyalty"] and "recent-buyers" in names
    pg, mysql, loyalty = config.jobs[:3]
    buyers = config.job("recent-buyers")
    assert (buyers.object, buyers.sync, buyers.users_job) == ("audience", "mirror", "customers")
    assert (loyalty.source.detect, loyalty.source.cursor, loyalty.sync) == ("diff", None, "mirror")
    assert str(pg.max_deletes_per_run) == "1%" and pg.delete_when == "deleted_at IS NOT NULL"
    assert pg.source.table == "public.customers" and mysql.source.query is not None
    assert mysql.source.url.get_secret_value().startswith("mysql+pymysql://reader:m@")
    assert isinstance(pg.transforms["full_name"][0], TemplateTransform)
    assert isinstance(pg.transforms["signup_channel"][0], ConstantTransform)
    assert mysql.mapping["lifetime_value"] == "custom_float1"


def test_example_config_names_its_variables() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "config" / "personyze-sync.example.yaml", {})
    message = str(info.value)
    for name in ("PERSONYZE_API_KEY", "PG_PASSWORD", "MYSQL_PASSWORD"):
        assert f"environment variable {name} is not set" in message


# --------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("45", timedelta(seconds=45)),
        (45, timedelta(seconds=45)),
        (0.5, timedelta(milliseconds=500)),
    ],
)
def test_parse_duration(text: str | int | float, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "m5", "5x", "-5m", "5m-", "5 minutes", -1, True, float("inf")]
)
def test_parse_duration_refuses(text: str | int | float) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("firstName", "first_name"),
        ("custom_i_1", "custom_i_1"),
        ("userID", "user_id"),
        ("HTTPStatus", "http_status"),
        ("email", "email"),
        ("FbId", "fb_id"),
    ],
)
def test_to_snake_case(name: str, expected: str) -> None:
    assert to_snake_case(name) == expected


def test_suggest() -> None:
    assert suggest("emial", IDENTIFIERS) == " (did you mean 'email'?)"
    assert suggest("zzz", IDENTIFIERS) == ""


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("sqlite:///state.db", "sqlite:///state.db"),
        ("not a url pw", "<unparseable url>"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("value", "text", "allowed"),
    [
        (5, "5", {0: 5, 1000: 5}),
        ("0", "0", {0: 0, 1000: 0}),
        ("1%", "1%", {0: 1, 50: 1, 1000: 10, 1999: 19}),
        ("0%", "0%", {1000: 0}),
        ("100%", "100%", {3: 3}),
        ("2.5%", "2.5%", {1000: 25}),
    ],
)
def test_max_deletes_per_run(value: object, text: str, allowed: dict[int, int]) -> None:
    job = parse(
        edit("      email: email", f"      email: email\n    max_deletes_per_run: {value}")
    ).jobs[0]
    assert str(job.max_deletes_per_run) == text
    assert {known: job.max_deletes_per_run.allowed(known) for known in allowed} == allowed


def test_diff_mode_orders_by_the_key_and_deletes_default_to_10_percent() -> None:
    job = parse(edit("      cursor: updated_at", "      detect: diff")).jobs[0]
    assert (job.source.cursor, job.source.order_column, job.sync) == (None, "id", "upsert")
    assert str(job.max_deletes_per_run) == "10%" and job.delete_when is None


# ------------------------------------------- relative paths: the config's folder


def sqlite_config(state: str | None, source: str = "sqlite:///data/shop.db") -> str:
    """BASE with a SQLite source and ``state.url`` (no ``state:`` at all when None)."""
    text = BASE.replace("postgresql+psycopg://reader:${PG_PASSWORD}@db/shop", source)
    return text if state is None else text + f"state:\n  url: {state}\n"


def test_the_same_config_from_two_working_directories_finds_one_state_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cron bug: run from $HOME, a relative SQLite path made a second, empty store."""
    root = tmp_path.resolve()  # the working directory is reported with symlinks resolved
    (root / "conf").mkdir()
    (root / "home" / "deeper").mkdir(parents=True)
    path = root / "conf" / "sync.yaml"
    path.write_text(sqlite_config("sqlite:///state/personyze-sync.db"))
    monkeypatch.chdir(root / "conf")
    here = load_config("sync.yaml", ENV)
    monkeypatch.chdir(root / "home" / "deeper")
    away = load_config("../../conf/sync.yaml", ENV)
    monkeypatch.chdir(root)
    absolute = load_config(path, ENV)
    expected = f"sqlite:///{root}/conf/state/personyze-sync.db"
    for config in (here, away, absolute):
        assert config.state.url.get_secret_value() == expected
        assert config.jobs[0].source.url.get_secret_value() == f"sqlite:///{root}/conf/data/shop.db"


def test_the_default_state_store_is_in_the_config_files_folder(tmp_path: Path) -> None:
    config = parse(sqlite_config(None), base_dir=tmp_path)
    assert config.state.url.get_secret_value() == f"sqlite:///{tmp_path}/state/personyze-sync.db"
    # a model built in code knows no config file: its default stays as written
    assert StateSettings().url.get_secret_value() == "sqlite:///state/personyze-sync.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/personyze/state.db",
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite+pysqlite:////abs/x.db?timeout=5",
        "sqlite:///file:/abs/x.db?mode=ro&uri=true",
        "sqlite:///file:mem?mode=memory&uri=true",
        "postgresql+psycopg://sync:pw-hunter2-zz@db:5432/sync",
        "mysql+pymysql://reader:pw-hunter2-zz@db/relative/path",
    ],
)
def test_absolute_in_memory_and_other_database_urls_are_kept(url: str, tmp_path: Path) -> None:
    state = "sqlite://" if url.startswith("mysql") else url  # no state store in MySQL
    config = parse(sqlite_config(f"'{state}'", source=f"'{url}'"), base_dir=tmp_path)
    assert config.state.url.get_secret_value() == state
    assert config.jobs[0].source.url.get_secret_value() == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///state.db", "sqlite:////cfg/state.db"),
        ("sqlite:///../up/s.db", "sqlite:////up/s.db"),
        ("sqlite+pysqlite:///s.db?timeout=5", "sqlite+pysqlite:////cfg/s.db?timeout=5"),
        ("sqlite:///file:s.db?mode=ro&uri=true", "sqlite:///file:/cfg/s.db?mode=ro&uri=true"),
    ],
)
def test_a_relative_sqlite_path_is_made_absolute(url: str, expected: str) -> None:
    assert resolve_file_database(url, Path("/cfg")) == expected


def test_a_relative_sqlite_url_read_from_a_file_is_resolved_too(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "shop-url").write_text("sqlite:///data/shop.db\n")
    text = sqlite_config(None).replace("url: sqlite:///data/shop.db", "url_file: secrets/shop-url")
    config = parse(text, base_dir=tmp_path)
    assert config.jobs[0].source.url.get_secret_value() == f"sqlite:///{tmp_path}/data/shop.db"


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"])
def test_a_mysql_url_without_pymysql_names_the_extra_to_install(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)  # as if PyMySQL were not installed
    text = BASE.replace("postgresql+psycopg://", f"{scheme}://")
    driver = scheme.partition("+")[0] + "+pymysql"
    assert (
        f"config.yaml:6: jobs[0].source.url: the database driver PyMySQL ({driver}) is not "
        "installed: pip install 'personyze-sync[mysql]'"
    ) in error_of(text).splitlines()


def test_a_driver_that_fails_to_load_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def broken(name: str, *args: object, **kwargs: object) -> object:
        if name == "pymysql":
            raise ImportError("libsomething.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    message = error_of(BASE.replace("postgresql+psycopg://", "mysql://"))
    assert (
        "config.yaml:6: jobs[0].source.url: the database driver PyMySQL (mysql+pymysql) "
        "cannot be loaded: libsomething.so: cannot open shared object file"
    ) in message.splitlines()
    assert_no_secret(message)


def test_every_url_problem_is_reported_with_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)
    text = edit("      table: public.customers", "      table: public.customers\n      tabel: x")
    text = text.replace("postgresql+psycopg://", "mysql://") + "state:\n  url: sqlit://\n"
    lines = error_of(text).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "jobs[0].source.url",
        "jobs[0].source.tabel",
        "state.url",
    ]
    assert_no_secret("\n".join(lines))


def test_the_config_and_the_engines_mean_one_driver_by_a_plain_scheme() -> None:
    from sync.config.drivers import DEFAULT_DRIVERS
    from sync.databases import DRIVERS

    assert DEFAULT_DRIVERS == DRIVERS


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:pw@db/shop",
        "postgresql://u:pw@db/shop",
        "postgresql+psycopg://u:pw@db/shop",
        "mysql://u:pw@db/shop",
        "mariadb+pymysql://u:pw@db/shop",
        "sqlite:///shop.db",
        "sqlite+pysqlite:///shop.db",
    ],
)
def test_urls_whose_driver_is_installed_load(url: str) -> None:
    text = BASE.replace("postgresql+psycopg://reader:${PG_PASSWORD}@db/shop", url)
    assert parse(text).jobs[0].source.url.get_secret_value().startswith(url.split("/")[0])


def test_a_bad_state_url_is_not_echoed(tmp_path: Path) -> None:
    message = error_of(sqlite_config("'sqlite+pw-hunter2-zz:://x'"), base_dir=tmp_path)
    assert "state.url: expected a SQLAlchemy database URL" in message
    assert_no_secret(message)


def test_the_cli_finds_one_store_from_any_working_directory(tmp_path: Path) -> None:
    """The real console script, started in two folders: one store, in the config's folder."""
    conf, cron_home, elsewhere = tmp_path / "conf", tmp_path / "home", tmp_path / "elsewhere"
    for folder in (conf, cron_home, elsewhere):
        folder.mkdir()
    support.make_customers(f"sqlite:///{conf}/shop.db", range(1, 6))
    with SandboxServer(support.API_KEY) as sandbox:
        doc = support.config_doc(
            source_url="sqlite:///shop.db",
            api_url=sandbox.url,
            state_url="sqlite:///state/sync.db",
        )
        config = support.write_config(conf / "sync.yaml", doc)
        script = support.script()
        env = {**os.environ, "TEST_API_KEY": support.API_KEY}

        def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
            done = subprocess.run(
                [script, *args, "-c", str(config)],
                cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            return done

        run("once", cwd=cron_home)
        (status,) = json.loads(run("status", "--json", cwd=elsewhere).stdout)
    assert (conf / "state" / "sync.db").is_file()
    assert status["rows_known"] == 5 and status["checkpoint"] is not None
    assert not (cron_home / "state").exists() and not (elsewhere / "state").exists()
