"""dbt models as sources: ``model: customers`` looked up in dbt's ``manifest.json``.

dbt writes ``target/manifest.json`` on every ``compile``, ``run`` and ``build``; each
model in it names the relation dbt builds (database, schema, alias). Reading that
file, not importing dbt, keeps dbt out of personyze-sync's dependencies: the manifest
is an artifact a sync can run beside wherever dbt is not installed.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from sync.config.yaml import invalid, suggest

MIN_VERSION = 4  # dbt 1.0: the oldest manifest whose disabled models are a mapping
_VERSION = re.compile(r"/manifest/v(\d+)\.json$")
_NEEDED = ("name", "package_name", "schema", "alias", "config")


@dataclass(frozen=True)
class Model:
    """One dbt model as a source sees it: its names and the relation dbt builds."""

    unique_id: str
    name: str
    database: str | None
    schema: str
    alias: str
    materialized: str

    @property
    def table(self) -> str:
        """``schema.alias``, the form ``source.table`` takes."""
        return f"{self.schema}.{self.alias}"


@dataclass(frozen=True)
class Manifest:
    """What a manifest says about its models, indexed by every way to name one."""

    version: int
    models: dict[str, tuple[Model, ...]]  # name, package.name, name.vN, package.name.vN
    disabled: frozenset[str]  # the same spellings, of disabled models
    names: tuple[str, ...]  # each model's plain name, for "did you mean"


def with_dbt_table(data: Any, base_dir: Path | None) -> Any:
    """A source's raw ``data`` with ``table`` set to its dbt model's relation, if it names one."""
    if not isinstance(data, dict) or ("dbt_manifest" not in data and "model" not in data):
        return data
    manifest, model = data.get("dbt_manifest"), data.get("model")
    if manifest is None:
        raise invalid("'model' names a dbt model: give 'dbt_manifest' too", "model")
    if "table" in data or "query" in data:
        raise invalid("give either 'table', 'query' or 'dbt_manifest', not two", "dbt_manifest")
    if not isinstance(manifest, str) or not manifest.strip():
        raise invalid("expected the path of dbt's manifest.json", "dbt_manifest")
    if not isinstance(model, str) or not model.strip():
        raise invalid("missing required key 'model' (the dbt model to read)")
    url = data.get("url")
    url = url.get_secret_value() if isinstance(url, SecretStr) else url
    table = resolve(manifest, model, url if isinstance(url, str) else None, base_dir)
    return {**data, "table": table}


def resolve(manifest_path: str, model: str, url: str | None, base_dir: Path | None) -> str:
    """The ``schema.alias`` of ``model`` in the manifest at ``manifest_path``.

    Raises a config error at ``dbt_manifest`` (the file) or ``model`` (the name).
    """
    path = Path(manifest_path).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    manifest = _read(path)
    found = manifest.models.get(model, ())
    if not found:
        raise invalid(_missing(model, manifest, path), "model")
    if len(found) > 1:
        ids = ", ".join(m.unique_id for m in found)
        raise invalid(
            f"{len(found)} models are named {model!r} ({ids}); write 'package.{model}'", "model"
        )
    (chosen,) = found
    if chosen.materialized == "ephemeral":
        raise invalid(
            f"model {model!r} is ephemeral: dbt builds no table or view for it "
            "(materialize it as a table, view or incremental model to sync it)",
            "model",
        )
    if "." in chosen.schema or "." in chosen.alias:
        raise invalid(f"model {model!r} is {chosen.table!r}: a '.' in a name is not read", "model")
    if (opened := _database(url)) is not None and chosen.database not in (None, "", opened):
        raise invalid(
            f"model {model!r} is in database {chosen.database!r} but source.url opens "
            f"{opened!r}: point the url at the database dbt builds in",
            "model",
        )
    return chosen.table


def _missing(model: str, manifest: Manifest, path: Path) -> str:
    if model in manifest.disabled:
        return f"model {model!r} is disabled in the dbt project (enabled: false) in {path}"
    near = suggest(model, manifest.names)
    if near:
        return f"no model {model!r} in {path}{near}"
    some = ", ".join(manifest.names[:8]) + (", ..." if len(manifest.names) > 8 else "")
    return f"no model {model!r} in {path}; its models: {some or 'none'}"


def _database(url: str | None) -> str | None:
    """The database a PostgreSQL or DuckDB URL opens, as dbt names it; None elsewhere."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url) if url else None
    except (ArgumentError, ValueError, TypeError):
        return None  # the url's own check says what is wrong with it
    if parsed is None or not parsed.database:
        return None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return parsed.database
    if backend == "duckdb":  # dbt-duckdb names a file's database by its stem
        return "memory" if parsed.database == ":memory:" else Path(parsed.database).stem
    return None  # MySQL and SQLite: dbt's database is not the URL's


