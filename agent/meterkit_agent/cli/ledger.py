"""``meterkit ledger`` (serve the embedded backend) and ``meterkit usage`` (query it)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

import meterkit

from .output import fail, print_table

ledger_app = typer.Typer(help="The embedded m3ter-compatible backend.", no_args_is_help=True)


@ledger_app.command("serve")
def ledger_serve(
    db: Annotated[str | None, typer.Option("--db", help="sqlite:///path or postgresql://...")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8765,
    token: Annotated[
        str | None, typer.Option("--token", envvar="METERKIT_LEDGER_TOKEN", help="require this bearer token")
    ] = None,
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="refuse measurements the catalog does not allow")
    ] = None,
    client_id: Annotated[str | None, typer.Option("--client-id", help="enable m3ter's /oauth/token exchange")] = None,
    client_secret: Annotated[
        str | None, typer.Option("--client-secret", envvar="METERKIT_LEDGER_CLIENT_SECRET")
    ] = None,
) -> None:
    """Serve the ledger's m3ter-compatible ingest API and usage queries."""
    import uvicorn

    from ..ledger import Ledger
    from ..ledger.api import create_app
    from ..paths import default_ledger_url

    url = db or default_ledger_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        cat = meterkit.load_catalog(catalog) if catalog else None
    except meterkit.CatalogError as exc:
        raise fail(str(exc)) from None
    try:
        ledger = Ledger(url)
    except Exception as exc:  # a bad URL or an unreachable database: say which, not a traceback
        raise fail(f"cannot open ledger database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    typer.echo(f"ledger on http://{host}:{port} ({ledger.engine.dialect.name})", err=True)
    if (client_id is None) != (client_secret is None):
        raise fail("give both --client-id and --client-secret, or neither")
    credentials = (client_id, client_secret) if client_id and client_secret else None
    app = create_app(ledger, token=token, catalog=cat, client_credentials=credentials)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def usage(
    meter: Annotated[str, typer.Option("--meter")],
    url: Annotated[str, typer.Option("--url", help="ledger base URL")] = "http://127.0.0.1:8765",
    org: Annotated[str, typer.Option("--org")] = "default",
    account: Annotated[str | None, typer.Option("--account")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="inclusive: 2026-11-01T00:00:00Z, ...+01:00, or 2026-11-01 (UTC)")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="exclusive; the same spellings as --from")] = None,
    aggregation: Annotated[str, typer.Option("--aggregation")] = "SUM",
    field: Annotated[str | None, typer.Option("--field")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="hour, day or month")] = None,
    group_by: Annotated[list[str] | None, typer.Option("--group-by")] = None,
    quantity_per_unit: Annotated[
        str, typer.Option("--quantity-per-unit", help="a decimal from 1e-9 to 1e18, read exactly")
    ] = "1",
    rounding: Annotated[str, typer.Option("--rounding")] = "NONE",
    token: Annotated[str | None, typer.Option("--token", envvar="METERKIT_LEDGER_TOKEN")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Query usage from a ledger and print it as a table. Values are exact decimals; a bad
    --from, --to or --quantity-per-unit, or a query the ledger refuses, exits 2."""
    import requests

    from ..ledger.exact import per_unit
    from ..ledger.queries import QueryError, period

    try:  # the ledger's own rules, checked here too so the message names the option
        period(start, end, names=("--from", "--to"))
    except QueryError as exc:
        raise fail("; ".join(exc.problems)) from None
    try:
        per_unit(quantity_per_unit)
    except ValueError as exc:
        raise fail(f"--quantity-per-unit: {exc}") from None
    params: dict[str, Any] = {
        "meter": meter,
        "aggregation": aggregation,
        "quantityPerUnit": quantity_per_unit,
        "rounding": rounding,
    }
    for key, value in (("account", account), ("from", start), ("to", end), ("field", field), ("bucket", bucket)):
        if value is not None:
            params[key] = value
    if group_by:
        params["groupBy"] = group_by
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(
            f"{url.rstrip('/')}/organizations/{org}/usage", params=params, headers=headers, timeout=30
        )
    except requests.RequestException as exc:
        raise fail(f"cannot reach {url}: {type(exc).__name__}") from None
    if response.status_code == 400:
        raise fail(f"the ledger refused the query: {_message(response)}")
    if response.status_code != 200:
        raise fail(f"{url} answered {response.status_code}: {response.text[:500]}")
    # Every number as a Decimal: the ledger writes exact literals, and a float would round them.
    answer = response.json(parse_float=Decimal, parse_int=Decimal)
    for note in answer.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    data = answer["data"]
    if as_json:
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=_exact_literal).decode())
        return
    print_table([{k: f"{v:,f}" if isinstance(v, Decimal) else v for k, v in row.items()} for row in data])


def _exact_literal(value: Any) -> Any:
    """orjson's hook for a Decimal: its exact digits as a JSON number."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(type(value).__name__)


def _message(response: Any) -> str:
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return str(response.text[:500])
