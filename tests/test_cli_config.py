"""What the config check means on the command line (issue 17, items 8 and 14).

Plain ``validate`` checks what needs no network: a URL whose driver is not installed,
an unknown database scheme or driver, a state store of the wrong kind. A template
sees the transformed values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import DB_PASSWORD, change_customers, customers


def line_of(path: str, needle: str) -> int:
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def edit(config: str, change: Callable[[dict[str, Any]], None]) -> str:
    """The config file with ``change`` applied to its document."""
    doc = yaml.safe_load(Path(config).read_text())
    change(doc)
    Path(config).write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def set_state_url(url: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        doc["state"]["url"] = url

    return change


# -- item 8: plain validate checks what needs no network ----------------------------------


@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql", "mariadb"])
def test_validate_names_a_driver_that_is_not_installed(cli, setup, sandbox, monkeypatch, scheme):
    monkeypatch.setitem(sys.modules, "pymysql", None)  # as if PyMySQL were not installed
    config = setup(rows=None, source_url=f"{scheme}://reader:{DB_PASSWORD}@127.0.0.1:1/shop")
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    line = line_of(config, f"{scheme}://")
    assert f"{config}:{line}: jobs[0].source.url: " in result.err
    assert "PyMySQL" in result.err
    assert "pip install 'personyze-sync[mysql]'" in result.err
    assert "reader" not in result.text
    assert result.out == ""
    assert sandbox.requests == []


def test_validate_names_duckdb_when_it_is_not_installed(cli, setup, sandbox, monkeypatch):
    monkeypatch.delitem(sys.modules, "duckdb_engine", raising=False)  # imported afresh
    monkeypatch.setitem(sys.modules, "duckdb", None)  # as if duckdb were not installed
    config = setup(rows=None, source_url="duckdb:///warehouse.duckdb")
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    line = line_of(config, "duckdb:///")
    assert f"{config}:{line}: jobs[0].source.url: " in result.err
    assert "pip install 'personyze-sync[duckdb]'" in result.err
    assert sandbox.requests == []


def test_validate_refuses_an_unknown_scheme_with_a_suggestion(cli, setup, sandbox, tmp_path):
    config = edit(setup(), set_state_url(f"sqlit:///{tmp_path}/state.db"))
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    line = line_of(config, "sqlit:///")
    assert f"{config}:{line}: state.url: " in result.err
    assert "did you mean 'sqlite'" in result.err
    assert not (tmp_path / "state.db").exists()
    assert sandbox.requests == []


def test_validate_refuses_a_state_store_that_is_neither_sqlite_nor_postgresql(cli, setup, sandbox):
    config = edit(setup(), set_state_url(f"mysql+pymysql://sync:{DB_PASSWORD}@127.0.0.1:1/st"))
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    line = line_of(config, "mysql+pymysql://")
    assert f"{config}:{line}: state.url: " in result.err
    assert "SQLite or PostgreSQL" in result.err
    assert "sync:" not in result.text


def test_validate_reports_every_such_problem_at_once(cli, setup, sandbox, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pymysql", None)
    config = setup(rows=None, source_url=f"mysql://reader:{DB_PASSWORD}@127.0.0.1:1/shop")
    edit(config, set_state_url(f"sqlit:///{tmp_path}/state.db"))
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    assert "state.url: " in result.err
    assert "jobs[0].source.url: " in result.err


# -- item 14: templates see the transformed values ----------------------------------------


def test_a_template_sees_the_transformed_values(cli, setup, sqlite_url, sandbox):
    config = setup()
    change_customers(sqlite_url, customers.c.id == 1, first_name=" Ada", last_name="  Lovelace ")

    def transforms(doc: dict[str, Any]) -> None:
        doc["jobs"][0]["transforms"] = {
            "first_name": ["strip"],
            "last_name": ["strip"],
            "full_name": [{"template": "{first_name} {last_name}"}],
        }

    edit(config, transforms)
    result = cli("once", "-c", config)
    assert result.code == 0, result.text
    (ada,) = [u for u in sandbox.users() if str(u["internal_id"]) == "1"]
    assert ada["last_name"] == "Lovelace"
    assert ada["full_name"] == "Ada Lovelace"


def test_validate_refuses_templates_that_wait_for_each_other(cli, setup, sandbox):
    config = setup()

    def loop(doc: dict[str, Any]) -> None:
        doc["jobs"][0]["transforms"] = {
            "first_name": [{"template": "{last_name}"}],
            "last_name": [{"template": "{first_name}"}],
        }

    edit(config, loop)
    result = cli("validate", "-c", config)
    assert result.code == 2, result.text
    line = line_of(config, "- template: '{last_name}'") - 1  # the key above its list
    assert (
        f"{config}:{line}: jobs[0].transforms.first_name: templates read each other's columns "
        "in a loop (first_name -> last_name -> first_name)"
    ) in result.err
    assert sandbox.requests == []
