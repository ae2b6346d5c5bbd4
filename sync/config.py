"""The config file, checked once at the edge and then only read.

Everything the YAML may say is a frozen pydantic model here. ``load_config`` is the
only place that reads the environment or secret files; every problem it finds is
reported at once, each as ``FILE:LINE: key.path: what was expected``, and never with
a secret in it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync import yamlsource
from sync.errors import ConfigError
from sync.urls import redact_url as redact_url  # public here: others import it from config
from sync.urls import userinfo_problem
from sync.yamlsource import invalid as _fail
from sync.yamlsource import suggest as suggest  # public here: other modules use it for columns

IDENTIFIERS = ("user_id", "email", "internal_id", "fb_id")
SIMPLE_TRANSFORMS = (
    "strip", "lower", "upper", "str", "int", "float", "bool", "date", "datetime", "unix",
)  # fmt: skip
# Keys whose values are never quoted back in an error, wherever they appear.
_SECRET_KEYS = frozenset({"api_key", "url", "base_url", "webhook_url"})


# --------------------------------------------------------------------- helpers


def to_snake_case(name: str) -> str:
    """``firstName`` -> ``first_name``: Personyze's columns are snake_case."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name.strip())
    return spaced.lower()


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|[smhdw])")
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def parse_duration(text: str | int | float) -> timedelta:
    """``"1h30m"`` / ``"30s"`` / ``300`` (seconds) -> timedelta; ValueError if not one."""
    expected = "expected a duration such as 30s, 5m, 2h, 1d or 1h30m, or a number of seconds"
    if isinstance(text, bool):
        raise ValueError(expected)
    if isinstance(text, str):
        compact = text.strip().lower().replace(" ", "")
        if _NUMBER.fullmatch(compact):
            seconds = float(compact)
        elif compact and _DURATION.sub("", compact) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(compact))
        else:
            raise ValueError(expected)
    elif isinstance(text, int | float):
        seconds = float(text)
    else:
        raise ValueError(expected)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("expected a duration that is not negative")
    return timedelta(seconds=seconds)


def _whole_number(value: Any, low: int, high: int) -> int:
    expected = f"expected a whole number from {low} to {high}"
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(expected)
    return value


def _positive_number(value: Any, expected: str = "expected a number greater than 0") -> float:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(expected)
    if not math.isfinite(value) or value <= 0:
        raise _fail(expected)
    return float(value)


def resolve_sqlite_path(url: str, base_dir: Path) -> str:
    """``url`` with a relative SQLite file made absolute under ``base_dir``, the config's folder.

    SQLite opens a relative file against the working directory, so the same config run
    from elsewhere (cron starts in $HOME) would silently make a second, empty state
    store, or read another source file. Absolute paths, ``:memory:``, an empty database
    and other backends are returned as given; ``~`` is expanded, as for ``*_file``.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return url
    if parsed.query.get("uri") in ("true", "1") and database.startswith("file:"):
        relative = database.removeprefix("file:")  # a URI filename, already %-encoded
        memory = parsed.query.get("mode") == "memory" or relative.startswith(":memory:")
        if not relative or relative.startswith("/") or memory:
            return url
        folder = quote(os.path.abspath(base_dir), safe="/")
        resolved = f"file:{folder}/{relative}"
    elif Path(database).is_absolute():
        return url
    else:
        resolved = os.path.abspath(base_dir / Path(database).expanduser())
    return parsed.set(database=resolved).render_as_string(hide_password=False)


def _db_url(value: SecretStr, info: ValidationInfo) -> SecretStr:
    """A parseable URL; with the config's folder known, relative SQLite paths resolved."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if (problem := userinfo_problem(value.get_secret_value())) is not None:
        raise _fail(problem)
    try:
        make_url(value.get_secret_value())
    except (ArgumentError, ValueError, TypeError):
        example = "postgresql+psycopg://user:password@host:5432/db"
        raise _fail(f"expected a SQLAlchemy database URL such as {example}") from None
    base_dir = (info.context or {}).get("base_dir")
    if base_dir is None:  # a model built in code, not from a config file
        return value
    return SecretStr(resolve_sqlite_path(value.get_secret_value(), Path(base_dir)))