def _read(path: Path) -> Manifest:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise invalid(
            f"no file {path} (dbt writes target/manifest.json on compile, run and build)",
            "dbt_manifest",
        ) from None
    except OSError as exc:
        raise invalid(f"cannot read {path}: {exc.strerror}", "dbt_manifest") from None
    return _indexed(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _indexed(path: str, mtime_ns: int, size: int) -> Manifest:
    """The manifest's index, read once per file version (jobs often share one)."""
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except OSError as exc:
        raise invalid(f"cannot read {path}: {exc.strerror}", "dbt_manifest") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise invalid(f"{path} is not JSON{where}: a dbt manifest is", "dbt_manifest") from None
    return _index(document, path)


def _index(document: Any, path: str) -> Manifest:
    version = _schema_version(document, path)
    nodes, disabled = document.get("nodes"), document.get("disabled") or {}
    if not isinstance(nodes, dict) or not isinstance(disabled, dict):
        raise _unreadable(path, version, "its nodes")
    models: dict[str, list[Model]] = {}
    names: dict[str, None] = {}
    for unique_id, node in nodes.items():
        if not isinstance(node, dict) or node.get("resource_type") != "model":
            continue
        if any(not node.get(key) for key in _NEEDED) or not isinstance(node["config"], dict):
            raise _unreadable(path, version, f"node {unique_id}")
        model = Model(
            unique_id=unique_id,
            name=node["name"],
            database=node.get("database"),
            schema=node["schema"],
            alias=node["alias"],
            materialized=str(node["config"].get("materialized", "")),
        )
        names[model.name] = None
        for spelling in _spellings(node):
            models.setdefault(spelling, []).append(model)
    off = {
        spelling
        for found in disabled.values()
        for node in (found if isinstance(found, list) else [])
        if isinstance(node, dict) and node.get("resource_type") == "model"
        for spelling in _spellings(node)
    }
    indexed = {spelling: tuple(found) for spelling, found in models.items()}
    return Manifest(version, indexed, frozenset(off), tuple(sorted(names)))


def _schema_version(document: Any, path: str) -> int:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    schema = metadata.get("dbt_schema_version") if isinstance(metadata, dict) else None
    match = _VERSION.search(schema) if isinstance(schema, str) else None
    if match is None:
        raise invalid(
            f"{path} is not a dbt manifest (no metadata.dbt_schema_version naming a "
            "manifest schema): give the manifest.json dbt writes in its target folder",
            "dbt_manifest",
        )
    version = int(match.group(1))
    if version < MIN_VERSION:
        raise invalid(
            f"{path} is a dbt manifest v{version}, from before dbt 1.0: "
            f"rebuild it with dbt 1.0 or later (manifest v{MIN_VERSION} or newer)",
            "dbt_manifest",
        )
    return version


def _unreadable(path: str, version: int, what: str) -> Exception:
    return invalid(
        f"{path} (a dbt manifest v{version}) does not hold {what} as dbt 1.x writes them",
        "dbt_manifest",
    )


def _spellings(node: dict[str, Any]) -> list[str]:
    """Every name ``model:`` may give a model: a versioned model's plain name is its latest."""
    name, package = str(node.get("name")), str(node.get("package_name"))
    bare = [name, f"{package}.{name}"]
    version = node.get("version")
    if version is None:
        return bare
    versioned = [f"{name}.v{version}", f"{package}.{name}.v{version}"]
    latest = node.get("latest_version")
    return versioned + bare if latest is None or str(latest) == str(version) else versioned
