"""Checking a read config against its models, every problem at its line, no secret quoted.

``validate`` runs in two passes: first what needs the lines (unknown keys, with
"did you mean"; ``X_file`` secrets read in place of ``X``), then pydantic, whose errors
are put into plain English at the right line. A value the environment does not provide
(an unset ``${VAR}``, a secret file that cannot be read, either of them empty) at a path
the caller names ``optional`` is set aside instead: it becomes None, and what would have
been said is kept for the model, to say when the value is needed after all.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails

from sync.config.yaml import Document, KeyPath, Problem, raise_problems, suggest

M = TypeVar("M", bound=BaseModel)


def validate(
    doc: Document,
    model: type[M],
    *,
    base_dir: Path,
    secret_keys: frozenset[str],
    optional: frozenset[KeyPath] = frozenset(),
) -> M:
    """``doc.data`` as ``model``, or one ConfigError with every problem, secrets unquoted.

    Keys in ``secret_keys`` (and values read from ``X_file``) are never echoed. The
    validators' ``info.context`` holds ``base_dir`` (the config file's folder) and
    ``unavailable``: for each ``optional`` path set aside, what would have been said.
    """
    hidden: set[KeyPath] = set()
    _prepare(model, doc.data, (), doc, base_dir, hidden)
    unavailable = {path: why for path in optional if (why := _set_aside(doc, path, hidden))}
    erred = {p.path for p in doc.problems}  # already reported: pydantic would repeat them
    erred |= {(*p[:-1], p[-1].removesuffix("_file")) for p in erred if p and isinstance(p[-1], str)}
    result: M | None = None
    try:
        context = {"base_dir": base_dir, "unavailable": unavailable}
        result = model.model_validate(doc.data, context=context)
    except ValidationError as exc:
        for error in exc.errors():
            full, problem = _translate(error, doc, hidden, secret_keys)
            if not any(full[: len(bad)] == bad for bad in erred):
                doc.problems.append(problem)
    raise_problems(doc.problems, doc.source)  # outside `except`: no pydantic chain
    assert result is not None  # a ValidationError always carries at least one error
    return result


def _set_aside(doc: Document, path: KeyPath, hidden: set[KeyPath]) -> str | None:
    """Set the value at ``path`` to None if the environment did not provide it; then the
    problems that says, as they would have been reported (else None, nothing changed).

    Not provided: every problem at ``path`` (or its ``X_file``) is an unset variable or
    an unreadable file, or the value a ``${VAR}`` or file gave is empty. A value the file
    itself gets wrong (no such key, a malformed reference, both ``X`` and ``X_file``,
    an empty literal) is still an error.
    """
    *parents, key = path
    holder: Any = doc.data
    for part in parents:
        holder = holder.get(part) if isinstance(holder, dict) else None
    if not isinstance(holder, dict) or key not in holder:
        return None
    file_key = (*parents, f"{key}_file")
    found = [p for p in doc.problems if p.path in (path, file_key)]
    value = holder[key]
    if not found and isinstance(value, str) and not value.strip():
        if path not in doc.expanded and path not in hidden:
            return None
        found = [Problem(doc.line(path), path, "must not be empty", unavailable=True)]
    if not found or not all(p.unavailable for p in found):
        return None
    for problem in found:
        if problem in doc.problems:
            doc.problems.remove(problem)
    holder[key] = None
    return "\n".join(p.render(doc.source) for p in sorted(found, key=lambda p: p.line))


def _prepare(
    model: type[BaseModel],
    data: Any,
    path: KeyPath,
    doc: Document,
    base_dir: Path,
    hidden: set[KeyPath],
) -> None:
    """Before pydantic: unknown keys (with suggestions) and ``X_file`` secrets."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key in list(data):
        stem = key.removesuffix("_file")
        if key.endswith("_file") and stem in fields and key not in fields:
            _read_secret(data, key, stem, path, doc, base_dir, hidden)
        elif key not in fields:
            secrets = [f"{f}_file" for f, info in fields.items() if _secret(info.annotation)]
            doc.problem((*path, key), f"unknown key{suggest(key, [*fields, *secrets])}")
            del data[key]
    for name, info in fields.items():
        sub, many = _submodel(info.annotation)
        if sub is None or name not in data:
            continue
        if many and isinstance(data[name], list):
            for index, item in enumerate(data[name]):
                _prepare(sub, item, (*path, name, index), doc, base_dir, hidden)
        elif not many:
            _prepare(sub, data[name], (*path, name), doc, base_dir, hidden)


def _secret(annotation: Any) -> bool:
    """A field holding a secret: ``SecretStr`` or ``SecretStr | None``."""
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds directly (``M``, ``M | None``) or in a list (``list[M]``)."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg, False
    if origin is list:
        (arg,) = typing.get_args(annotation)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, True
    return None, False


def _read_secret(
    data: dict[str, Any],
    key: str,
    stem: str,
    path: KeyPath,
    doc: Document,
    base_dir: Path,
    hidden: set[KeyPath],
) -> None:
    """Replace ``X_file: PATH`` by ``X: <file content>``; the content is never shown."""
    where = (*path, key)
    value = data.pop(key)
    doc.lines[(*path, stem)] = doc.line(where)
    hidden.add((*path, stem))
    if stem in data:
        doc.problem(where, f"give either '{stem}' or '{key}', not both")
        return
    data[stem] = ""
    if not isinstance(value, str) or not value.strip():
        doc.problem(where, "expected the path of a file")
        return
    file = Path(value).expanduser()
    file = file if file.is_absolute() else base_dir / file
    try:
        data[stem] = file.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        doc.problem(where, f"{file} is not UTF-8 text")
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        doc.problem(where, f"cannot read {file}: {why}", unavailable=True)


_EXPECTED = {
    "string_type": "expected text (put it in quotes)",
    "string_too_short": "must not be empty",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "list_type": "expected a list",
    "too_short": "expected at least one entry",
    "extra_forbidden": "unknown key",
}


def _translate(
    error: ErrorDetails, doc: Document, hidden: set[KeyPath], secret_keys: frozenset[str]
) -> tuple[KeyPath, Problem]:
    """A pydantic error as a Problem in plain English, with no secret in it."""
    loc: KeyPath = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    kind = error["type"]
    full = loc + tuple(ctx.get("at", ()))
    if kind == "missing":
        name = str(loc[-1])
        hint = f" (or '{name}_file')" if name in secret_keys else ""
        return full, Problem(doc.line(loc[:-1]), loc[:-1], f"missing required key '{name}'{hint}")
    if kind == "config":
        message = str(ctx["message"])
    elif kind == "literal_error":
        message = f"expected one of: {str(ctx.get('expected', '')).replace(chr(39), '')}"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    else:
        message = _EXPECTED.get(kind, error["msg"])
    secret = any(p in secret_keys for p in full if isinstance(p, str)) or any(
        full[: len(h)] == h for h in hidden
    )
    shown = error.get("input")
    text = repr(shown)
    if (
        not secret
        and isinstance(shown, str | int | float | bool)
        and not (isinstance(shown, str) and text in message)
    ):
        message += f" (got {text[:40]}{'...' if len(text) > 40 else ''})"
    return full, Problem(doc.line(full), full, message)