# ---------------------------------------------------------------------- models


class Model(BaseModel):
    """Base of every config model: unknown keys refused, never changed after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TemplateTransform(Model):
    """Builds a value from source columns: ``{template: "{first_name} {last_name}"}``."""

    template: str

    @field_validator("template")
    @classmethod
    def _parse(cls, value: str) -> str:
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise _fail(f"malformed template: {exc}") from None
        for _, name, _, _ in parts:
            if name is not None and not re.fullmatch(r"[^\s.\[\]{}!:]+", name):
                raise _fail("each {...} in a template must name a source column")
        return value

    def source_columns(self) -> tuple[str, ...]:
        """The source columns the template reads, which the extract must select."""
        names = (name for _, name, _, _ in string.Formatter().parse(self.template))
        return tuple(dict.fromkeys(n for n in names if n))


class ConstantTransform(Model):
    """Sends the same value for every row: ``{constant: web}``."""

    constant: str | int | float | bool


def _transform(value: Any) -> str | TemplateTransform | ConstantTransform:
    """One entry of a transforms list, with an error message a person can act on."""
    expected = (
        f"expected one of: {', '.join(SIMPLE_TRANSFORMS)}, {{template: ...}} or {{constant: ...}}"
    )
    if isinstance(value, TemplateTransform | ConstantTransform):
        return value
    if isinstance(value, str):
        if value in SIMPLE_TRANSFORMS:
            return value
        raise _fail(f"unknown transform {value!r}{suggest(value, SIMPLE_TRANSFORMS)}; {expected}")
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "template":
            if not isinstance(inner, str):
                raise _fail("a template must be text")
            return TemplateTransform(template=TemplateTransform._parse(inner))
        if key == "constant":
            if not isinstance(inner, str | int | float) or inner is None:
                raise _fail("a constant must be text, a number or true/false")
            return ConstantTransform(constant=inner)
        raise _fail(f"unknown key {key!r}{suggest(key, ('template', 'constant'))}; {expected}")
    raise _fail(expected)


Transform = Annotated[str | TemplateTransform | ConstantTransform, BeforeValidator(_transform)]


class PersonyzeSettings(Model):
    """How to reach the Personyze Users API, and how hard to push it."""

    api_key: SecretStr
    allow_insecure_http: bool = False  # before base_url, whose check reads it
    base_url: str = "https://app.personyze.com/rest"
    concurrency: int = 8
    requests_per_second: float | None = 50.0
    timeout_s: float = 30.0
    max_attempts: int = 8
    backoff_initial_s: float = 0.5  # the first wait after a failed request; it doubles
    backoff_max_s: float = 30.0  # the longest wait between attempts (Retry-After aside)
    max_answer_mb: int = 64  # a longer answer fails its request (an endless body)

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise _fail("must not be empty")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        """The API key travels in every request: plain http only to this machine."""
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _fail("expected an http(s) URL such as https://app.personyze.com/rest")
        if parts.scheme == "http" and not info.data.get("allow_insecure_http", False):
            try:
                loopback = ipaddress.ip_address(parts.hostname).is_loopback
            except ValueError:
                loopback = parts.hostname == "localhost"
            if not loopback:
                raise _fail(
                    "plain http would send the API key unencrypted; use https "
                    "(or set allow_insecure_http: true)"
                )
        return value.strip().rstrip("/")

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency(cls, value: Any) -> int:
        return _whole_number(value, 1, 256)

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _attempts(cls, value: Any) -> int:
        return _whole_number(value, 1, 100)

    @field_validator("max_answer_mb", mode="before")
    @classmethod
    def _answer_cap(cls, value: Any) -> int:
        return _whole_number(value, 1, 4096)

    @field_validator("requests_per_second", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> float | None:
        expected = "expected a number greater than 0, or null for no ceiling"
        return None if value is None else _positive_number(value, expected)

    @field_validator("timeout_s", "backoff_initial_s", "backoff_max_s", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return _positive_number(value)


class StateSettings(Model):
    """Where checkpoints, identities and rejected rows are kept."""

    # validated even when absent, so a config's default store is under its folder too
    url: SecretStr = Field(SecretStr("sqlite:///state/personyze-sync.db"), validate_default=True)

    _check_url = field_validator("url")(_db_url)


class SourceSettings(Model):
    """The table or query that changed rows are read from."""

    url: SecretStr
    table: str | None = None
    query: str | None = None
    cursor: str | None = Field(default=None, min_length=1)
    detect: Literal["cursor", "diff"] = "cursor"  # diff: no cursor, compare fingerprints
    key: str = Field(min_length=1)
    batch_size: int = 1000
    lookback: timedelta | int | float = 0

    _check_url = field_validator("url")(_db_url)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^\s.;\"'`]+(\.[^\s.;\"'`]+)?", value):
            raise _fail("expected a table name, 'name' or 'schema.name'")
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise _fail("must not be empty")
        return value

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch(cls, value: Any) -> int:
        return _whole_number(value, 1, 100_000)

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: Any) -> timedelta | int | float:
        """A duration for timestamp cursors, a plain number for numeric ones."""
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value) if "." in value else int(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value) and value >= 0:
                return value
            raise _fail("expected a lookback that is not negative")
        if isinstance(value, timedelta) and value >= timedelta(0):
            return value
        try:
            return parse_duration(value)
        except ValueError:
            raise _fail("expected a duration such as 5m or 1h30m, or a number") from None

    @model_validator(mode="after")
    def _table_or_query(self) -> SourceSettings:
        if self.table is not None and self.query is not None:
            raise _fail("give either 'table' or 'query', not both", "query")
        if self.table is None and self.query is None:
            raise _fail("missing required key 'table' or 'query'")
        return self

    @model_validator(mode="after")
    def _cursor_or_diff(self) -> SourceSettings:
        if self.detect == "diff":
            if self.cursor is not None:
                raise _fail("give either 'cursor' or 'detect: diff', not both", "detect")
            if self.lookback:
                raise _fail("a lookback needs a cursor; 'detect: diff' reads every row", "lookback")
        elif self.cursor is None:
            raise _fail("missing required key 'cursor' (or 'detect: diff' for a table without one)")
        return self

    @property
    def order_column(self) -> str:
        """The column rows are read in order of: the cursor, or the key in diff mode."""
        return self.cursor if self.cursor is not None else self.key


@dataclass(frozen=True)
class DeleteLimit:
    """``max_deletes_per_run``: a count, or a share of the users the job has synced."""

    count: int | None = None
    share: float | None = None  # percent

    @classmethod
    def parse(cls, value: Any) -> DeleteLimit:
        if isinstance(value, DeleteLimit):
            return value
        expected = "expected a count such as 100 or a share such as 1%"
        if isinstance(value, str) and value.strip().endswith("%"):
            number = value.strip()[:-1].strip()
            if not _NUMBER.fullmatch(number) or not 0 <= float(number) <= 100:
                raise _fail(f"{expected} (a share is between 0% and 100%)")
            return cls(share=float(number))
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
        ):
            raise _fail(expected)
        if int(value) < 0:
            raise _fail(expected)
        return cls(count=int(value))

    def allowed(self, known: int) -> int:
        """How many deletes a run may make when the job has synced ``known`` users."""
        if self.count is not None:
            return self.count
        assert self.share is not None
        return max(1, math.floor(known * self.share / 100)) if self.share else 0

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.share:g}%"


class Schedule(Model):
    """When the daemon runs a job: every so often, or on a crontab."""

    every: timedelta | None = None
    cron: str | None = None
    jitter: timedelta | None = None
    run_at_start: bool = True

    @field_validator("every", "jitter", mode="before")
    @classmethod
    def _duration(cls, value: Any, info: ValidationInfo) -> timedelta | None:
        if value is None or isinstance(value, timedelta):
            return value
        try:
            result = parse_duration(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        if info.field_name == "every" and not result:
            raise _fail("expected a duration greater than 0")
        return result

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from apscheduler.triggers.cron import CronTrigger

        if value is not None:
            try:
                CronTrigger.from_crontab(value, timezone="UTC")
            except ValueError as exc:
                raise _fail(f"expected a 5-field crontab such as '*/5 * * * *' ({exc})") from None
        return value

    @model_validator(mode="after")
    def _one_of(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise _fail("give exactly one of 'every' or 'cron'")
        return self


class JobSettings(Model):
    """One source table or query kept in step with Personyze users."""

    name: str
    source: SourceSettings
    mapping: dict[str, str]
    transforms: dict[str, list[Transform]] = Field(default_factory=dict)
    sync: Literal["upsert", "update", "mirror"] = "upsert"
    delete_when: str | None = None  # a SQL condition: such rows' users are deleted
    max_deletes_per_run: DeleteLimit = DeleteLimit(share=10.0)
    shards: int = 1  # parts of the key space, each with its own checkpoint and lease
    schedule: Schedule | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise _fail(
                "expected letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("delete_when")
    @classmethod
    def _delete_when(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or ";" in value):
            raise _fail('expected a SQL condition such as "deleted_at IS NOT NULL"')
        return value

    @field_validator("shards", mode="before")
    @classmethod
    def _shards(cls, value: Any) -> int:
        return _whole_number(value, 1, 64)

    @field_validator("max_deletes_per_run", mode="before")
    @classmethod
    def _max_deletes(cls, value: Any) -> DeleteLimit:
        return DeleteLimit.parse(value)

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: dict[str, str]) -> dict[str, str]:
        """Normalise targets to snake_case; two sources for one column is ambiguous."""
        if not value:
            raise _fail("expected at least one 'source column: Personyze column' entry")
        out: dict[str, str] = {}
        seen: dict[str, str] = {}
        for column, target in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", target):
                message = f"expected a Personyze column name (letters, digits, _), got {target!r}"
                raise _fail(message, column)
            snake = to_snake_case(target)
            if snake in seen:
                raise _fail(f"'{seen[snake]}' already maps to '{snake}'", column)
            seen[snake] = column
            out[column] = snake
        return out

    @field_validator("transforms")
    @classmethod
    def _transforms(
        cls, value: dict[str, list[Transform]], info: ValidationInfo
    ) -> dict[str, list[Transform]]:
        """Transforms apply to mapped columns, or create one from a template/constant."""
        mapping: dict[str, str] = info.data.get("mapping", {})
        targets = set(mapping.values()) if "mapping" in info.data else None
        out: dict[str, list[Transform]] = {}
        for key, steps in value.items():
            snake = to_snake_case(key)
            if snake in out:
                raise _fail(f"transforms for '{snake}' are given twice", key)
            creates = bool(steps) and isinstance(steps[0], TemplateTransform | ConstantTransform)
            if targets is not None and snake not in targets and not creates:
                hint = (
                    f" (did you mean '{mapping[key]}'? transforms are keyed by Personyze column)"
                    if key in mapping
                    else suggest(snake, targets)
                )
                raise _fail(
                    f"'{snake}' is not a mapped Personyze column{hint}; "
                    "to create a column, start its list with a template or constant",
                    key,
                )
            out[snake] = steps
        return out

    @model_validator(mode="after")
    def _has_identifier(self) -> JobSettings:
        """Personyze finds users by identifier: without one a row cannot be placed."""
        created = {
            k for k, v in self.transforms.items() if v and isinstance(v[0], TemplateTransform)
        }
        if not (set(self.mapping.values()) | created) & set(IDENTIFIERS):
            raise _fail(
                f"maps no identifier; map at least one of: {', '.join(IDENTIFIERS)}", "mapping"
            )
        return self

    def source_columns(self) -> tuple[str, ...]:
        """Every source column the job reads: mapped ones and those templates use."""
        columns = dict.fromkeys(self.mapping)
        for steps in self.transforms.values():
            for step in steps:
                if isinstance(step, TemplateTransform):
                    columns.update(dict.fromkeys(step.source_columns()))
        return tuple(columns)


def _duration_field(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


class DaemonSettings(Model):
    """How ``personyze-sync run`` behaves as a long-lived process."""

    grace_period: timedelta = timedelta(seconds=30)  # to finish requests in flight on SIGTERM
    http_host: str = "0.0.0.0"  # /healthz, /readyz, /metrics
    http_port: int = 9108
    failure_backoff_max: timedelta = timedelta(minutes=15)  # a failing job retries less often
    stuck_after: timedelta = timedelta(hours=6)  # a run longer than this fails /readyz

    _durations = field_validator(
        "grace_period", "failure_backoff_max", "stuck_after", mode="before"
    )(_duration_field)

    @field_validator("http_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> int:
        return _whole_number(value, 0, 65535)


class AlertSettings(Model):
    """Where to say that a job failed, recovered, or moved an unusual number of rows."""

    webhook_url: SecretStr | None = None  # Slack-compatible: POST {"text": ...}
    on_failure: bool = True
    on_recovery: bool = True
    row_count_factor: float | None = 10.0  # a run sending more than this x the usual: alert
    row_count_min_runs: int = 5  # recent successful runs needed before judging
    timeout_s: float = 10.0

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _fail("expected an http(s) URL")
        return value


DEFAULT_SCHEDULE_EVERY = timedelta(minutes=5)


class Config(Model):
    """The whole config file."""

    personyze: PersonyzeSettings
    state: StateSettings = Field(default_factory=StateSettings)
    jobs: list[JobSettings]
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @model_validator(mode="before")
    @classmethod
    def _default_state(cls, data: Any) -> Any:
        """No ``state:`` is ``state: {}``: its default URL is then resolved like a given one."""
        if isinstance(data, dict) and "state" not in data:
            return {**data, "state": {}}
        return data

    @field_validator("jobs")
    @classmethod
    def _jobs(cls, value: list[JobSettings]) -> list[JobSettings]:
        if not value:
            raise _fail("expected at least one job")
        for index, other in _duplicate_names([job.name for job in value]):
            raise _fail(f"duplicate job name, also used by jobs[{other}]", index, "name")
        return value

    def job(self, name: str) -> JobSettings:
        """The job called ``name``; a ConfigError (exit 2) if there is none."""
        for job in self.jobs:
            if job.name == name:
                return job
        names = [job.name for job in self.jobs]
        raise ConfigError(f"no job named '{name}'{suggest(name, names)}; jobs: {', '.join(names)}")


def _duplicate_names(names: list[Any]) -> list[tuple[int, int]]:
    """``(index, index of the first job with that name)`` for every repeated name."""
    first: dict[str, int] = {}
    repeats = []
    for index, name in enumerate(names):
        if isinstance(name, str) and name in first:
            repeats.append((index, first[name]))
        elif isinstance(name, str):
            first[name] = index
    return repeats


# --------------------------------------------------------------------- loading


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the config file; the only reader of the environment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file is not UTF-8 text: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    env = os.environ if environ is None else environ
    return parse_config(text, source=str(path), environ=env, base_dir=path.parent)


def parse_config(
    text: str, *, source: str = "<config>", environ: Mapping[str, str], base_dir: Path
) -> Config:
    """Check config text; every problem is reported in one ConfigError."""
    doc = yamlsource.compose(text, source)
    if doc.data is not None and not isinstance(doc.data, dict):
        doc.problem((), "expected a mapping of settings at the top level")
    if not isinstance(doc.data, dict):
        yamlsource.raise_problems(doc.problems, source)
    yamlsource.expand_env(doc, environ)
    jobs = doc.data.get("jobs")
    if isinstance(jobs, list):  # here, not in the model, so a broken job cannot hide it
        names = [job.get("name") if isinstance(job, dict) else None for job in jobs]
        for index, other in _duplicate_names(names):
            line = doc.line(("jobs", other, "name"))
            message = f"duplicate job name {names[index]!r}, also on line {line}"
            doc.problem(("jobs", index, "name"), message)
    return yamlsource.validate(doc, Config, base_dir=base_dir, secret_keys=_SECRET_KEYS)
