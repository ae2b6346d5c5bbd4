"""The config file, checked once at the edge and then only read.

``load_config`` is the one entry, and the only place that reads the environment or
secret files; every problem it finds is reported at once, each as
``FILE:LINE: key.path: what was expected``, and never with a secret in it.
``Config``, the whole file, is here: it joins ``models`` and ``jobs``, and ``jobs``
builds on ``models``' base, so in ``models`` it would make an import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from sync.config.check import validate
from sync.config.jobs import JobSettings
from sync.config.models import (
    API_KEY_PATH,
    AlertSettings,
    DaemonSettings,
    Model,
    PersonyzeSettings,
    StateSettings,
)
from sync.config.yaml import compose, expand_env, raise_problems, suggest
from sync.config.yaml import invalid as _fail
from sync.errors import ConfigError

# Keys whose values are never quoted back in an error, wherever they appear.
_SECRET_KEYS = frozenset({"api_key", "url", "base_url", "webhook_url"})


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
        users = [job.name for job in value if job.object == "users"]
        for index, job in enumerate(value):
            if job.users_job is not None and job.users_job not in users:
                raise _fail(
                    f"users_job '{job.users_job}' is not a users job of this file"
                    f"{suggest(job.users_job, users)}; users jobs: {', '.join(users) or 'none'}",
                    index,
                    "users_job",
                )
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


def load_config(
    path: Path | str, environ: Mapping[str, str] | None = None, *, need_key: bool = True
) -> Config:
    """Read and check the config file; the only reader of the environment.

    ``need_key=False`` is for the commands that never reach Personyze (status, rejected
    list and purge, checkpoint reset): an API key the environment does not give (its
    variable unset or empty, its secret file unreadable) is then no error, and
    ``config.personyze.api_key`` is None; ``require_key()`` says why when asked.
    """
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
    return parse_config(
        text, source=str(path), environ=env, base_dir=path.parent, need_key=need_key
    )


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    environ: Mapping[str, str],
    base_dir: Path,
    need_key: bool = True,
) -> Config:
    """Check config text; every problem is reported in one ConfigError."""
    doc = compose(text, source)
    if doc.data is not None and not isinstance(doc.data, dict):
        doc.problem((), "expected a mapping of settings at the top level")
    if not isinstance(doc.data, dict):
        raise_problems(doc.problems, source)
    expand_env(doc, environ)
    jobs = doc.data.get("jobs")
    if isinstance(jobs, list):  # here, not in the model, so a broken job cannot hide it
        names = [job.get("name") if isinstance(job, dict) else None for job in jobs]
        for index, other in _duplicate_names(names):
            line = doc.line(("jobs", other, "name"))
            message = f"duplicate job name {names[index]!r}, also on line {line}"
            doc.problem(("jobs", index, "name"), message)
    optional = frozenset() if need_key else frozenset({API_KEY_PATH})
    return validate(doc, Config, base_dir=base_dir, secret_keys=_SECRET_KEYS, optional=optional)
