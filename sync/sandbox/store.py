"""The old home of the sandbox's store, kept so ``sync.sandbox.store`` imports still work.

The store is :mod:`sync.sandbox.users` now and the path language
:mod:`sync.sandbox.query`; this module only re-exports the names it used to hold.
"""

from sync.sandbox.query import (
    MAX_WINDOW,
    MODIFIERS,
    RANGE_OPS,
    RANGE_WINDOW,
    Bounds,
    Condition,
    Op,
    Query,
    RequestError,
    Row,
    Scalar,
    SortKey,
    Where,
    index_key,
    is_range,
    normalize_body,
    normalize_column,
    parse_modifiers,
    parse_where,
)
from sync.sandbox.users import HASHED, INDEXED, LIVE_UNRESOLVED, UserStore

__all__ = [
    "HASHED",
    "INDEXED",
    "LIVE_UNRESOLVED",
    "MAX_WINDOW",
    "MODIFIERS",
    "RANGE_OPS",
    "RANGE_WINDOW",
    "Bounds",
    "Condition",
    "Op",
    "Query",
    "RequestError",
    "Row",
    "Scalar",
    "SortKey",
    "UserStore",
    "Where",
    "index_key",
    "is_range",
    "normalize_body",
    "normalize_column",
    "parse_modifiers",
    "parse_where",
]
