"""The config file: read once at the edge (``load``), then only read.

One way in: ``load_config``. The parts, lower first, so none imports a higher one:
``urls`` (credentials in URLs), ``yaml`` (lines, ``${VAR}``, errors in plain
English), ``check`` (the values against the models, every problem at its line),
``drivers`` (what a database URL's scheme asks for, looked up without connecting),
``values`` (durations, counts, delete limits, database URLs), ``models`` and ``jobs``
(the frozen pydantic models), ``load`` (``Config`` and the reading). The names
below are the ones the rest of sync and the tests use, so ``from sync.config
import X`` needs no knowledge of that cut.
"""

from __future__ import annotations

from sync.config.jobs import (
    DEFAULT_SCHEDULE_EVERY,
    IDENTIFIERS,
    SIMPLE_TRANSFORMS,
    ConstantTransform,
    JobSettings,
    Schedule,
    SourceSettings,
    TemplateTransform,
    Transform,
)
from sync.config.load import Config, load_config, parse_config
from sync.config.models import (
    AlertSettings,
    DaemonSettings,
    HistorySettings,
    Model,
    PersonyzeSettings,
    StateSettings,
)
from sync.config.urls import redact_url, resolve_file_database
from sync.config.values import DeleteLimit, parse_duration, to_snake_case
from sync.config.yaml import suggest

__all__ = [
    "DEFAULT_SCHEDULE_EVERY",
    "IDENTIFIERS",
    "SIMPLE_TRANSFORMS",
    "AlertSettings",
    "Config",
    "ConstantTransform",
    "DaemonSettings",
    "DeleteLimit",
    "HistorySettings",
    "JobSettings",
    "Model",
    "PersonyzeSettings",
    "Schedule",
    "SourceSettings",
    "StateSettings",
    "TemplateTransform",
    "Transform",
    "load_config",
    "parse_config",
    "parse_duration",
    "redact_url",
    "resolve_file_database",
    "suggest",
    "to_snake_case",
]
