"""One flag name per concept: help shows the name, the old names still parse (hidden
aliases kept for a release); every option and argument has help, and no metavar shows a
Python type. The commands are found by walking the tree, so a command added later is
checked without a change here."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from meterkit_agent.cli import app
from meterkit_agent.cli.conventions import hidden_aliases
from meterkit_agent.cli.reference import commands

ROOT = typer.main.get_command(app)
COMMANDS = dict(commands(ROOT))
RUNNER = CliRunner()

#: (command, the option's name, its old names): the renames of issue 15.
RENAMED = [
    (("agent", "run"), "--url", ["--to"]),
    (("agent", "run"), "--db", ["--ledger-db"]),
    (("reconcile",), "--url", ["--backend"]),
    (("reconcile",), "--db", ["--ledger-db"]),
    (("audit", "verify"), "--url", ["--backend"]),
    (("audit", "verify"), "--db", ["--ledger-db"]),
    (("bill",), "--url", ["--ledger"]),
    (("correct",), "--url", ["--ledger"]),
    (("backfill", "revert"), "--url", ["--ledger"]),
    (("notifications", "list"), "--url", ["--ledger"]),
    (("privacy", "erase"), "--url", ["--ledger"]),
    (("privacy", "retain"), "--url", ["--ledger"]),
]
#: Names that mean one thing everywhere: no command may take them for anything else.
RETIRED = {"--ledger", "--backend", "--ledger-db", "--ledger-url"}


def option(path: tuple[str, ...], name: str) -> Any:
    found = [p for p in COMMANDS[path].params if name in getattr(p, "opts", [])]
    assert len(found) == 1, (path, name)
    return found[0]


def parsed(path: tuple[str, ...], args: list[str]) -> dict[str, Any]:
    """The parameters ``args`` set, as the command sees them (required ones not checked)."""
    ctx = COMMANDS[path].make_context(" ".join(path), args, resilient_parsing=True)
    return dict(ctx.params)


@pytest.mark.parametrize(("path", "name", "old"), RENAMED, ids=[f"{' '.join(p)} {n}" for p, n, _ in RENAMED])
def test_help_shows_the_name_and_the_old_names_still_work(path: tuple[str, ...], name: str, old: list[str]) -> None:
    param = option(path, name)
    assert param.opts[0] == name and hidden_aliases(param) == old
    shown = RUNNER.invoke(app, [*path, "--help"])
    assert shown.exit_code == 0 and f"  {name} " in shown.output
    for alias in old:
        assert alias not in shown.output.split(), (path, alias)
        value = "sqlite:///x.db" if name == "--db" else "http://127.0.0.1:1"
        assert parsed(path, [alias, value])[param.name] == parsed(path, [name, value])[param.name] == value


def test_an_old_name_runs_the_command_as_the_new_one() -> None:
    """Through the whole command, not only the parser: a ledger nobody answers at."""
    results = [
        RUNNER.invoke(app, ["notifications", "list", flag, "http://127.0.0.1:1", "--org", "o"])
        for flag in ("--url", "--ledger")
    ]
    assert results[0].exit_code == results[1].exit_code == 2
    assert results[0].output == results[1].output and "127.0.0.1:1" in results[0].output


def test_a_url_is_url_and_a_database_is_db_in_every_command() -> None:
    for path, command in COMMANDS.items():
        for param in command.params:
            names = set(getattr(param, "opts", []))
            first = next((n for n in getattr(param, "opts", []) if n.startswith("--")), None)
            assert first not in RETIRED, f"meterkit {' '.join(path)} {first}: use --url or --db"
            assert not names & RETIRED or first in ("--url", "--db"), (path, param.opts)


#: What typer shows for a type when no metavar is given (``<str>``, ``list[Path]``).
PYTHON_TYPE = re.compile(r"<(str|int|float|bool|path|file|directory|decimal|datetime|dict|tuple)\b|list\[|\bPath\b")


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"meterkit {' '.join(path)} {param.opts[0] if param.opts else param.name}"
        for path, command in COMMANDS.items()
        for param in command.params
        if param.name != "help"
        and not getattr(param, "hidden", False)
        and not (getattr(param, "help", "") or "").strip()
    ]
    assert not missing, "options and arguments without help:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=[" ".join(p) for p in sorted(COMMANDS)])
def test_no_metavar_shows_a_python_type(path: tuple[str, ...]) -> None:
    shown = RUNNER.invoke(app, [*path, "-h"])
    assert shown.exit_code == 0
    found = [name for name in _listed(shown.output) if PYTHON_TYPE.search(name)]
    assert not found, f"meterkit {' '.join(path)} -h:\n" + "\n".join(found)


def _listed(help_text: str) -> list[str]:
    """The first column (names and metavar) of the Arguments and Options sections."""
    names, inside = [], False
    for line in help_text.splitlines():
        if line in ("Arguments:", "Options:"):
            inside = True
        elif inside and line.startswith("  ") and not line.startswith("   "):
            names.append(line.strip().split("  ", 1)[0])
        elif line and not line.startswith(" "):
            inside = False
    return names
