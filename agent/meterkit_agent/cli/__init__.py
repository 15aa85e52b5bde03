"""The ``meterkit`` command line: one module per command group, sharing :mod:`.output`
for tables, JSON and error exits. A command imports what it runs inside its function, so
``meterkit meters validate`` never loads the agent's server stack."""

from __future__ import annotations

import typer

from .agent import agent_app
from .audit import audit_app
from .backfill import backfill_app
from .bill import bill_cmd
from .correct import correct_cmd
from .dlq import dlq_app
from .ledger import ledger_app, usage
from .meters import meters_app
from .notifications import notifications_app
from .privacy import privacy_app
from .reconcile import reconcile_cmd
from .spool import spool_app

app = typer.Typer(
    name="meterkit",
    help="Usage metering: check catalogs, inspect spools, backfill and correct history, preview bills.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(meters_app, name="meters")
app.add_typer(spool_app, name="spool")
app.add_typer(backfill_app, name="backfill")
app.command("correct")(correct_cmd)
app.add_typer(agent_app, name="agent")
app.add_typer(ledger_app, name="ledger")
app.command("usage")(usage)
app.command("bill")(bill_cmd)
app.add_typer(audit_app, name="audit")
app.add_typer(dlq_app, name="dlq")
app.command("reconcile")(reconcile_cmd)
app.add_typer(notifications_app, name="notifications")
app.add_typer(privacy_app, name="privacy")


def main() -> None:
    app()
