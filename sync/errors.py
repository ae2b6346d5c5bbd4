"""The error family, grouped by what the caller should do next.

    SyncError                 anything personyze-sync reports to a user
    ├── ConfigError           the config or the command line is wrong: fix it (exit 2)
    │   └── PortUnavailable   a server cannot listen where it was told (a port in use)
    ├── FatalError            this job cannot go on: stop it and say why (exit 1)
    │   ├── AuthError         Personyze refused the API key
    │   ├── SourceError       the source database is unreachable or not as configured
    │   │   └── MissingPrivilege  its user may not read what a job reads: GRANT it
    │   ├── StateError        the state store cannot be read or written
    │   │   └── LeaseLost     this run no longer holds its lease: another may run the job
    │   ├── TooManyDeletes    a run would delete more users than allowed: it deleted none
    │   └── AdoptionNeeded    Personyze holds users a fresh state store must adopt first
    ├── RetriableError        a passing failure (429, 5xx, timeout): back off and retry
    └── RejectedError         Personyze refused one record (400): record it, go on

Library exceptions are translated into these where they enter (``raise ... from``),
so the core and the CLI never see an ``httpx`` or ``sqlalchemy`` exception.
Messages must never contain a secret.
"""

from __future__ import annotations

import errno


class SyncError(Exception):
    """Base of every error personyze-sync reports; ``exit_code`` is the CLI's."""

    exit_code = 1


class ConfigError(SyncError):
    """The configuration or the command line is wrong; nothing was run."""

    exit_code = 2


class PortUnavailable(ConfigError):
    """A server (the daemon's health endpoints, the sandbox) cannot listen on its address:
    the port is in use, or not this process's to take. Nothing was run."""

    def __init__(self, host: str, port: int, why: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {why}")
        self.host = host
        self.port = port
        self.why = why


def port_unavailable(host: str, port: int, error: OSError) -> PortUnavailable:
    """``error``, raised by binding ``host:port``, as a PortUnavailable that says why."""
    why = {
        errno.EADDRINUSE: "the port is in use",
        errno.EACCES: "permission denied (ports below 1024 need privileges)",
        errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
    }.get(error.errno or 0, error.strerror or str(error))
    return PortUnavailable(host, port, why)


class FatalError(SyncError):
    """The job cannot go on; retrying now would not help."""


class AuthError(FatalError):
    """Personyze answered 401/403: the API key is missing, wrong or revoked."""


class SourceError(FatalError):
    """The source database failed or does not match the config."""


class MissingPrivilege(SourceError):
    """The source's database user lacks a privilege a job needs (SELECT, most often);
    ``grant`` is the statement an administrator runs to give it."""

    def __init__(self, message: str, grant: str) -> None:
        super().__init__(message)
        self.grant = grant


class StateError(FatalError):
    """The state store failed; no checkpoint was moved."""


class LeaseLost(StateError):
    """The run's lease was lost (its connection dropped, or another process took it):
    the run writes nothing more and stops; the holder of the lease goes on."""


class AdoptionNeeded(FatalError):
    """A state store that never synced a job would send rows Personyze cannot merge
    while Personyze already holds users: they must be adopted first (``adopt``)."""


class TooManyDeletes(FatalError):
    """A run would delete more users than ``max_deletes_per_run`` allows; it deleted none."""


class RetriableError(SyncError):
    """A passing failure; ``retry_after`` is the server's hint in seconds, if any.

    ``unapplied`` is True when the request certainly changed nothing (a 429, or a
    connection that was never made), so even a write that is not idempotent may repeat.
    """

    def __init__(
        self, message: str, retry_after: float | None = None, unapplied: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unapplied = unapplied


class RejectedError(SyncError):
    """Personyze refused this one record; ``reason`` is its own text."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Stopped(SyncError):
    """The run was asked to stop (a signal); what it finished is saved, nothing is lost."""
