"""``docs/cli.md``, written from the command tree itself, so the page cannot drift from the
commands: ``tests/agent/cli/test_reference.py`` fails when the file differs from what this
module renders. Regenerate it with ``python -m meterkit_agent.cli.reference > docs/cli.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer

from .conventions import hidden_aliases

HEADER = """\
# The `meterkit` command line

Generated from the commands themselves (`python -m meterkit_agent.cli.reference >
docs/cli.md`); a test fails when this page and the commands differ.

Every command takes `-h` / `--help`; `meterkit --version` prints the version.

## Exit codes

| code | meaning |
|------|---------|
| 0 | ok |
| 1 | the command ran and found problems (differences, invalid data, a stopped agent) |
| 2 | bad usage or configuration (an unknown option, a bad value, a configuration that cannot be used) |

No command ends in a traceback: an error is one line, `error: ...`, or a list of problems
naming file, line and reason.

## One name per concept

`--url` is the URL of a ledger or a backend, `--db` a ledger's database URL, in every
command. The names they replace still work for a release and are shown nowhere else:
`--ledger`, `--backend` and `agent run --to` (now `--url`); `--ledger-db` (now `--db`).
"""


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of every command that runs something, depth first, in help's order."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name in command.list_commands(None) if hasattr(command, "list_commands") else sorted(subcommands):
        yield from commands(subcommands[name], (*path, name))


def first_line(text: str | None) -> str:
    """The first sentence of a help text, on one line."""
    flat = " ".join((text or "").split())
    head, dot, _ = flat.partition(". ")
    return head + "." if dot else flat


def _row(param: Any) -> str:
    if param.param_type_name == "argument":
        name = param.metavar or (param.name or "").upper()
    else:
        shown = [n for n in param.opts + param.secondary_opts if n not in hidden_aliases(param)]
        name = ", ".join(shown) + ("" if getattr(param, "is_flag", False) else f" {param.metavar or ''}".rstrip())
    help_text = " ".join((param.help or "").split()).replace("|", "\\|")
    return f"| `{name}` | {help_text} |"


def render(root: Any) -> str:
    """The whole page for the command tree ``root``."""
    out = [HEADER]
    for path, command in commands(root):
        ctx = typer.Context(command, info_name=" ".join(("meterkit", *path)))
        out.append(f"## `meterkit {' '.join(path)}`\n")
        out.append(first_line(command.help) + "\n")
        rows = [_row(p) for p in command.get_params(ctx) if p.name != "help" and not getattr(p, "hidden", False)]
        if rows:
            out.append("| option or argument | what it does |\n|--------------------|--------------|")
            out.extend(rows)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    from . import app

    typer.echo(render(typer.main.get_command(app)), nl=False)


if __name__ == "__main__":
    main()
