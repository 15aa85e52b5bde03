"""What every command shares: tables, JSON, error exits, the state directory option,
logging. Commands print through these so they read and fail alike."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import meterkit

if TYPE_CHECKING:
    import requests

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="the agent's state directory")]
# The options of every command that reads a ledger over its API, declared once.
LedgerOrg = Annotated[str, typer.Option("--org", help="the organisation id in the ledger")]
LedgerToken = Annotated[str | None, typer.Option("--token", envvar="METERKIT_LEDGER_TOKEN", help="prefer --token-file")]
LedgerTokenFile = Annotated[
    Path | None,
    typer.Option("--token-file", envvar="METERKIT_LEDGER_TOKEN_FILE", help="the ledger's bearer token (mode 600)"),
]
DestinationOpt = Annotated[
    str | None,
    typer.Option(
        "--destination", help="an agent with several exporters: the exporter id whose state to use (default: the first)"
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr; raise what this returns to exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def call_ledger(
    method: str, base: str, path: str, token: str | None, *, timeout: float, code: int = 2, **request: Any
) -> requests.Response:
    """``method`` ``path`` of the ledger at ``base``, with ``token`` as its bearer; a ledger
    that cannot be reached exits ``code``, naming it without credentials. What the ledger
    answered is the caller's to judge."""
    import requests

    from ..credentials import shown_url

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return requests.request(method, f"{base.rstrip('/')}{path}", headers=headers, timeout=timeout, **request)
    except requests.RequestException as exc:
        raise fail(f"cannot reach the ledger at {shown_url(base)}: {type(exc).__name__}", code) from None


def print_problems(exc: meterkit.CatalogError) -> None:
    for p in exc.problems:
        typer.echo(f"{p}  [{p.reason}]", err=True)


def print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def state_dir_or_default(state_dir: Path | None, destination: str | None = None) -> Path:
    """The agent's state directory, or with ``destination`` that exporter's own in it."""
    from ..paths import default_state_dir, destination_dirs

    directory = state_dir or default_state_dir()
    if destination is None:
        return directory
    found = destination_dirs(directory)
    if destination not in found:
        known = ", ".join(name for name in found if name) or "none recorded"
        raise fail(f"{directory}: no destination {destination!r} (destinations: {known})", 2)
    return found[destination]


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        typer.echo("(no usage)")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) if c != "value" else c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        typer.echo(
            "  ".join(v.rjust(w) if c == "value" else v.ljust(w) for v, c, w in zip(r, columns, widths, strict=True))
        )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)
