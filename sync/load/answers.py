"""What Personyze's answers mean: a status is an error kind, in one place.

Also what the client checks before it sends anything (plain http only to this
machine) and how a refused TLS certificate is told apart from a network failure.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from sync.config.models import PersonyzeSettings
from sync.errors import AuthError, ConfigError, FatalError, RejectedError, RetriableError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(settings: PersonyzeSettings) -> None:
    parts = urlsplit(settings.base_url)
    insecure = parts.scheme == "http" and not is_loopback(parts.hostname or "")
    if insecure and not settings.allow_insecure_http:
        raise ConfigError(
            f"personyze.base_url: plain http to {parts.hostname} would send the API key "
            "in clear; use https, or set allow_insecure_http: true if you mean it"
        )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def raise_for_status(
    response: httpx.Response, mask: Callable[[str], str] = lambda text: text
) -> None:
    """Turn an answer that is not a success into the error that says what to do next.

    ``mask`` hides every secret in the answer's text (a server may echo the request's
    headers): the text becomes rejected rows' reasons, errors, logs and alerts.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    text = mask(response.text.strip()[:500])
    if status in (401, 403):
        raise AuthError(
            f"Personyze refused the API key ({status} {text or 'no reason given'}): "
            "check personyze.api_key; the job stopped"
        )
    if status == 429 or status >= 500 or status == 408:
        raise RetriableError(
            f"Personyze answered {status}",
            retry_after=_retry_after(response),
            unapplied=status == 429,
        )
    if status in (400, 413, 422):
        raise RejectedError(text or f"HTTP {status} without a reason", status=status)
    raise FatalError(
        f"Personyze answered {status} for {response.request.method} "
        f"{response.request.url.path}: {text or 'no reason given'}; check personyze.base_url"
    )


def count(answer: Any) -> int:
    """A PUT's or DELETE's answer: the number of rows affected."""
    if isinstance(answer, bool) or not isinstance(answer, int | str) or not str(answer).isdigit():
        raise FatalError(
            f"Personyze answered {str(answer)[:100]!r} where a count of users was expected"
        )
    return int(answer)


def ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under an httpx connection error, if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def certificate_refused(exc: BaseException) -> bool:
    return isinstance(ssl_error(exc), ssl.SSLCertVerificationError) or (
        "CERTIFICATE_VERIFY_FAILED" in str(exc)
    )


def ssl_reason(exc: BaseException) -> str:
    error = ssl_error(exc)
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    return str(reason or "certificate verify failed")
