"""The settings outside any job: the Personyze API, the state store, the daemon, alerts.

``Model`` is the base of every config model, these and the jobs' (``jobs.py``): a
key the model does not know is refused, and nothing changes after loading.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sync.config.values import duration_field, positive_number, state_db_url, whole_number
from sync.config.yaml import invalid as _fail
from sync.errors import ConfigError

API_KEY_PATH = ("personyze", "api_key")


class Model(BaseModel):
    """Base of every config model: unknown keys refused, never changed after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonyzeSettings(Model):
    """How to reach the Personyze Users API, and how hard to push it.

    ``api_key`` is None only in a config loaded for a command that never reaches
    Personyze (``load_config(need_key=False)``) where the environment does not give the
    key; whatever sends or reads asks ``require_key()``, which then says why.
    """

    api_key: SecretStr | None
    allow_insecure_http: bool = False  # before base_url, whose check reads it
    base_url: str = "https://app.personyze.com/rest"
    concurrency: int = 8
    requests_per_second: float | None = 50.0
    timeout_s: float = 30.0
    max_attempts: int = 8
    backoff_initial_s: float = 0.5  # the first wait after a failed request; it doubles
    backoff_max_s: float = 30.0  # the longest wait between attempts (Retry-After aside)
    max_answer_mb: int = 64  # a longer answer fails its request (an endless body)

    _unavailable: str | None = PrivateAttr(default=None)  # why api_key is None

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            if API_KEY_PATH in _set_aside(info):
                return None
            raise _fail("expected text (put it in quotes)")
        if not value.get_secret_value().strip():
            raise _fail("must not be empty")
        return value

    @model_validator(mode="after")
    def _why_no_key(self, info: ValidationInfo) -> PersonyzeSettings:
        self._unavailable = _set_aside(info).get(API_KEY_PATH)
        return self

    def require_key(self) -> SecretStr:
        """The API key; a ConfigError saying why there is none (exit 2), as loading would have."""
        if self.api_key is None:
            raise ConfigError(self._unavailable or "personyze.api_key: no API key was given")
        return self.api_key

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
        return whole_number(value, 1, 256)

    @field_validator("max_attempts", mode="before")
    @classmethod
    def _attempts(cls, value: Any) -> int:
        return whole_number(value, 1, 100)

    @field_validator("max_answer_mb", mode="before")
    @classmethod
    def _answer_cap(cls, value: Any) -> int:
        return whole_number(value, 1, 4096)

    @field_validator("requests_per_second", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> float | None:
        expected = "expected a number greater than 0, or null for no ceiling"
        return None if value is None else positive_number(value, expected)

    @field_validator("timeout_s", "backoff_initial_s", "backoff_max_s", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return positive_number(value)


def _set_aside(info: ValidationInfo) -> dict[tuple[str | int, ...], str]:
    """The values ``sync.config.check.validate`` set aside as the environment's to give."""
    return dict((info.context or {}).get("unavailable", {}))


class HistorySettings(Model):
    """How long each row's delivery history is kept (``history``, ``runs``): for
    ``keep_for`` (30 days unless ``keep_per_row`` is given), or the last ``keep_per_row``
    deliveries of each row; ``enabled: false`` keeps none."""

    enabled: bool = True
    keep_for: timedelta | None = None
    keep_per_row: int | None = None

    _keep_for = field_validator("keep_for", mode="before")(duration_field)

    @field_validator("keep_per_row", mode="before")
    @classmethod
    def _per_row(cls, value: Any) -> int:
        return whole_number(value, 1, 10_000)

    @model_validator(mode="after")
    def _one_rule(self) -> HistorySettings:
        if self.keep_for is not None and self.keep_per_row is not None:
            raise _fail("give one of keep_for (a duration) or keep_per_row (a count), not both")
        if self.keep_for is not None and self.keep_for <= timedelta(0):
            raise _fail("expected a duration longer than 0 (or enabled: false)", "keep_for")
        return self


class StateSettings(Model):
    """Where checkpoints, identities, rejected rows and the delivery history are kept."""

    # validated even when absent, so a config's default store is under its folder too
    url: SecretStr = Field(SecretStr("sqlite:///state/personyze-sync.db"), validate_default=True)
    history: HistorySettings = Field(default_factory=HistorySettings)

    _check_url = field_validator("url")(state_db_url)


class DaemonSettings(Model):
    """How ``personyze-sync run`` behaves as a long-lived process."""

    grace_period: timedelta = timedelta(seconds=30)  # to finish requests in flight on SIGTERM
    http_host: str = "0.0.0.0"  # /healthz, /readyz, /metrics
    http_port: int = 9108
    failure_backoff_max: timedelta = timedelta(minutes=15)  # a failing job retries less often
    stuck_after: timedelta = timedelta(hours=6)  # a run longer than this fails /readyz

    _durations = field_validator(
        "grace_period", "failure_backoff_max", "stuck_after", mode="before"
    )(duration_field)

    @field_validator("http_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> int:
        return whole_number(value, 0, 65535)


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
