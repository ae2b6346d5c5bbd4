"""dbt models as sources: ``dbt_manifest`` + ``model`` resolve to the model's relation.

The manifest is the one ``dbt build`` (dbt-core 1.10, dbt-duckdb 1.9) wrote for the
project in ``tests/dbt_project`` (macros and docs emptied; see its README); the error
cases are that manifest with one thing changed.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sync import Sync, load_config
from sync.config import parse_config
from sync.errors import ConfigError
from sync.sandbox import SandboxServer
from tests.support import (
    API_KEY,
    Daemon,
    config_doc,
    execute,
    make_customers,
    wait_until,
    write_config,
    writer,
)

MANIFEST = Path(__file__).parent / "dbt_project" / "target" / "manifest.json"
ENV = {"API_KEY": API_KEY}


def config(model: str, *, url: str = "duckdb:///warehouse.duckdb", extra: str = "") -> str:
    return f"""\
personyze:
  api_key: ${{API_KEY}}
jobs:
  - name: customers
    source:
      url: {url}
      dbt_manifest: target/manifest.json
      model: {model}
      cursor: updated_at
      key: customer_id
{extra}    mapping:
      customer_id: internal_id
      email: email
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding a config's dbt manifest at ``target/manifest.json``."""
    (tmp_path / "target").mkdir()
    shutil.copy(MANIFEST, tmp_path / "target" / "manifest.json")
    return tmp_path


def table_of(project: Path, text: str) -> str | None:
    loaded = parse_config(text, source="config.yaml", environ=ENV, base_dir=project)
    return loaded.jobs[0].source.table


def problem(project: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="config.yaml", environ=ENV, base_dir=project)
    return str(caught.value)


def edit_manifest(project: Path, change: Any) -> None:
    path = project / "target" / "manifest.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("model", "table"),
    [
        ("customers", "analytics.dim_customers"),  # the alias, not the model's name
        ("shop.customers", "analytics.dim_customers"),  # package.name
        ("orders", "analytics.orders"),  # a view
        ("accounts", "analytics.accounts_v2"),  # a versioned model: its latest version
        ("accounts.v1", "analytics.accounts_v1"),
        ("shop.accounts.v1", "analytics.accounts_v1"),
    ],
)
def test_a_model_resolves_to_the_relation_dbt_builds(project: Path, model: str, table: str) -> None:
    assert table_of(project, config(model)) == table


def test_the_manifest_path_is_relative_to_the_config_file(project: Path, tmp_path: Path) -> None:
    path = project / "sync.yaml"
    path.write_text(config("customers"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert load_config(path, environ=ENV).jobs[0].source.table == "analytics.dim_customers"
    moved = elsewhere / "sync.yaml"
    path.rename(moved)
    with pytest.raises(ConfigError, match=f"no file {elsewhere}/target/manifest.json"):
        load_config(moved, environ=ENV)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            "custmers",
            "config.yaml:8: jobs[0].source.model: no model 'custmers' in {manifest} "
            "(did you mean 'customers'?)",
        ),
        (
            "zzz",
            "config.yaml:8: jobs[0].source.model: no model 'zzz' in {manifest}; "
            "its models: accounts, customers, orders, stg_customers",
        ),
        (
            "stg_customers",
            "config.yaml:8: jobs[0].source.model: model 'stg_customers' is ephemeral: dbt "
            "builds no table or view for it (materialize it as a table, view or incremental "
            "model to sync it)",
        ),
        (
            "legacy_customers",
            "config.yaml:8: jobs[0].source.model: model 'legacy_customers' is disabled in the "
            "dbt project (enabled: false) in {manifest}",
        ),
        ("accounts.v3", "config.yaml:8: jobs[0].source.model: no model 'accounts.v3' in"),
    ],
)
def test_a_model_that_cannot_be_read_is_named_at_its_line(
    project: Path, model: str, expected: str
) -> None:
    manifest = project / "target" / "manifest.json"
    assert expected.format(manifest=manifest) in problem(project, config(model))


def test_a_model_in_two_packages_asks_for_the_package(project: Path) -> None:
    def add_package(document: dict[str, Any]) -> None:
        twin = dict(document["nodes"]["model.shop.customers"], package_name="crm")
        document["nodes"]["model.crm.customers"] = twin

    edit_manifest(project, add_package)
    assert problem(project, config("customers")) == (
        "config.yaml:8: jobs[0].source.model: 2 models are named 'customers' "
        "(model.shop.customers, model.crm.customers); write 'package.customers'"
    )
    assert table_of(project, config("crm.customers")) == "analytics.dim_customers"


