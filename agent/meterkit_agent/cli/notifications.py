"""``meterkit notifications list``: the notification events a ledger recorded (thresholds
of caps, price bands, drops and spikes), oldest first, with how each webhook delivery
stands. Read from the ledger's ``GET /organizations/{org}/notifications``."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from .ledger import secret_option
from .output import LedgerOrg, LedgerToken, LedgerTokenFile, call_ledger, fail, print_table

notifications_app = typer.Typer(help="Threshold, drop and spike notifications recorded by a ledger.")


@notifications_app.command("list")
def list_cmd(
    ctx: typer.Context,
    account: Annotated[str | None, typer.Option("--account", help="one account's notifications")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="recorded at or after: 2026-03-01 or 2026-03-01T08:00:00Z")
    ] = None,
    ledger: Annotated[str, typer.Option("--url", "--ledger", help="ledger base URL")] = "http://127.0.0.1:8765",
    org: LedgerOrg = "default",
    token: LedgerToken = None,
    token_file: LedgerTokenFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="the ledger's answer, as JSON")] = False,
) -> None:
    """List notifications as a table (or JSON): when, what, whose, and each delivery's
    state. A ledger that refuses the request exits 2 with its message."""
    from ..instants import InstantError, boundary_ms
    from .ledger import answer_message

    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_LEDGER_TOKEN")
    if since is not None:
        try:
            boundary_ms(since, "--since")
        except InstantError as exc:
            raise fail(str(exc)) from None
    params = {k: v for k, v in (("account", account), ("since", since)) if v is not None}
    response = call_ledger("GET", ledger, f"/organizations/{org}/notifications", token, params=params, timeout=30)
    if response.status_code != 200:
        raise fail(f"{ledger} answered {response.status_code}: {answer_message(response)}")
    found = response.json()["notifications"]
    if as_json:
        typer.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        typer.echo("(no notifications)")
        return
    print_table([row(n) for n in found])


def row(n: dict[str, Any]) -> dict[str, str]:
    """One notification as a table row."""
    what = n["meter"] + (f".{n['measure']}" if n["measure"] else "")
    return {
        "created": n["created"],
        "type": n["type"],
        "account": n["account"],
        "meter": what,
        "threshold": n["threshold"],
        "period": n["period"]["start"],
        "deliveries": "; ".join(_delivery(d) for d in n["deliveries"]) or "-",
    }


def _delivery(d: dict[str, Any]) -> str:
    tries = f"{d['attempts']} attempt{'s' if d['attempts'] != 1 else ''}"
    if d["status"] == "delivered":
        return f"{d['endpoint']}: delivered ({tries})"
    error = f", {d['last_error']}" if d["last_error"] else ""
    return f"{d['endpoint']}: pending ({tries}{error})"
