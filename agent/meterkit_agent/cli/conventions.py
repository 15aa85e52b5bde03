"""Help that reads as a conventional command line, for every command.

Metavars name what to give: ``URL`` (a ledger's or backend's URL, a database URL), ``PATH``,
``TEXT``, ``INTEGER``, ``NUMBER``, never a Python type (typer's own ``<str>``, ``<path>``,
``list[...]``). An option that names its own metavar keeps it.

One flag name per concept, the old names kept as hidden aliases for a release.

The names: ``--url`` is the URL of a ledger or backend (was ``--to`` in ``agent run``,
``--backend`` in ``reconcile`` and ``audit verify``, ``--ledger`` elsewhere); ``--db`` is a
ledger's database URL (was ``--ledger-db``). An option declares its name first and its old
names after it (``typer.Option("--url", "--backend")``): the parser accepts every one, and
help shows the first long name only, so nobody learns an old name from ``--help`` while
scripts written with one keep working. ``tests/agent/cli/test_flags.py`` holds the map.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand


def hidden_aliases(param: Any) -> list[str]:
    """The names of ``param`` that help does not show: every long name after its first."""
    long = [name for name in getattr(param, "opts", []) if name.startswith("--")]
    return long[1:]


#: typer's type labels (``<str>``, ``<path>``) and the word shown instead.
_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Decimal": "NUMBER", "datetime": "DATETIME"}
_PATHS = {"path": "PATH", "file": "FILE", "directory": "DIR", "dir": "DIR"}


def conventional_metavar(param: Any) -> str | None:
    """The metavar ``param`` shows: None to keep typer's (a flag, a choice's ``<a|b>``)."""
    described = getattr(param, "type_descriptor", None)
    if described is None or getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if described.is_choice:
        return None
    if described.is_path:
        return _PATHS.get(str(described.path_type).lower(), "PATH")
    longs = [name for name in getattr(param, "opts", []) if name.startswith("--")]
    if longs and (longs[0] in ("--url", "--db") or longs[0].endswith("-url")):
        return "URL"
    element = str(param.bare_type()).removeprefix("list[").removesuffix("]")
    return _WORDS.get(element, element.upper())


class ConventionalCommand(TyperCommand):
    """A command whose help lists each option under its first long name only, with a
    metavar that names what to give."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is not None:
                continue
            if param.param_type_name == "option":
                param.metavar = conventional_metavar(param)
            elif param.name:  # an argument: its name, as click shows it (``FILE``)
                param.metavar = param.name.upper()

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """typer's sections (Arguments, Options), with the hidden aliases left out and an
        argument shown by its metavar alone (typer adds its type: ``FILE <path>``)."""
        args: list[tuple[str, str]] = []
        opts: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = _help_record(param, ctx)
            if record is not None:
                (args if param.param_type_name == "argument" else opts).append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _help_record(param: Any, ctx: Any) -> tuple[str, str] | None:
    hidden = hidden_aliases(param)
    saved = param.opts
    param.opts = [name for name in saved if name not in hidden]
    try:
        record: tuple[str, str] | None = param.get_help_record(ctx)
    finally:
        param.opts = saved
    if record is None or param.param_type_name != "argument":
        return record
    return str(param.metavar or record[0]), record[1]


def use_conventional_commands(app: typer.Typer) -> None:
    """Give every command of ``app`` and of its groups, at any depth, :class:`ConventionalCommand`
    (a command that names a class of its own keeps it)."""
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = ConventionalCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            use_conventional_commands(group.typer_instance)
