"""The README's command table and the binary's ``--help`` name the same commands and options.

Each command's help is the one ``--help`` prints, every command's read in one process
(a process per command cost 12 s of the suite); the table is the one under
"## Command line". The options of the group itself (``-v``,
``-q``, ``--log-format``) work after a command's name too: its own row covers them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
Command = tuple[str, ...]  # () is the group itself


# Every command's help, as its --help prints it, in one process: {"run once": text}.
HELPS = """
import json, click
from sync.cli import cli

def walk(command, path, parent):
    name = path[-1] if path else "personyze-sync"
    ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    found[" ".join(path)] = command.get_help(ctx)
    for name in command.list_commands(ctx) if isinstance(command, click.Group) else []:
        walk(command.get_command(ctx, name), [*path, name], ctx)

found = {}
walk(cli, [], None)
print(json.dumps(found))
"""


def section(text: str, title: str) -> list[str]:
    """The lines under ``title:`` in a help text, up to the next blank line."""
    lines = text.splitlines()
    start = lines.index(f"{title}:") + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def options_in_help(text: str) -> set[frozenset[str]]:
    """The options a help's Options section lists, each as its names (``-c``, ``--config``)."""
    found: set[frozenset[str]] = set()
    for line in section(text, "Options"):
        if line.startswith("  -"):
            names = re.split(r"\s{2,}", line.strip())[0]
            found.add(frozenset(OPTION.findall(names.split(" [")[0])))
    return found


def names(options: set[frozenset[str]]) -> set[str]:
    return {name for option in options for name in option}


def uncovered(options: set[frozenset[str]], text: str) -> list[str]:
    """The options none of whose names ``text`` mentions, by their longest name."""
    said = set(OPTION.findall(text))
    return sorted(max(o, key=len) for o in options if not o & said)


def subcommands(text: str) -> list[str]:
    return [line.split()[0] for line in section(text, "Commands")] if "Commands:" in text else []


@pytest.fixture(scope="module")
def helps() -> dict[Command, str]:
    """Every command's --help, the groups' too."""
    env = {**os.environ, "COLUMNS": "200"}  # one option a line
    done = subprocess.run(
        [sys.executable, "-c", HELPS], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return {tuple(name.split()): text for name, text in json.loads(done.stdout).items()}


def table() -> dict[Command, tuple[str, str]]:
    """The rows of the README's command table: command -> (its synopsis, the whole row)."""
    text = README.read_text(encoding="utf-8")
    after = text.split("\n## Command line\n", 1)[1]
    rows: dict[Command, tuple[str, str]] = {}
    for line in after.splitlines():
        if rows and not line.startswith("|"):
            break  # the table's end
        match = re.match(r"^\| `personyze-sync([^`]*)` \|", line)
        if not match:
            continue
        synopsis = match[1].replace("\\|", "|")
        words = []
        for word in synopsis.split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        assert tuple(words) not in rows, f"two rows for {' '.join(words)!r}"
        rows[tuple(words)] = (synopsis, line.replace("\\|", "|"))
    assert rows, "no command table under '## Command line' in README.md"
    return rows


def leaves(helps: dict[Command, str]) -> set[Command]:
    return {c for c, text in helps.items() if c and not subcommands(text)}


def named(command: Command) -> str:
    return " ".join(("personyze-sync", *command))


def test_the_table_has_a_row_for_each_command_and_no_other(helps: dict[Command, str]) -> None:
    rows = set(table())
    assert sorted(leaves(helps) - rows) == [], "commands in --help missing from the table"
    assert sorted(rows - leaves(helps) - {()}) == [], "rows of the table for no such command"
    assert () in rows, "a row for the options every command takes (the group's)"


def test_each_option_of_the_table_exists_in_the_commands_help(helps: dict[Command, str]) -> None:
    common = names(options_in_help(helps[()]))
    wrong = {
        named(command): sorted(
            set(OPTION.findall(synopsis)) - names(options_in_help(helps[command])) - common
        )
        for command, (synopsis, _) in table().items()
        if command in helps
    }
    assert {c: o for c, o in wrong.items() if o} == {}


def test_each_option_of_a_commands_help_is_in_its_row(helps: dict[Command, str]) -> None:
    rows = table()
    common = options_in_help(helps[()])
    missing = {
        named(command): uncovered(options_in_help(helps[command]) - common, rows[command][1])
        for command in leaves(helps)
        if command in rows
    }
    missing[named(())] = uncovered(common, rows.get((), ("", ""))[1])
    assert {c: o for c, o in missing.items() if o} == {}


def test_the_parser_sees_what_it_must() -> None:
    """The help parsing on a help text of click's shape (a check that cannot fail is none)."""
    text = (
        "Usage: x [OPTIONS]\n\nOptions:\n  -c, --config FILE   The file.\n"
        "  --log-format [auto|json|text]  How.\n  -h, --help   Show.\n\nCommands:\n"
        "  once   One run.\n  rejected   Rows.\n"
    )
    options = options_in_help(text)
    assert options == {
        frozenset({"-c", "--config"}),
        frozenset({"--log-format"}),
        frozenset({"-h", "--help"}),
    }
    assert uncovered(options, "| `x [-c FILE] [--log-format F]` | does |") == ["--help"]
    assert subcommands(text) == ["once", "rejected"]
