"""``meterkit ledger`` (serve the embedded backend) and ``meterkit usage`` (query it).

``ledger serve --plans plans.yaml`` also serves bill previews (``meterkit bill`` reads
them); the plans file is checked before the ledger listens, so a bad one never serves.

``meterkit ledger serve --workers N`` serves one address from N processes, as
``uvicorn --workers`` and ``gunicorn --workers`` do, because that is what a user of either
expects the option to mean: the command binds the address once, starts N worker processes
that accept on that one socket (the kernel hands each connection to one of them), restarts
a worker that dies, and stops them all on SIGTERM or Ctrl-C (uvicorn's supervisor). One
command, one address, one process to signal: nothing for the user to arrange. The
alternative, N independent commands on one port with ``SO_REUSEPORT``, leaves starting,
counting and restarting them to the user, and on Linux lets any process of the same user
join the port. Each worker opens its own connections to the one database, and PostgreSQL
keeps them consistent: a uid is stored once whichever worker receives it
(``ON CONFLICT``). SQLite takes one writer at a time, so there several workers only help
queries.

The workers are started by uvicorn as fresh interpreters (``spawn``) that build the app from
:func:`worker_app`; the options reach them in one environment variable, never in argv,
since they may hold the token and the database password.

Secure by default (:mod:`..httpserver`). The token comes from ``--token-file`` (a file
only its owner may read) or ``METERKIT_LEDGER_TOKEN``; ``--token`` still works and warns
that every user sees it in ``ps``. A ``--host`` beyond loopback with neither a token nor
client credentials is refused unless ``--insecure-no-auth`` says so, and then warned
about at start. The token and the client secret never appear in a log line
(:func:`..credentials.redact_logs`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

import meterkit

from ..credentials import SecretFileError, command_line_warning, read_secret_file, redact_logs, secret_values
from .output import LedgerOrg, LedgerToken, LedgerTokenFile, call_ledger, fail, print_table

#: How ``ledger serve`` hands its options to its worker processes (inherited environment).
_WORKER_OPTIONS = "METERKIT_LEDGER_WORKER_OPTIONS"

ledger_app = typer.Typer(help="The embedded m3ter-compatible backend.", no_args_is_help=True)


@ledger_app.command("serve")
def ledger_serve(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option("--db", help="sqlite:///path or postgresql://...")] = None,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port to listen on")] = 8765,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="METERKIT_LEDGER_TOKEN", help="require this bearer token (prefer --token-file)"),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            envvar="METERKIT_LEDGER_TOKEN_FILE",
            help="require the bearer token in this file (mode 600)",
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option("--insecure-no-auth", help="serve a --host beyond loopback without any token (not advised)"),
    ] = False,
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="refuse measurements the catalog does not allow")
    ] = None,
    client_id: Annotated[str | None, typer.Option("--client-id", help="enable m3ter's /oauth/token exchange")] = None,
    client_secret: Annotated[
        str | None,
        typer.Option(
            "--client-secret",
            envvar="METERKIT_LEDGER_CLIENT_SECRET",
            help="the OAuth client secret clients must give (prefer --client-secret-file)",
        ),
    ] = None,
    client_secret_file: Annotated[
        Path | None,
        typer.Option("--client-secret-file", envvar="METERKIT_LEDGER_CLIENT_SECRET_FILE", help="mode 600"),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="serve the address from this many processes (PostgreSQL)")
    ] = 1,
    plans: Annotated[
        Path | None,
        typer.Option("--plans", help="a plans.yaml: serve bill previews and cap balances, notify thresholds"),
    ] = None,
    signals: Annotated[
        Path | None,
        typer.Option("--signals", help="a signals.yaml: webhooks for notifications, drop and spike detection"),
    ] = None,
) -> None:
    """Serve the ledger's m3ter-compatible ingest API, usage queries and, with --plans,
    bill previews, cap balances and threshold notifications; with --signals, webhooks and
    drops and spikes (docs/notifications.md). A plans or signals file with any problem
    stops the command (exit 2) naming each. A --host beyond loopback needs a token (or
    client credentials), or --insecure-no-auth."""
    import uvicorn

    from ..httpserver import open_listener_problem
    from ..paths import default_ledger_url

    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_LEDGER_TOKEN")
    client_secret = secret_option(
        ctx,
        "--client-secret",
        client_secret,
        "--client-secret-file",
        client_secret_file,
        "METERKIT_LEDGER_CLIENT_SECRET",
    )
    if (client_id is None) != (client_secret is None):
        raise fail("give both --client-id and --client-secret (or --client-secret-file), or neither")
    remedy = "Give --token-file PATH (or METERKIT_LEDGER_TOKEN), or --insecure-no-auth to serve without one"
    problem = open_listener_problem(host, bool(token) or client_secret is not None, insecure_no_auth, remedy)
    if problem is not None:
        raise fail(problem)
    url = db or default_ledger_url()
    options = {
        "db": url,
        "token": token,
        "catalog": str(catalog.resolve()) if catalog else None,
        "client_id": client_id,
        "client_secret": client_secret,
        "plans": str(plans.resolve()) if plans else None,
        "signals": str(signals.resolve()) if signals else None,
    }
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # Opened here whatever the number of workers: a bad catalog, URL or database fails the
    # command with its reason, and the schema is made or migrated once, before any worker.
    app, ledger = _app(options)
    dialect = ledger.engine.dialect.name
    processes = f", {workers} processes" if workers > 1 else ""
    typer.echo(f"ledger on http://{host}:{port} ({dialect}{processes})", err=True)
    if insecure_no_auth and not token and client_secret is None:
        from ..httpserver import insecure_warning, is_loopback

        if not is_loopback(host):
            typer.echo(insecure_warning("the ledger", host).replace("insecure_no_auth", "--insecure-no-auth"), err=True)
    if workers > 1 and dialect == "sqlite":
        typer.echo("note: SQLite takes one writer at a time; several processes help on PostgreSQL", err=True)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    ledger.close()
    os.environ[_WORKER_OPTIONS] = orjson.dumps({**options, "supervisor": os.getpid()}).decode()
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=host, port=port, log_level="warning")


def _app(options: dict[str, Any]) -> tuple[Any, Any]:
    """The ledger's app and store for ``serve``'s options. Raises typer.Exit (via
    :func:`fail`) naming a bad catalog, every problem of a bad plans or signals file (exit
    2: bad configuration), or a database that cannot be opened."""
    from ..billing import PlansError, load_plans
    from ..ledger import Ledger
    from ..ledger.api import create_app
    from ..signals import SignalsFileError, load_signals

    redact_logs([options["token"], options["client_secret"], *secret_values(options["db"])])
    try:
        cat = meterkit.load_catalog(options["catalog"]) if options["catalog"] else None
    except meterkit.CatalogError as exc:
        raise fail(str(exc)) from None
    try:  # checked against the catalog when there is one: a plan cannot price a field no meter has
        plans = load_plans(options["plans"], cat) if options.get("plans") else None
    except PlansError as exc:  # a configuration the ledger cannot serve with: exit 2
        raise fail(str(exc)) from None
    try:  # webhook secrets are read here too: a missing one stops the command, named
        signals = load_signals(options["signals"]) if options.get("signals") else None
    except SignalsFileError as exc:
        raise fail(str(exc)) from None
    try:
        ledger = Ledger(options["db"])
    except Exception as exc:  # a bad URL or an unreachable database: say which, not a traceback
        raise fail(f"cannot open ledger database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    client_id, client_secret = options["client_id"], options["client_secret"]
    credentials = (client_id, client_secret) if client_id and client_secret else None
    app = create_app(
        ledger, token=options["token"], catalog=cat, client_credentials=credentials, plans=plans, signals=signals
    )
    return app, ledger


def secret_option(
    ctx: typer.Context, option: str, given: str | None, file_option: str, path: Path | None, env: str
) -> str | None:
    """A secret from ``option`` (its value: the command line or ``env``) or ``file_option``
    (a file only its owner may read); a warning when it was typed on the command line.
    Raises typer.Exit naming the problem: both given, or a file that cannot be used."""
    source = ctx.get_parameter_source(option.lstrip("-").replace("-", "_"))
    typed = source is not None and source.name == "COMMANDLINE"
    if path is not None:
        if typed:
            raise fail(f"give {option} or {file_option}, not both")
        try:
            return read_secret_file(path, file_option)
        except SecretFileError as exc:
            raise fail(str(exc)) from None
    if typed and given:
        typer.echo(command_line_warning(option, f"{file_option} PATH or the {env} environment variable"), err=True)
    return given


def worker_app() -> Any:
    """The app of one ``ledger serve --workers`` process (uvicorn calls it in each worker).
    The worker stops when the command that started it is gone, so a supervisor killed
    outright (SIGKILL) leaves no worker serving its address."""
    options = orjson.loads(os.environ.pop(_WORKER_OPTIONS))
    # Watched by the command's pid, not by this process's parent at start: a worker still
    # starting when the command is killed would take its new parent for the command.
    supervisor = options.pop("supervisor")
    threading.Thread(target=_exit_with_parent, args=(supervisor,), name="ledger-parent-watch", daemon=True).start()
    app, _ledger = _app(options)
    return app


def _exit_with_parent(supervisor: int) -> None:
    while os.getppid() == supervisor:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown: finish the requests in hand


def usage(
    ctx: typer.Context,
    meter: Annotated[str, typer.Option("--meter", help="the meter's code")],
    url: Annotated[str, typer.Option("--url", help="ledger base URL")] = "http://127.0.0.1:8765",
    org: LedgerOrg = "default",
    account: Annotated[str | None, typer.Option("--account", help="one account only (default: every account)")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="inclusive: 2026-11-01T00:00:00Z, ...+01:00, or 2026-11-01 (UTC)")
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="exclusive; the same spellings as --from")] = None,
    aggregation: Annotated[
        str, typer.Option("--aggregation", help="SUM, MIN, MAX, COUNT, LATEST, MEAN or UNIQUE")
    ] = "SUM",
    field: Annotated[str | None, typer.Option("--field", help="the data or derived field to aggregate")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="hour, day or month")] = None,
    group_by: Annotated[
        list[str] | None, typer.Option("--group-by", metavar="FIELD", help="group by this dimension (repeatable)")
    ] = None,
    quantity_per_unit: Annotated[
        str, typer.Option("--quantity-per-unit", help="a decimal from 1e-9 to 1e18, read exactly")
    ] = "1",
    rounding: Annotated[
        str, typer.Option("--rounding", help="UP, DOWN, NEAREST or NONE, applied to each quantity per unit")
    ] = "NONE",
    token: LedgerToken = None,
    token_file: LedgerTokenFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Query usage from a ledger and print it as a table. Values are exact decimals; a bad
    --from, --to or --quantity-per-unit, or a query the ledger refuses, exits 2."""
    from ..ledger.exact import per_unit
    from ..ledger.queries import QueryError, period

    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_LEDGER_TOKEN")
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
    response = call_ledger("GET", url, f"/organizations/{org}/usage", token, params=params, timeout=30)
    if response.status_code == 400:
        raise fail(f"the ledger refused the query: {answer_message(response)}")
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


def answer_message(response: Any) -> str:
    """The ``message`` of a ledger's error answer, or the start of its body."""
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return str(response.text[:500])
