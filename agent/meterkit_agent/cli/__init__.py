"""The ``meterkit`` command line: one module per command group, sharing :mod:`.output`
for tables, JSON and error exits. A command imports what it runs inside its function, so
``meterkit meters validate`` never loads the agent's server stack.

Help is plain text, as git's and click's are: option metavars name what to give (``PATH``,
``URL``), never a Python type, and flags show none. ``-h`` is ``--help`` everywhere, and
``--version`` prints the package's version. Exit codes, in every command: 0 ok, 1 the
command ran and found problems (differences, invalid data), 2 bad usage or configuration
(docs/cli.md).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import meterkit

from .agent import agent_app
from .audit import audit_app
from .backfill import backfill_app
from .bill import bill_cmd
from .conventions import use_conventional_commands
from .correct import correct_cmd
from .dev import dev_cmd
from .dlq import dlq_app
from .init import init_cmd
from .ledger import ledger_app, usage
from .meters import meters_app
from .notifications import notifications_app
from .output import fail, print_problems
from .privacy import privacy_app
from .reconcile import reconcile_cmd
from .spool import spool_app


class _Meterkit(TyperGroup):
    """The root command: an error of the environment that a command did not name itself
    (a file where a directory was expected, a database that cannot be opened) ends the
    command with ``error: ...`` and exit 2, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        from ..audit.journal import JournalError
        from ..config import ConfigFileError

        try:
            return super().invoke(ctx)
        except meterkit.CatalogError as exc:
            print_problems(exc)
            raise typer.Exit(2) from None
        except ConfigFileError as exc:
            for line in exc.problems:
                typer.echo(line, err=True)
            raise typer.Exit(2) from None
        except (OSError, JournalError) as exc:
            raise fail(_describe(exc)) from None
        except Exception as exc:
            if type(exc).__module__.startswith("sqlalchemy"):
                raise fail(f"cannot use the database: {_describe(exc)}") from None
            raise


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


#: Inherited by every subcommand's context (click passes help option names down).
CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="meterkit",
    help="Usage metering: check catalogs, inspect spools, backfill and correct history, preview bills.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings=CONTEXT,
    cls=_Meterkit,
)
for group, group_name in (
    (meters_app, "meters"),
    (spool_app, "spool"),
    (backfill_app, "backfill"),
    (agent_app, "agent"),
    (ledger_app, "ledger"),
    (audit_app, "audit"),
    (dlq_app, "dlq"),
    (notifications_app, "notifications"),
    (privacy_app, "privacy"),
):
    group.rich_markup_mode = None  # plain help: no type column (`<bool>`) beside each flag
    app.add_typer(group, name=group_name)
app.command("init")(init_cmd)
app.command("dev")(dev_cmd)
app.command("correct")(correct_cmd)
app.command("usage")(usage)
app.command("bill")(bill_cmd)
app.command("reconcile")(reconcile_cmd)
use_conventional_commands(app)  # help: one name per option, metavars without Python types


def package_version() -> str:
    """The installed distribution's version (pyproject's), or ``unknown`` from a bare checkout."""
    try:
        return version("meterkit")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"meterkit {package_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version of meterkit and exit"
        ),
    ] = False,
) -> None:
    """Usage metering: check catalogs, inspect spools, backfill and correct history, preview bills."""


def main() -> None:
    app()
