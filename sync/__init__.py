"""personyze-sync: keep Personyze in step with your own database.

The Python API (:mod:`sync.api`) is exported here::

    from sync import Sync, load_config

Its names are loaded on first use, so that ``import sync.model`` (or the CLI) does not
import the whole package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sync.api import JobResult, RejectedRow, Sync, SyncResult, load_config
    from sync.config.load import Config
    from sync.errors import ConfigError, SyncError

__all__ = [
    "Config",
    "ConfigError",
    "JobResult",
    "RejectedRow",
    "Sync",
    "SyncError",
    "SyncResult",
    "load_config",
]

_HOMES = {
    "Config": "sync.config.load",
    "ConfigError": "sync.errors",
    "SyncError": "sync.errors",
    **dict.fromkeys(("JobResult", "RejectedRow", "Sync", "SyncResult", "load_config"), "sync.api"),
}


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _HOMES:
        raise AttributeError(f"module 'sync' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
