"""Log output: one event per line, JSON for machines or text for a person, never a secret.

The rest of the code logs with the standard library and puts the facts in ``extra``::

    log.info("run finished", extra={"job": "customers", "rows_sent": 12, "seconds": 1.5})

which ``configure_logging`` renders as one line, either JSON (not a terminal, or
``fmt="json"``)::

    {"ts": "2026-11-30T05:00:00.123Z", "level": "info", "logger": "sync.daemon",
     "event": "run finished", "job": "customers", "rows_sent": 12, "seconds": 1.5}

or text (a terminal, or ``fmt="text"``), with any traceback on the lines after it::

    2026-11-30 05:00:00 UTC INFO  sync.daemon: run finished job=customers rows_sent=12 seconds=1.5

Times are UTC, and text lines say so. Redaction runs on the finished line, so a secret
is replaced by ``***`` wherever it came from: the message, its arguments, an extra, an
exception message or a traceback. A secret is also found percent-encoded (any hex
case, ``+`` for a space, as database URLs carry passwords) and escaped as JSON or
``repr`` would escape it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO
from urllib.parse import quote, quote_plus, unquote, urlsplit

from sync.config.load import Config

__all__ = ["configure_logging", "redact", "secrets_of", "set_secrets"]

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


# ------------------------------------------------------------------- redaction


def _char_pattern(char: str) -> str:
    """Every way one character of a secret may be written in a log line."""
    literal = {char, json.dumps(char)[1:-1], json.dumps(char, ensure_ascii=False)[1:-1]}
    literal |= {repr(char)[1:-1], "\\'" if char == "'" else char, "+" if char == " " else char}
    ordered = sorted(literal, key=lambda form: (-len(form), form))  # the escaped forms first
    forms = [f"(?-i:{re.escape(form)})" for form in ordered]  # the case matters here
    forms.append("".join(f"%{byte:02x}" for byte in char.encode("utf-8")))  # but not in hex
    return "(?:" + "|".join(forms) + ")"


def _secret_pattern(secret: str) -> re.Pattern[str]:
    return re.compile("".join(_char_pattern(char) for char in secret), re.IGNORECASE)


class _Redactor:
    """The secrets to mask, swapped whole so a line is never redacted half old, half new."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._patterns: tuple[re.Pattern[str], ...] = ()

    def set(self, secrets: Iterable[str]) -> None:
        usable = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
        ordered = sorted(usable, key=lambda s: (-len(s), s))  # longest first
        patterns = tuple(_secret_pattern(s) for s in ordered)
        with self._lock:
            self._patterns = patterns

    def __call__(self, text: str) -> str:
        for pattern in self._patterns:  # one read of the tuple: atomic
            text = pattern.sub(MASK, text)
        return text


_redactor = _Redactor()


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace the list of values masked in every log line (say, after a config reload)."""
    _redactor.set(secrets)


def redact(text: str) -> str:
    """``text`` with every known secret masked; for text that leaves by another road."""
    return _redactor(text)


def secrets_of(config: Config) -> list[str]:
    """Every value in ``config`` that must never be shown, longest first.

    The API key, its Basic token and their base64 and percent-encoded forms; the
    password of each source and state database URL and of the webhook URL (as the URL
    decodes it: what ``${VAR}`` or a secret file gave), its percent-encoded (a space as
    ``%20`` or ``+``) and base64 forms, and the whole URL when it has one; the alert
    webhook URL. Values and passwords under four characters are left out, so masking
    them cannot eat ordinary words. (Each is also masked with any of its characters
    percent-encoded, see ``_char_pattern``.)
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    found: list[str] = []
    if config.personyze.api_key is not None:  # None: loaded for a command that sends nothing
        key = config.personyze.api_key.get_secret_value()
        token = base64.b64encode(f"api:{key}".encode()).decode()
        found += [key, token, base64.b64encode(key.encode()).decode(), quote(key, safe="")]
    passwords: list[str] = []
    urls = [config.state.url] + [job.source.url for job in config.jobs]
    for secret_url in urls:
        url = secret_url.get_secret_value()
        try:
            password = make_url(url).password
        except (ArgumentError, ValueError, TypeError):
            continue
        if password:
            passwords.append(str(password))
            found.append(url)
    if config.alerts.webhook_url is not None:
        webhook = config.alerts.webhook_url.get_secret_value()
        with contextlib.suppress(ValueError):
            passwords.append(unquote(urlsplit(webhook).password or ""))
        found.append(webhook)
    for password in (p for p in passwords if len(p) >= MIN_SECRET_LENGTH):
        encoded = base64.b64encode(password.encode()).decode()
        found += [password, quote(password, safe=""), quote_plus(password), encoded]
    usable = {s for s in found if len(s) >= MIN_SECRET_LENGTH}
    return sorted(usable, key=lambda s: (-len(s), s))


# ------------------------------------------------------------------ formatting


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


