"""``meterkit bill``: an account's bill preview, from a ledger serving ``--plans``.

Like ``meterkit usage``, the command asks a running ledger (``GET .../bills``) rather than
opening its database: the ledger holds the plans file it was started with, so what the
command prints is what any other client of that ledger reads. The ledger computes the
bills; this module only checks the options and prints the answer, as JSON (the ledger's
own, every amount an exact decimal string) or as one table per bill: its lines, each usage
line's bands (units x unit price, plus a band's fixed price), subtotal, credits and total.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import orjson
import typer

from .ledger import answer_message
from .output import fail

#: the columns of a bill's table, and which of them hold numbers (aligned right)
_COLUMNS = ("kind", "description", "quantity", "units", "amount")
_NUMBERS = ("quantity", "units", "amount")


def bill_cmd(
    account: Annotated[str, typer.Option("--account", help="the account, as the plans file names it")],
    start: Annotated[
        str, typer.Option("--from", help="inclusive: 2026-01-01T00:00:00Z, ...+01:00, or 2026-01-01 (UTC)")
    ],
    end: Annotated[str, typer.Option("--to", help="exclusive; the same spellings as --from")],
    url: Annotated[
        str, typer.Option("--url", "--ledger", help="ledger base URL (started with --plans)")
    ] = "http://127.0.0.1:8765",
    org: Annotated[str, typer.Option("--org")] = "default",
    token: Annotated[str | None, typer.Option("--token", envvar="METERKIT_LEDGER_TOKEN")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the ledger's answer: amounts as decimal strings")] = False,
) -> None:
    """Preview the bills of an account for every bill period that intersects [--from,
    --to). A bad or empty range, an unknown account, or a ledger without plans exits 2."""
    import requests

    from ..ledger.queries import QueryError, period

    try:  # the ledger's own rules, checked here too so the message names the option
        period(start, end, names=("--from", "--to"))
    except QueryError as exc:
        raise fail("; ".join(exc.problems)) from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(
            f"{url.rstrip('/')}/organizations/{org}/bills",
            params={"account": account, "from": start, "to": end},
            headers=headers,
            timeout=60,
        )
    except requests.RequestException as exc:
        raise fail(f"cannot reach {url}: {type(exc).__name__}") from None
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


def print_bill(doc: dict[str, Any]) -> None:
    """One bill (as the ledger's JSON gives it) as a heading and a table."""
    typer.echo(f"{doc['account']}: {doc['bill_period']} from {doc['from']} to {doc['to']} ({doc['currency']})")
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
