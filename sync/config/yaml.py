"""YAML with line numbers: every value of the config keeps the line it was written on.

PyYAML's ``safe_load`` throws the marks away, silently keeps the last of two equal
keys and turns a column called ``on`` into ``True``. Here the node tree from
``yaml.compose`` is walked by hand instead, so that every later error can name the
file and line, duplicate keys are refused, and mapping keys stay the text the user
typed. ``${VAR}`` expansion also happens here, after parsing, so lines stay right.

Every problem found is kept as a ``Problem`` until all can be reported at once;
``sync.config.check`` then checks the plain values against the models.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml
from pydantic_core import PydanticCustomError

from sync.config.urls import Splice, splice
from sync.errors import ConfigError

KeyPath = tuple[str | int, ...]


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``; used for keys and columns."""
    options = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{options[close[0]]}'?)" if close else ""


def invalid(message: str, *at: str | int) -> PydanticCustomError:
    """A validation error in plain English; ``at`` points below the failing field."""
    return PydanticCustomError("config", "{message}", {"message": message, "at": at})


class Problem(NamedTuple):
    """One thing wrong with the config, kept until all of them can be reported."""

    line: int
    path: KeyPath
    message: str
    unavailable: bool = False  # the environment did not give the value: an unset variable

    def render(self, source: str) -> str:
        """``FILE:LINE: key.path: message``, the one format every config error uses."""
        where = format_path(self.path)
        return f"{source}:{self.line}: " + (f"{where}: " if where else "") + self.message


def format_path(path: KeyPath) -> str:
    """``("jobs", 0, "source", "url")`` -> ``jobs[0].source.url``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def raise_problems(problems: list[Problem], source: str) -> None:
    """Raise one ConfigError listing every problem, in file order, or do nothing."""
    if problems:
        unique = sorted(set(problems), key=lambda p: (p.line, format_path(p.path), p.message))
        raise ConfigError("\n".join(p.render(source) for p in unique))


@dataclass
class Document:
    """Plain Python values built from the YAML, plus the line of every key path."""

    data: Any
    source: str
    lines: dict[KeyPath, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    expanded: set[KeyPath] = field(default_factory=set)  # values a ${VAR} reference made

    def line(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor that was in the file."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1

    def problem(self, path: KeyPath, message: str, *, unavailable: bool = False) -> None:
        """Record a problem at ``path``'s line."""
        self.problems.append(Problem(self.line(path), path, message, unavailable))


def compose(text: str, source: str) -> Document:
    """Parse ``text``; malformed YAML raises at once, other problems are collected."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "unreadable"
        raise ConfigError(f"{source}:{line}: malformed YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:1: malformed YAML: {exc}") from None
    doc = Document(data=None, source=source)
    if root is None:
        doc.lines[()] = 1
        doc.problem((), "the config file is empty")
        return doc
    doc.lines[()] = root.start_mark.line + 1
    builder = _Builder(doc)
    doc.data = builder.build(root, ())
    return doc


_MAX_VALUES = 100_000


class _Builder:
    """Turns nodes into dicts, lists and scalars, recording lines as it goes."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.loader = yaml.SafeLoader("")  # only its scalar constructors are used
        self.active: set[int] = set()
        self.budget = _MAX_VALUES  # aliases are copied: a "billion laughs" must not hang us

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        if id(node) in self.active:
            self.doc.problem(path, "recursive YAML alias")
            return None
        self.budget -= 1
        if self.budget < 0:
            message = f"more than {_MAX_VALUES} values (aliases expanding too far?)"
            raise ConfigError(f"{self.doc.source}:{node.start_mark.line + 1}: {message}")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self._item(child, (*path, i)) for i, child in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self.active.discard(id(node))

    def _item(self, node: yaml.Node, path: KeyPath) -> Any:
        self.doc.lines[path] = node.start_mark.line + 1
        return self.build(node, path)

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        own = [(k, v) for k, v in node.value if k.tag != "tag:yaml.org,2002:merge"]
        own_keys = {id(k) for k, _ in own}
        try:
            self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merges
        except yaml.MarkedYAMLError as exc:
            self.doc.problem(path, f"bad merge key: {exc.problem}")
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.doc.problems.append(Problem(line, path, "a key must be plain text"))
                continue
            key = str(key_node.value)
            if key in first_line and id(key_node) in own_keys:
                message = f"duplicate key '{key}' (first given on line {first_line[key]})"
                self.doc.problems.append(Problem(line, (*path, key), message))
                continue
            if id(key_node) in own_keys:
                first_line[key] = line
            self.doc.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        return out

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError):
            self.doc.problem(path, f"cannot read this value (tag {node.tag})")
            return None


_REF = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-)([^}]*))?\})")


def expand_env(doc: Document, environ: Mapping[str, str]) -> None:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value; ``$$`` is ``$``.

    In any string value that begins ``scheme://``, what a reference puts into the
    URL's user-info (``user:password@``) is percent-encoded, so a password may hold
    ``@ : / %`` (see :func:`sync.config.urls.splice`). Problems are recorded without quoting
    the value, which may hold a secret.
    """
    doc.data = _expand(doc, doc.data, (), environ)


def _expand(doc: Document, value: Any, path: KeyPath, environ: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(doc, v, (*path, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(doc, v, (*path, i), environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    parts: list[Splice] = []
    pos = 0
    bad = False
    for match in _REF.finditer(value):
        bad = bad or "${" in value[pos : match.start()]
        pos = match.end()
        dollar, name, has_default, default = match.groups()
        if dollar:
            parts.append(Splice(match.start(), pos, "$", literal=True))
            continue
        doc.expanded.add(path)
        found = environ.get(name)
        if found is None or (has_default and found == ""):
            if has_default:
                found = default
            else:
                doc.problem(path, f"environment variable {name} is not set", unavailable=True)
                found = ""
        parts.append(Splice(match.start(), pos, found))
    if bad or "${" in value[pos:]:
        doc.problem(path, "malformed ${...} reference (write $$ for a literal $)")
    return splice(value, parts)