class _Formatter(logging.Formatter):
    """Builds the line from the record's facts, then masks secrets in the whole of it."""

    def format(self, record: logging.LogRecord) -> str:
        return _redactor(self.render(record, record.getMessage()))

    def render(self, record: logging.LogRecord, message: str) -> str:
        raise NotImplementedError

    @staticmethod
    def extras(record: logging.LogRecord) -> dict[str, Any]:
        return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}

    def trace(self, record: logging.LogRecord) -> tuple[str | None, str | None]:
        """``(one-line error, traceback)`` of the record's exception, if it has one."""
        if not record.exc_info or record.exc_info[1] is None:
            return None, None
        exc = record.exc_info[1]
        text = "".join(traceback.format_exception(exc)).rstrip("\n")
        return _one_line(exc), text


class JsonFormatter(_Formatter):
    """One JSON object per line; every ``extra`` key at the top level."""

    def render(self, record: logging.LogRecord, message: str) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        payload: dict[str, Any] = {
            "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": message,
        }
        error, trace = self.trace(record)
        if error is not None:
            payload["error"] = error
            payload["traceback"] = trace
        if record.stack_info:
            payload["stack"] = record.stack_info
        for key, value in self.extras(record).items():
            while key in payload:  # an extra never hides a field of the line itself
                key += "_"
            payload[key] = value
        # Strings are masked before encoding too, as JSON escapes may hide a secret's form.
        payload = {k: _redactor(v) if isinstance(v, str) else v for k, v in payload.items()}
        try:
            return json.dumps(payload, default=_str, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):  # NaN, or a dict with keys JSON cannot have
            safe = {k: _jsonable(v) for k, v in payload.items()}
            return json.dumps(safe, default=_str, ensure_ascii=False)


def _str(value: Any) -> str:
    return _redactor(str(value))


def _jsonable(value: Any) -> Any:
    """``value`` itself if JSON can carry it, else its ``str()``."""
    try:
        json.dumps(value, default=_str, allow_nan=False)
    except (TypeError, ValueError):
        return _str(value)
    return value


_BARE = re.compile(r"[^\s\"'=\\]+")


class TextFormatter(_Formatter):
    """``2026-11-30 05:00:00 UTC INFO  logger: event key=value ...``, traceback below."""

    def render(self, record: logging.LogRecord, message: str) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        parts = [f"{when} {record.levelname:<5} {record.name}: {message}"]
        parts += [f"{key}={_text_value(value)}" for key, value in self.extras(record).items()]
        line = " ".join(parts)
        _, trace = self.trace(record)
        if trace is not None:
            line += "\n" + trace
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else _plain(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _plain(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


# ------------------------------------------------------------------- handler


class _Handler(logging.StreamHandler[TextIO]):
    """The one handler ``configure_logging`` owns on the root logger."""

    def handleError(self, record: logging.LogRecord) -> None:
        """Say that a record could not be written, without the stdlib's raw dump of it."""
        if not logging.raiseExceptions:
            return
        error = sys.exc_info()[1]
        what = _one_line(error) if error is not None else "unknown error"
        note = f"--- logging error: a record from {record.name} could not be written: {what}\n"
        with contextlib.suppress(OSError, ValueError):  # stderr closed: nowhere to say it
            sys.stderr.write(_redactor(note))


# A line per HTTP request or per scheduler tick would drown the run summaries; the
# scheduler's own "skipped" warning repeats ours.
QUIET_LIBRARIES = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    # h2 and hpack log every header block they encode at DEBUG: the Authorization
    # header, so the API key, would reach the log at -vv
    "h2": logging.WARNING,
    "hpack": logging.WARNING,
    "apscheduler": logging.ERROR,
}


def job_outcome_line(record: logging.LogRecord) -> bool:
    """A job's failure or stop as ``run_job`` logs it ("run failed", "run stopped"), which
    a one-shot command prints itself, once, as text (and a backfill's processes leave to
    the parent)."""
    return record.name == "sync.run.parts" and getattr(record, "outcome", None) in (
        "failed",
        "stopped",
    )


def configure_logging(
    *,
    fmt: Literal["auto", "json", "text"] = "auto",
    level: int = logging.INFO,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    shown_elsewhere: Callable[[logging.LogRecord], bool] | None = None,
) -> None:
    """Send every log record to ``stream`` (stderr) as one line, secrets masked.

    ``"auto"`` means text on a terminal and JSON anywhere else. Calling it again
    replaces the handler it installed before (handlers others installed are left
    alone), and replaces the secrets with ``secrets``. ``shown_elsewhere``: records
    it is true of are left out (a command that prints a job's failure itself, say).
    """
    out = sys.stderr if stream is None else stream
    if fmt == "auto":
        isatty = getattr(out, "isatty", None)
        fmt = "text" if callable(isatty) and isatty() else "json"
    handler = _Handler(out)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    if shown_elsewhere is not None:
        handler.addFilter(lambda record: not shown_elsewhere(record))
    set_secrets(secrets)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()  # a StreamHandler's close does not close its stream
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in QUIET_LIBRARIES.items():  # our own lines say what matters, once
        logging.getLogger(name).setLevel(max(level, quiet))