def test_a_model_in_another_database_than_the_url_opens_is_refused(project: Path) -> None:
    message = problem(project, config("customers", url="duckdb:///other.duckdb"))
    assert message == (
        "config.yaml:8: jobs[0].source.model: model 'customers' is in database 'warehouse' "
        "but source.url opens 'other': point the url at the database dbt builds in"
    )
    pg = config("customers", url="postgresql+psycopg://reader@db/shop")
    assert "is in database 'warehouse' but source.url opens 'shop'" in problem(project, pg)
    # MySQL has no database apart from its schemas: nothing to compare
    assert table_of(project, config("customers", url="mysql+pymysql://reader@db/shop"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no file {manifest} (dbt writes target/manifest.json on compile, run and build)"),
        ("{not json", "{manifest} is not JSON at line 1: a dbt manifest is"),
        ('{"nodes": {}}', "{manifest} is not a dbt manifest (no metadata.dbt_schema_version"),
        (
            '{"metadata": {"dbt_schema_version": '
            '"https://schemas.getdbt.com/dbt/manifest/v3.json"}, "nodes": {}}',
            "{manifest} is a dbt manifest v3, from before dbt 1.0: rebuild it with dbt 1.0 "
            "or later (manifest v4 or newer)",
        ),
        (
            '{"metadata": {"dbt_schema_version": '
            '"https://schemas.getdbt.com/dbt/manifest/v12.json"}, '
            '"nodes": {"model.a.b": {"resource_type": "model", "name": "b"}}}',
            "{manifest} (a dbt manifest v12) does not hold node model.a.b as dbt 1.x writes",
        ),
    ],
)
def test_a_manifest_that_cannot_be_read_is_named_at_its_line(
    project: Path, content: str | None, expected: str
) -> None:
    manifest = project / "target" / "manifest.json"
    if content is None:
        manifest.unlink()
    else:
        manifest.write_text(content)
    message = problem(project, config("customers"))
    assert message.startswith("config.yaml:7: jobs[0].source.dbt_manifest: "), message
    assert expected.format(manifest=manifest) in message


@pytest.mark.parametrize(
    ("extra", "model", "expected"),
    [
        (
            "      table: customers\n",
            "customers",
            "jobs[0].source.dbt_manifest: give either 'table', 'query' or 'dbt_manifest', not two",
        ),
        ("", "''", "jobs[0].source: missing required key 'model' (the dbt model to read)"),
    ],
)
def test_a_source_names_its_table_one_way(
    project: Path, extra: str, model: str, expected: str
) -> None:
    text = config(model).replace("      cursor:", extra + "      cursor:")
    assert expected in problem(project, text)


def test_a_model_without_a_manifest_says_what_is_missing(project: Path) -> None:
    text = config("customers").replace("      dbt_manifest: target/manifest.json\n", "")
    assert problem(project, text) == (
        "config.yaml:7: jobs[0].source.model: 'model' names a dbt model: give 'dbt_manifest' too"
    )


def test_a_dbt_model_syncs_from_the_relation_dbt_built(
    project: Path, state_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the DuckDB file dbt-duckdb names 'warehouse', the model's alias read."""
    url = f"duckdb:///{project}/warehouse.duckdb"
    make_customers(url, range(1, 41))
    engine = writer(url)
    with engine.begin() as conn:  # where dbt builds the customers model: analytics.dim_customers
        conn.execute(text("CREATE SCHEMA analytics"))
        conn.execute(
            text(
                "CREATE TABLE analytics.dim_customers AS SELECT id AS customer_id, email, "
                "first_name, updated_at FROM customers"
            )
        )
        conn.execute(text("DROP TABLE customers"))
    engine.dispose()
    doc = config_doc(
        source_url="duckdb:///warehouse.duckdb",
        api_url=sandbox.url,
        state_url=state_url,
        source={"dbt_manifest": "target/manifest.json", "model": "customers", "key": "customer_id"},
    )
    del doc["jobs"][0]["source"]["table"]
    doc["jobs"][0]["mapping"] = {"customer_id": "internal_id", "email": "email"}
    monkeypatch.setenv("TEST_API_KEY", API_KEY)
    with Sync(load_config(write_config(project / "sync.yaml", doc))) as sync:
        result = sync.once("customers")
    result.raise_for_failure()
    assert result["customers"].sent == 40
    assert sorted(int(user["internal_id"]) for user in sandbox.users()) == list(range(1, 41))


def test_a_running_daemon_follows_a_rebuilt_manifest_on_sighup(
    project: Path, sqlite_url: str, sandbox: SandboxServer, daemons: list[Daemon]
) -> None:
    """dbt builds the model under a new alias: the daemon reads the new relation once
    SIGHUP reloads its config, from the job's checkpoint (SQLite: no database to match)."""

    def built_as(alias: str) -> None:
        def place(document: dict[str, Any]) -> None:
            document["nodes"]["model.shop.customers"].update(schema="main", alias=alias)

        edit_manifest(project, place)
        select = "SELECT id AS customer_id, email, updated_at FROM customers"
        execute(sqlite_url, text(f"CREATE TABLE {alias} AS {select}"))

    make_customers(sqlite_url, range(1, 6))
    built_as("dim_customers")
    doc = config_doc(
        source_url=sqlite_url,
        api_url=sandbox.url,
        state_url=f"sqlite:///{project}/state.db",
        source={"dbt_manifest": "target/manifest.json", "model": "customers", "key": "customer_id"},
        job={"schedule": {"every": "1s"}},
    )
    del doc["jobs"][0]["source"]["table"]
    doc["jobs"][0]["mapping"] = {"customer_id": "internal_id", "email": "email"}
    daemon = Daemon(write_config(project / "sync.yaml", doc), project / "daemon.log")
    daemons.append(daemon)
    wait_until(lambda: len(sandbox.users()) == 5, what="the model's rows")

    make_customers(sqlite_url, [7, 8])  # updated after the checkpoint (row 6 would not be)
    built_as("customers_v2")  # rows 7 and 8 are only in the new relation
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: len(sandbox.users()) == 7, what="the rows of the model's new relation")
    assert '"config reloaded"' in daemon.logs()
    assert sorted(int(user["internal_id"]) for user in sandbox.users()) == [1, 2, 3, 4, 5, 7, 8]
