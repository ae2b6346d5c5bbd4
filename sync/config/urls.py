"""URLs that carry credentials: what ``${VAR}`` splices into them, and how they are shown.

A password is written in a URL's user-info (``scheme://user:password@host``), where
``@``, ``:``, ``/`` and ``%`` have a meaning: a raw ``@`` ends the user-info early, so
the rest of the password was taken for the host (and shown as one). So a value that
``${VAR}`` puts into a user-info is percent-encoded here, and every URL parser
(SQLAlchemy's ``make_url``, httpx) decodes it back to the true password. A relative
SQLite file is made absolute here too, so a URL means one file wherever it is run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_ENCODE = (
    "percent-encode the user name and password (@ as %40, : as %3A, / as %2F, % as %25), "
    "or write ${VAR} for them in the URL: a value it splices into a URL's user-info "
    "is encoded for you"
)


class Splice(NamedTuple):
    """One ``${...}`` of a template: where it stands and the text it stands for."""

    start: int
    end: int
    text: str
    literal: bool = False  # ``$$``: template text, never encoded


def splice(template: str, parts: Sequence[Splice]) -> str:
    """``template`` with each part replaced by its text, in order.

    Any string value that begins ``scheme://`` counts as a URL; its user-info is what
    lies between the ``://`` and the last ``@`` the template itself writes before the
    host ends (at its first ``/``, ``?`` or ``#``). A value spliced there is
    percent-encoded whole (``quote(value, safe="")``); values spliced anywhere else,
    and any URL given whole by one ``${VAR}`` or a ``*_file``, are left as they are.
    When the template's user-info has no ``:`` of its own (``scheme://${CREDS}@host``),
    the first ``:`` a value brings still divides the user name from the password.
    """
    user_end, divided = _userinfo(template, parts)
    out: list[str] = []
    pos = 0
    for part in parts:
        out.append(template[pos : part.start])
        pos = part.end
        if part.literal or user_end is None or part.start > user_end:
            out.append(part.text)
        elif not divided and ":" in part.text:
            user, _, password = part.text.partition(":")
            out.append(f"{quote(user, safe='')}:{quote(password, safe='')}")
            divided = True
        else:
            out.append(quote(part.text, safe=""))
    out.append(template[pos:])
    return "".join(out)


def _userinfo(template: str, parts: Sequence[Splice]) -> tuple[int | None, bool]:
    """Where the template's user-info ends (its own ``@``; None if it writes none), and
    whether the template writes the ``:`` between user name and password itself."""
    scheme = _SCHEME.match(template)
    if scheme is None:
        return None, False
    skip = {part.start: part.end for part in parts}
    at: int | None = None
    colons: list[int] = []
    i = scheme.end()
    while i < len(template) and template[i] not in "/?#":
        if i in skip:
            i = skip[i]
            continue
        if template[i] == "@":
            at = i
        elif template[i] == ":":
            colons.append(i)
        i += 1
    return at, at is not None and any(c < at for c in colons)


FILE_DATABASES = ("sqlite", "duckdb")  # a URL naming a file, not a server


def userinfo_problem(url: str) -> str | None:
    """Why a database URL's user name or password cannot be what was meant, or None.

    A URL has one ``@`` before its query: the one ending the user-info. Another one
    means a password holding a raw ``@``, whose tail would be taken for the host.
    (A database name cannot hold a raw ``@`` then either.) SQLite URLs, a file path with
    no user-info, are not checked (nor DuckDB's).
    """
    scheme = _SCHEME.match(url)
    if scheme is None or url.lower().startswith(FILE_DATABASES):
        return None
    if url[scheme.end() :].split("?", 1)[0].count("@") > 1:
        return f"more than one '@' in the URL (a user name or password holding one?): {_ENCODE}"
    return None


def redact_url(url: str) -> str:
    """A database URL fit to show: the password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return "<unparseable url>"


def resolve_file_database(url: str, base_dir: Path) -> str:
    """``url`` with a relative SQLite or DuckDB file made absolute under ``base_dir``,
    the config's folder.

    Both open a relative file against the working directory, so the same config run
    from elsewhere (cron starts in $HOME) would silently make a second, empty state
    store, or read another source file. Absolute paths, ``:memory:``, an empty database
    and other backends are returned as given; ``~`` is expanded, as for ``*_file``.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() not in FILE_DATABASES or database in ("", ":memory:"):
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
