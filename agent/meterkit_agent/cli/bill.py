"""``meterkit bill``: an account's bills, and ``meterkit bill close``: closing a bill period.

Like ``meterkit usage``, the command asks a running ledger (``GET .../bills``, ``POST
.../bills/close``) rather than opening its database: the ledger holds the plans file it
was started with and the frozen bills of closed periods, so what the command prints is what
any other client of that ledger reads. The ledger computes the bills; this module only
checks the options and prints the answer, as JSON (the ledger's own, every amount an exact
decimal string) or as one table per bill: its status, its lines (adjustments for closed
periods among them), each usage line's bands (units x unit price, plus a band's fixed
price), subtotal, credits and total.

``close`` is an optional first argument rather than a subcommand, so ``meterkit bill
--account A --from F --to T`` stays as it was (a command group would need its options
before the subcommand).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import orjson
import typer

from .ledger import answer_message, secret_option
from .output import LedgerOrg, LedgerToken, LedgerTokenFile, call_ledger, fail

#: the columns of a bill's table, and which of them hold numbers (aligned right)
_COLUMNS = ("kind", "description", "quantity", "units", "amount")
_NUMBERS = ("quantity", "units", "amount")
#: what ``meterkit bill ACTION`` can do
_ACTIONS = ("close",)


def bill_cmd(
    ctx: typer.Context,
    action: Annotated[
        str | None,
        typer.Argument(metavar="close", help="close: close the bill period --period (it must have ended)"),
    ] = None,
    account: Annotated[str, typer.Option("--account", help="the account, as the plans file names it")] = "",
    start: Annotated[
        str | None,
        typer.Option("--from", help="inclusive: 2026-01-01T00:00:00Z, ...+01:00, or 2026-01-01 (UTC)"),
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="exclusive; the same spellings as --from")] = None,
    closing: Annotated[
        str | None, typer.Option("--period", help="close: the period's month (2026-01) or first instant")
    ] = None,
    url: Annotated[
        str, typer.Option("--url", "--ledger", help="ledger base URL (started with --plans)")
    ] = "http://127.0.0.1:8765",
    org: LedgerOrg = "default",
    token: LedgerToken = None,
    token_file: LedgerTokenFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="the ledger's answer: amounts as decimal strings")] = False,
) -> None:
    """Show the bills of an account for every bill period that intersects [--from, --to)
    (closed periods as frozen, open ones with adjustments for closed periods), or, with
    ``close``, close the bill period --period and print its frozen bill. A bad option, an
    unknown account, a period that is still running or a ledger without plans exits 2."""
    if action is not None and action not in _ACTIONS:
        raise fail(f"unknown action {action!r:.40}: meterkit bill [close] --account ...")
    if not account:
        raise fail("--account is required")
    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_LEDGER_TOKEN")
    if action == "close":
        _close(account, closing, start, end, url, org, token, as_json)
        return
    if closing is not None:
        raise fail("--period is for meterkit bill close; show bills with --from and --to")
    _show(account, start, end, url, org, token, as_json)


def _show(
    account: str, start: str | None, end: str | None, url: str, org: str, token: str | None, as_json: bool
) -> None:
    from ..ledger.queries import QueryError, period

    missing = [name for name, value in (("--from", start), ("--to", end)) if value is None]
    if missing:
        raise fail("; ".join(f"{name} is required" for name in missing))
    try:  # the ledger's own rules, checked here too so the message names the option
        period(start, end, names=("--from", "--to"))
    except QueryError as exc:
        raise fail("; ".join(exc.problems)) from None
    params = {"account": account, "from": start, "to": end}
    response = call_ledger("GET", url, f"/organizations/{org}/bills", token, params=params, timeout=60)
    if response.status_code in (400, 404, 422):
        raise fail(f"the ledger refused the bill preview: {answer_message(response)}")
    if response.status_code != 200:
        raise fail(f"{url} answered {response.status_code}: {response.text[:500]}")
    bills: list[dict[str, Any]] = response.json()["bills"]
    if as_json:
        typer.echo(orjson.dumps(bills, option=orjson.OPT_INDENT_2).decode())
        return
    if not bills:
        typer.echo(f"(no bill: {account} is on no plan from {start} to {end})")
    for index, one in enumerate(bills):
        if index:
            typer.echo("")
        print_bill(one)


def _close(
    account: str,
    named: str | None,
    start: str | None,
    end: str | None,
    url: str,
    org: str,
    token: str | None,
    as_json: bool,
) -> None:
    from ..billing.adjustments import period_start_ms

    if start is not None or end is not None:
        raise fail("meterkit bill close takes --period, not --from or --to")
    if named is None:
        raise fail("--period is required: the month (2026-01) or the first instant of the bill period to close")
    try:  # the ledger's own rule, checked here too so the message names the option
        period_start_ms(named)
    except ValueError as exc:
        raise fail(f"--period: {exc}; or a month such as 2026-01") from None
    body = {"account": account, "period": named}
    response = call_ledger("POST", url, f"/organizations/{org}/bills/close", token, json=body, timeout=60)
    if response.status_code in (400, 404, 409, 422):
        raise fail(f"the ledger refused to close the period: {answer_message(response)}")
    if response.status_code not in (200, 201):
        raise fail(f"{url} answered {response.status_code}: {response.text[:500]}")
    frozen: dict[str, Any] = response.json()["bill"]
    if as_json:
        typer.echo(orjson.dumps(frozen, option=orjson.OPT_INDENT_2).decode())
        return
    if response.status_code == 200:
        typer.echo(f"(already closed at {frozen.get('closed_at')}: this is the bill frozen then)")
    print_bill(frozen)


def print_bill(doc: dict[str, Any]) -> None:
    """One bill (as the ledger's JSON gives it) as a heading and a table."""
    status = doc.get("status", "open")
    if status == "closed":
        status += f" at {doc.get('closed_at')}"
    heading = f"{doc['account']}: {doc['bill_period']} from {doc['from']} to {doc['to']} ({doc['currency']})"
    typer.echo(f"{heading}, {status}")
    rows = []
    for line in doc["lines"]:
        rows.append(
            {
                "kind": line["kind"],
                "description": line["description"],
                "quantity": line.get("quantity") or "",
                "units": line.get("units") or "",
                "amount": line["amount"],
            }
        )
        rows.extend({"description": f"  {_band(band)}", "amount": band["amount"]} for band in _reached(line))
    rows.append({"description": "subtotal", "amount": doc["subtotal"]})
    rows.append(
        {"description": "credits", "amount": f"-{doc['credits']}" if _nonzero(doc["credits"]) else doc["credits"]}
    )
    if _nonzero(doc.get("unapplied_credit")):
        rows.append({"description": "credit not applied", "amount": doc["unapplied_credit"]})
    rows.append({"description": "total", "amount": doc["total"]})
    _table(rows)


def _reached(line: dict[str, Any]) -> list[dict[str, Any]]:
    """The bands a usage line put units in or charged a fixed price for."""
    return [b for b in line.get("bands", ()) if _nonzero(b["units"]) or _nonzero(b["fixed_price"])]


def _nonzero(amount: str | None) -> bool:
    return amount is not None and Decimal(amount) != 0


def _band(band: dict[str, Any]) -> str:
    upper = band["upper_limit"]
    span = f"{band['lower_limit']} to {upper}" if upper is not None else f"above {band['lower_limit']}"
    fixed = f" + {band['fixed_price']} fixed" if _nonzero(band["fixed_price"]) else ""
    return f"{span}: {band['units']} x {band['unit_price']}{fixed}"


def _table(rows: list[dict[str, Any]]) -> None:
    cells = [[str(row.get(c, "")) for c in _COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(_COLUMNS)]

    def render(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if c in _NUMBERS else v.ljust(w) for v, c, w in zip(values, _COLUMNS, widths, strict=True)
        ).rstrip()

    typer.echo(render(list(_COLUMNS)))
    for r in cells:
        typer.echo(render(r))
