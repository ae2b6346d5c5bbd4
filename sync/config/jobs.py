"""What one job says: its source, its mapping and transforms, its deletes and schedule.

Each check here is one a person can act on, at the line of the key it concerns:
a mapping with no identifier, a transform of a column that is not mapped, a
lookback without a cursor.
"""

from __future__ import annotations

import re
import string
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync.config.dbt import with_dbt_table
from sync.config.models import HistorySettings, Model
from sync.config.objects import Object, check_object
from sync.config.values import (
    DeleteLimit,
    db_url,
    lookback,
    parse_duration,
    to_snake_case,
    whole_number,
)
from sync.config.yaml import invalid as _fail
from sync.config.yaml import suggest

IDENTIFIERS = ("user_id", "email", "internal_id", "fb_id")
SIMPLE_TRANSFORMS = (
    "strip", "lower", "upper", "str", "int", "float", "bool", "date", "datetime", "unix",
)  # fmt: skip
DEFAULT_SCHEDULE_EVERY = timedelta(minutes=5)  # a job with no schedule, under the daemon


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


class SourceSettings(Model):
    """The table or query that changed rows are read from."""

    url: SecretStr
    table: str | None = None
    query: str | None = None
    dbt_manifest: str | None = None  # with model: the table is the model's relation
    model: str | None = None
    cursor: str | None = Field(default=None, min_length=1)
    detect: Literal["cursor", "diff"] = "cursor"  # diff: no cursor, compare fingerprints
    key: str = Field(min_length=1)
    batch_size: int = 1000
    lookback: timedelta | int | float = 0

    _check_url = field_validator("url")(db_url)

    @model_validator(mode="before")
    @classmethod
    def _dbt_model(cls, data: Any, info: ValidationInfo) -> Any:
        """A dbt model's relation, from its manifest, as the ``table`` to read."""
        return with_dbt_table(data, (info.context or {}).get("base_dir"))

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
        return whole_number(value, 1, 100_000)

    @field_validator("lookback", mode="before")
    @classmethod
    def _lookback(cls, value: Any) -> timedelta | int | float:
        return lookback(value)

    @model_validator(mode="after")
    def _table_or_query(self) -> SourceSettings:
        if self.table is not None and self.query is not None:
            raise _fail("give either 'table' or 'query', not both", "query")
        if self.table is None and self.query is None:
            raise _fail("missing required key 'table', 'query' or 'dbt_manifest'")
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
    """One source table or query kept in step with Personyze users, products or an audience."""

    name: str
    object: Object = "users"  # what the job feeds (sync.config.objects)
    source: SourceSettings
    mapping: dict[str, str] = Field(default_factory=dict)
    transforms: dict[str, list[Transform]] = Field(default_factory=dict)
    sync: Literal["upsert", "update", "mirror", "add"] = "upsert"  # audiences: add or mirror
    audience: str | None = None  # object: audience: the Personyze list's name
    users_job: str | None = None  # object: audience: the users job whose user_ids to use
    delete_when: str | None = None  # a SQL condition: such rows' users are deleted
    max_deletes_per_run: DeleteLimit = DeleteLimit(share=10.0)
    shards: int = 1  # parts of the key space, each with its own checkpoint and lease
    schedule: Schedule | None = None
    history: HistorySettings | None = None  # None: state.history's

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
        return whole_number(value, 1, 64)

    @field_validator("max_deletes_per_run", mode="before")
    @classmethod
    def _max_deletes(cls, value: Any) -> DeleteLimit:
        return DeleteLimit.parse(value)

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: dict[str, str]) -> dict[str, str]:
        """Normalise targets to snake_case; two sources for one column is ambiguous."""
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

    @model_validator(mode="before")
    @classmethod
    def _audience_adds(cls, data: Any) -> Any:
        """An audience job without ``sync`` only adds members (mirror also removes)."""
        if isinstance(data, dict) and data.get("object") == "audience" and "sync" not in data:
            return {**data, "sync": "add"}
        return data

    @model_validator(mode="after")
    def _object_rules(self) -> JobSettings:
        check_object(self)
        return self

    @model_validator(mode="after")
    def _has_identifier(self) -> JobSettings:
        """Personyze finds users by identifier: without one a row cannot be placed."""
        if self.object != "users":
            return self
        created = {
            k for k, v in self.transforms.items() if v and isinstance(v[0], TemplateTransform)
        }
        if not (set(self.mapping.values()) | created) & set(IDENTIFIERS):
            raise _fail(
                f"maps no identifier; map at least one of: {', '.join(IDENTIFIERS)}", "mapping"
            )
        return self

    @model_validator(mode="after")
    def _no_template_loop(self) -> JobSettings:
        """A template sees the mapped columns it names after their transforms, so those
        are made first; two templates that each wait for the other cannot be made."""
        _, loop = _order(self.mapping, self.transforms)
        if loop:
            raise _fail(
                f"templates read each other's columns in a loop ({' -> '.join(loop)}): a "
                "template sees a mapped column after that column's own transforms",
                "transforms",
                loop[0],
            )
        return self

    def columns_in_order(self) -> tuple[str, ...]:
        """Every Personyze column the job makes, each after the mapped columns its
        templates read (otherwise as the config lists them: mapped, then made)."""
        order, _ = _order(self.mapping, self.transforms)
        return tuple(order)

    def source_columns(self) -> tuple[str, ...]:
        """Every source column the job reads: mapped ones and those templates use."""
        columns = dict.fromkeys(self.mapping)
        for steps in self.transforms.values():
            for step in steps:
                if isinstance(step, TemplateTransform):
                    columns.update(dict.fromkeys(step.source_columns()))
        return tuple(columns)


def _order(
    mapping: dict[str, str], transforms: dict[str, list[Transform]]
) -> tuple[list[str], list[str]]:
    """The Personyze columns, each after those its templates read; and a loop, if any
    (``[a, b, a]``: a's template reads b's source column, b's reads a's)."""
    made = [target for target in transforms if target not in mapping.values()]
    columns = [*mapping.values(), *made]
    waits = {
        target: [
            mapping[name]
            for step in transforms.get(target, [])
            if isinstance(step, TemplateTransform)
            for name in step.source_columns()
            if name in mapping and mapping[name] != target  # its own source: as read
        ]
        for target in columns
    }
    order: list[str] = []
    visiting: list[str] = []

    def visit(target: str) -> list[str]:
        if target in order:
            return []
        if target in visiting:
            return [*visiting[visiting.index(target) :], target]
        visiting.append(target)
        for other in waits[target]:
            if loop := visit(other):
                return loop
        visiting.pop()
        order.append(target)
        return []

    for target in columns:
        if loop := visit(target):
            return columns, loop
    return order, []
