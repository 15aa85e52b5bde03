"""The ``meterkit`` command line."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

import meterkit
from meterkit._model import CATEGORIES
from meterkit._spool import KIND_CONTROL, KIND_MEASUREMENT, read_segment, segments

app = typer.Typer(
    name="meterkit",
    help="Usage metering: check catalogs, inspect spools, backfill history.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
meters_app = typer.Typer(help="Work with a meter catalog (meters.yaml).", no_args_is_help=True)
spool_app = typer.Typer(help="Look inside a spool directory.", no_args_is_help=True)
app.add_typer(meters_app, name="meters")
app.add_typer(spool_app, name="spool")


def _print_problems(exc: meterkit.CatalogError) -> None:
    for p in exc.problems:
        typer.echo(f"{p}  [{p.reason}]", err=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@meters_app.command("validate")
def meters_validate(file: Annotated[Path, typer.Argument(help="the meters.yaml to check")]) -> None:
    """Check a catalog; print every problem with file, line, meter, field and reason."""
    try:
        catalog = meterkit.load_catalog(file)
    except meterkit.CatalogError as exc:
        _print_problems(exc)
        typer.echo(f"{len(exc.problems)} problem(s) in {file}", err=True)
        raise typer.Exit(1) from None
    derived = sum(len(m.derived_fields) for m in catalog.meters.values())
    typer.echo(f"{file}: ok, {len(catalog.meters)} meter(s), {derived} derived field(s)")


@spool_app.command("inspect")
def spool_inspect(
    directory: Annotated[Path, typer.Argument(help="the spool directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print every measurement as a JSON line")] = False,
) -> None:
    """Count measurements per meter and account; report losses and corrupt frames."""
    if not directory.is_dir():
        raise _fail(f"{directory} is not a directory")
    per_key: Counter[tuple[str, str]] = Counter()
    losses: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    files = segments(directory)
    sealed = 0
    out = sys.stdout.buffer
    for seg in files:
        result = read_segment(seg)
        if result.error:
            problems.append(f"{seg.name}: {result.error}")
            continue
        sealed += result.sealed
        for c in result.corrupt:
            problems.append(f"{seg.name}: {c.reason} at byte {c.offset} ({c.length} bytes skipped)")
        if result.torn and not result.corrupt:
            problems.append(
                f"{seg.name}: incomplete last frame at byte {result.next_offset}"
                " (still being written, or torn by a crash)"
            )
        for frame in result.frames:
            try:
                body = frame.json()
            except orjson.JSONDecodeError:
                problems.append(f"{seg.name}: frame at byte {frame.offset} is not JSON")
                continue
            if frame.kind == KIND_MEASUREMENT:
                per_key[(str(body.get("meter")), str(body.get("account")))] += 1
                if as_json:
                    out.write(frame.payload + b"\n")
            elif frame.kind == KIND_CONTROL and body.get("type") == "losses":
                for e in body.get("entries", []):
                    losses[(str(e.get("reason")), str(e.get("meter")))] += int(e.get("count", 0))
    if as_json:
        out.flush()
        for line in problems:
            typer.echo(f"warning: {line}", err=True)
        raise typer.Exit(1 if problems else 0)
    total = sum(per_key.values())
    typer.echo(f"{directory}: {len(files)} segment(s), {sealed} sealed, {total} measurement(s)")
    if per_key:
        width = max(len(m) for m, _ in per_key) + 2
        typer.echo(f"\n{'meter':<{width}}{'account':<24}{'count':>10}")
        for (m, a), n in sorted(per_key.items()):
            typer.echo(f"{m:<{width}}{a:<24}{n:>10}")
    if losses:
        typer.echo("\nlost (counted by the SDK):")
        for (reason, m), n in sorted(losses.items()):
            typer.echo(f"  {reason:<28}{m:<24}{n:>10}")
    rejected = directory / "rejected"
    if rejected.is_dir():
        lines = sum(1 for f in rejected.glob("*.jsonl") for _ in f.open("rb"))
        if lines:
            typer.echo(f"\n{lines} rejected measurement(s) kept in {rejected}")
    if problems:
        typer.echo("\nproblems:")
        for line in problems:
            typer.echo(f"  {line}")
        raise typer.Exit(1)


def _csv_rows(path: Path, meter: str, catalog: meterkit.Catalog | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV columns: account, ts, ets, uid, and fields as ``category.code`` (``measure.bytes``)
    or, with a catalog, bare field codes."""
    known = catalog.meters.get(meter) if catalog else None
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for record in reader:
            row: dict[str, Any] = {"meter": meter}
            for column, text in record.items():
                if column is None or text is None or text == "":
                    continue
                category, _, code = column.rpartition(".")
                if not category and known is not None and column in known.field_categories:
                    category, code = known.field_categories[column], column
                if category in CATEGORIES:
                    row.setdefault(category, {})[code] = (
                        _number(text) if category in ("measure", "income", "cost") else text
                    )
                else:
                    row[column] = text
            yield reader.line_num, row


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # left for validation to name


def _jsonl_rows(path: Path, meter: str) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield number, f"not JSON: {exc}"
                continue
            if isinstance(row, dict):
                row.setdefault("meter", meter)
            yield number, row


@app.command("backfill")
def backfill(
    file: Annotated[Path, typer.Argument(help="a .csv or .jsonl file of historical measurements")],
    meter: Annotated[str, typer.Option("--meter", help="the meter these rows belong to")],
    spool_dir: Annotated[
        Path | None,
        typer.Option("--spool-dir", help="spool directory (default: METERKIT_SPOOL_DIR)"),
    ] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="meters.yaml to validate against")] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="column holding a source event id; uids derive from it"),
    ] = None,
) -> None:
    """Spool historical measurements with deterministic uids: re-running never double counts."""
    from tqdm import tqdm

    if not file.is_file():
        raise _fail(f"{file} does not exist")
    try:
        client = meterkit.Client(catalog, spool_dir, mode="production")
    except meterkit.MeterkitError as exc:
        raise _fail(str(exc)) from None
    suffix = file.suffix.lower()
    if suffix == ".csv":
        rows: Iterator[tuple[int, Any]] = _csv_rows(file, meter, client.catalog)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(file, meter)
    else:
        raise _fail(f"{file}: expected a .csv or .jsonl file")
    total = sum(1 for _ in file.open("rb")) - (1 if suffix == ".csv" else 0)
    with tqdm(total=max(total, 0), unit="row", desc=file.name, file=sys.stderr, disable=None) as bar:

        def counted() -> Iterator[tuple[int, Any]]:
            for entry in rows:
                bar.update(1)
                yield entry

        result = client.submit_batch(counted(), key_field=key)
    client.shutdown()
    for p in result.problems:
        typer.echo(
            f"{file}:{p.line}: {p.message} [{p.reason}]" + (f" (field {p.field})" if p.field else ""),
            err=True,
        )
    typer.echo(f"{file}: {result.accepted} measurement(s) spooled, {result.rejected} rejected")
    if result.rejected:
        raise typer.Exit(1)


agent_app = typer.Typer(help="Run and inspect the sidecar agent.", no_args_is_help=True)
ledger_app = typer.Typer(help="The embedded m3ter-compatible backend.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(ledger_app, name="ledger")


def _configure_logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )


def _agent_config(
    config: Path | None,
    spool_dir: Path | None,
    catalog: Path | None,
    to: str | None,
    org: str,
    token: str | None,
    state_dir: Path | None,
    ledger_db: str | None,
) -> Any:
    from .config import ConfigFileError, load_config, simple_config

    try:
        if config is not None:
            return load_config(config)
        return simple_config(
            spool_dir=spool_dir, catalog=catalog, to=to, org=org, token=token, state_dir=state_dir, ledger_db=ledger_db
        )
    except ConfigFileError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    except meterkit.CatalogError as exc:
        _print_problems(exc)
        raise typer.Exit(2) from None


@agent_app.command("run")
def agent_run(
    config: Annotated[Path | None, typer.Option("--config", help="agent.yaml (Collector shape)")] = None,
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="spool to deliver (no --config)")] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="meters.yaml to validate and derive with")] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="m3ter-compatible ingest base URL; default: the local SQLite ledger")
    ] = None,
    org: Annotated[str, typer.Option("--org", help="organisation id")] = "default",
    token: Annotated[
        str | None, typer.Option("--token", envvar="METERKIT_AGENT_TOKEN", help="bearer token for --to")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="checkpoint, dead letters, status")] = None,
    ledger_db: Annotated[str | None, typer.Option("--ledger-db", help="database URL of the embedded ledger")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Deliver spooled measurements until SIGTERM, then drain and exit."""
    from .agent import Agent, stop_on_signals

    done = stop_on_signals()
    _configure_logging(verbose)
    cfg = _agent_config(config, spool_dir, catalog, to, org, token, state_dir, ledger_db)
    raise typer.Exit(Agent(cfg).run_forever(done))


@agent_app.command("validate-config")
def agent_validate_config(file: Annotated[Path, typer.Argument(help="agent.yaml")]) -> None:
    """Check an agent configuration; print every problem."""
    cfg = _agent_config(file, None, None, None, "default", None, None, None)
    pipe = cfg.pipeline
    typer.echo(
        f"{file}: ok; pipeline {', '.join(pipe.receivers)} -> {', '.join(pipe.processors) or '(none)'}"
        f" -> {', '.join(pipe.exporters)}"
    )


@agent_app.command("status")
def agent_status(
    state_dir: Annotated[Path | None, typer.Option("--state-dir")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the agent's health counters (from its status file)."""
    import time

    from .metrics import read_status

    directory = _state(state_dir)
    status = read_status(directory)
    if status is None:
        raise _fail(f"no status in {directory}: is an agent running with this --state-dir?", 1)
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    age = time.time() - float(status.get("at", 0))
    typer.echo(f"agent pid {status.get('pid')}, status written {age:.0f} s ago")
    for name, points in sorted(status.get("metrics", {}).items()):
        short = name.removeprefix("meterkit.agent.")
        for p in points:
            attrs = ", ".join(f"{k}={v}" for k, v in p.get("attributes", {}).items())
            label = f"{short}{{{attrs}}}" if attrs else short
            if "value" in p:
                typer.echo(f"  {label:<48}{p['value']:>14,}")
            else:
                mean = p["sum"] / p["count"] if p["count"] else 0
                typer.echo(f"  {label:<48}{p['count']:>14,}  mean {mean:.3f} s, max {p['max']:.3f} s")


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

    from .config import default_ledger_url
    from .ledger import Ledger
    from .ledger.app import create_app

    url = db or default_ledger_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        cat = meterkit.load_catalog(catalog) if catalog else None
    except meterkit.CatalogError as exc:
        raise _fail(str(exc)) from None
    try:
        ledger = Ledger(url)
    except Exception as exc:  # a bad URL or an unreachable database: say which, not a traceback
        raise _fail(f"cannot open ledger database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    typer.echo(f"ledger on http://{host}:{port} ({ledger.engine.dialect.name})", err=True)
    if (client_id is None) != (client_secret is None):
        raise _fail("give both --client-id and --client-secret, or neither")
    credentials = (client_id, client_secret) if client_id and client_secret else None
    app = create_app(ledger, token=token, catalog=cat, client_credentials=credentials)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command("usage")
def usage(
    meter: Annotated[str, typer.Option("--meter")],
    url: Annotated[str, typer.Option("--url", help="ledger base URL")] = "http://127.0.0.1:8765",
    org: Annotated[str, typer.Option("--org")] = "default",
    account: Annotated[str | None, typer.Option("--account")] = None,
    start: Annotated[str | None, typer.Option("--from")] = None,
    end: Annotated[str | None, typer.Option("--to")] = None,
    aggregation: Annotated[str, typer.Option("--aggregation")] = "SUM",
    field: Annotated[str | None, typer.Option("--field")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="hour, day or month")] = None,
    group_by: Annotated[list[str] | None, typer.Option("--group-by")] = None,
    quantity_per_unit: Annotated[float, typer.Option("--quantity-per-unit")] = 1.0,
    rounding: Annotated[str, typer.Option("--rounding")] = "NONE",
    token: Annotated[str | None, typer.Option("--token", envvar="METERKIT_LEDGER_TOKEN")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Query usage from a ledger and print it as a table."""
    import requests

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
        raise _fail(f"cannot reach {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise _fail(f"{url} answered {response.status_code}: {response.text[:500]}")
    data = response.json()["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    print_table(data)


audit_app = typer.Typer(help="The audit journal: verify it, trace a measurement.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list, inspect, correct and replay.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(dlq_app, name="dlq")

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="the agent's state directory")]


def _state(state_dir: Path | None) -> Path:
    from .config import default_state_dir

    return state_dir or default_state_dir()


@audit_app.command("verify")
def audit_verify(
    state_dir: StateDir = None,
    head: Annotated[
        str | None, typer.Option("--head", help="a previously exported head hash the chain must end at")
    ] = None,
) -> None:
    """Walk the hash chain; report the first broken link."""
    from .audit import verify

    journal = _state(state_dir) / "journal.jsonl"
    verdict = verify(journal, head)
    if verdict.ok:
        typer.echo(f"{journal}: ok, {verdict.entries:,} entries, head {verdict.head}")
        return
    where = f"line {verdict.line} (entry {verdict.seq})" if verdict.line else "the end"
    typer.echo(f"{journal}: BROKEN at {where}: {verdict.reason}", err=True)
    typer.echo(f"the first {verdict.entries:,} entries are intact", err=True)
    raise typer.Exit(1)


@audit_app.command("head")
def audit_head(state_dir: StateDir = None) -> None:
    """Print the chain head (seq and hash) to store elsewhere or sign."""
    from .audit import verify

    journal = _state(state_dir) / "journal.jsonl"
    verdict = verify(journal)
    if not verdict.ok:
        raise _fail(f"{journal} is broken: {verdict.reason}; run `meterkit audit verify`", 1)
    typer.echo(json.dumps({"journal": str(journal), "entries": verdict.entries, "head": verdict.head}))


@audit_app.command("show")
def audit_show(
    uid: Annotated[str, typer.Option("--uid", help="the measurement's uid")], state_dir: StateDir = None
) -> None:
    """Trace one measurement: who recorded it, which segment, which batch, which acknowledgement."""
    from .audit import contains_uid, read_entries

    journal = _state(state_dir) / "journal.jsonl"
    if not journal.exists():
        raise _fail(f"no journal at {journal}", 1)
    found = 0
    for line, e in read_entries(journal):
        if not isinstance(e, dict):
            typer.echo(f"warning: line {line}: {e}", err=True)
            continue
        kind = e.get("type")
        if kind == "delivery":
            for s in e.get("sources", []):
                if contains_uid(s.get("uids", {}), uid):
                    found += 1
                    pid, _, host = str(s.get("writer", "?@?")).partition("@")
                    typer.echo(f"recorded by   pid {pid} on {host}")
                    typer.echo(f"spooled in    {s.get('segment')}")
                    typer.echo(f"delivered in  batch {e.get('batch')} (journal entry {e.get('seq')}, {e.get('at')})")
                    typer.echo(f"              Idempotency-Key {e.get('idempotency_key')}")
                    for a in e.get("exporters", []):
                        answer = f" ({a['answer']})" if a.get("answer") else ""
                        typer.echo(f"acknowledged  by {a.get('exporter')}: {a.get('status')}{answer}")
        elif kind in ("dead_letter", "replay", "repair") and contains_uid(e.get("uids", {}), uid):
            found += 1
            what = {
                "dead_letter": f"dead-lettered ({', '.join(e.get('reasons', {}))})",
                "replay": "replayed",
                "repair": "re-sent by repair",
            }[kind]
            typer.echo(f"{what:<13} journal entry {e.get('seq')}, {e.get('at')}")
    if not found:
        raise _fail(f"uid {uid} is not in the journal (not delivered yet, or never recorded)", 1)


def _backend(config: Path | None, backend_url: str | None, ledger_db: str | None, org: str, token: str | None) -> Any:
    """The backend view and an exporter to repair with, from an agent config or flags."""
    from .config import LedgerExporterConfig, M3terExporterConfig, load_config
    from .exporters import LedgerExporter, M3terExporter
    from .reconcile import LedgerDbBackend, LedgerHttpBackend

    if config is not None:
        cfg = load_config(config)
        exporter_cfg = cfg.component("exporters", cfg.pipeline.exporters[0])
        if isinstance(exporter_cfg, LedgerExporterConfig):
            return (
                LedgerDbBackend(exporter_cfg.db, exporter_cfg.org_id),
                LedgerExporter("ledger", exporter_cfg),
                cfg.service.state_dir,
            )
        if isinstance(exporter_cfg, M3terExporterConfig):
            tok = exporter_cfg.token.get_secret_value() if exporter_cfg.token else None
            return (
                LedgerHttpBackend(exporter_cfg.base_url, exporter_cfg.org_id, tok),
                M3terExporter("m3ter", exporter_cfg),
                cfg.service.state_dir,
            )
        raise _fail("reconcile needs a backend it can query: a ledger (ledger exporter) or an m3ter-compatible one")
    if backend_url:
        exporter = M3terExporter("m3ter", M3terExporterConfig(base_url=backend_url, org_id=org, token=token or "none"))
        return LedgerHttpBackend(backend_url, org, token), exporter, None
    from .config import default_ledger_url

    db = ledger_db or default_ledger_url()
    return LedgerDbBackend(db, org), LedgerExporter("ledger", LedgerExporterConfig(db=db, org_id=org)), None


@app.command("reconcile")
def reconcile_cmd(
    start: Annotated[str | None, typer.Option("--from", help="period start, ISO 8601 (default: 24 hours ago)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="period end, ISO 8601 (default: now)")] = None,
    meter: Annotated[str | None, typer.Option("--meter")] = None,
    account: Annotated[str | None, typer.Option("--account")] = None,
    state_dir: StateDir = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="the agent's agent.yaml: state dir and backend")
    ] = None,
    backend_url: Annotated[
        str | None, typer.Option("--backend", help="ledger base URL (default: the embedded ledger database)")
    ] = None,
    ledger_db: Annotated[str | None, typer.Option("--ledger-db")] = None,
    org: Annotated[str, typer.Option("--org")] = "default",
    token: Annotated[str | None, typer.Option("--token", envvar="METERKIT_LEDGER_TOKEN")] = None,
    spool_dir: Annotated[list[Path] | None, typer.Option("--spool-dir", help="live spool(s) to repair from")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    do_repair: Annotated[
        bool, typer.Option("--repair", help="re-send measurements missing at the backend, then check again")
    ] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="also write a self-contained HTML report")] = None,
) -> None:
    """Compare what SDKs recorded, what the agent delivered and what the backend holds."""
    from .reconcile import ReconcileError, period_default, reconcile, repair
    from .report import render

    default_start, default_end = period_default()
    backend, exporter, cfg_state = _backend(config, backend_url, ledger_db, org, token)
    directory = state_dir or cfg_state or _state(None)
    try:
        report = reconcile(directory, backend, start or default_start, end or default_end, meter, account)
        if do_repair and any(d.kind == "missing_at_backend" for d in report.differences):
            result = repair(directory, report, backend, exporter, list(spool_dir or []))
            typer.echo(f"repair: re-sent {result.resent:,}, refused {result.refused:,}", err=True)
            for (m, a), n in result.unrecoverable.items():
                typer.echo(
                    f"repair: {n:,} of {m}/{a} cannot be re-sent: their spool segments are gone"
                    " (keep them with service.retain_segments_hours)",
                    err=True,
                )
            report = reconcile(directory, backend, start or default_start, end or default_end, meter, account)
    except ReconcileError as exc:
        raise _fail(str(exc), 2) from None
    if html_out is not None:
        html_out.write_text(render(report), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    raise typer.Exit(1 if report.unexplained else 0)


def _print_report(report: Any) -> None:
    typer.echo(f"period {report.start} .. {report.end}; journal verified ({report.journal_entries:,} entries)")
    for note in report.notes:
        typer.echo(f"note: {note}")
    if report.empty:
        typer.echo("nothing was recorded, delivered or stored in this period: nothing to reconcile")
        return
    table = [
        {
            "meter": r.meter,
            "account": r.account,
            "recorded": r.recorded.count,
            "sdk lost": sum(r.sdk_lost.values()),
            "dead": r.dead_lettered.count,
            "delivered": r.delivered.count,
            "backend": r.backend.count,
        }
        for r in report.rows
    ]
    print_table(table)
    if report.differences:
        typer.echo("")
        for d in report.differences:
            mark = "explained  " if d.explained else "UNEXPLAINED"
            typer.echo(f"{mark} {d.kind:<19} {d.meter}/{d.account}: {d.count:,}  {d.detail}")
    typer.echo("")
    if report.unexplained:
        typer.echo(f"NOT reconciled: {len(report.unexplained)} unexplained difference(s)")
    else:
        typer.echo("reconciled: every difference is explained")


@dlq_app.command("list")
def dlq_list(state_dir: StateDir = None, include_replayed: Annotated[bool, typer.Option("--all")] = False) -> None:
    """Dead letters waiting for a decision."""
    from .state import DeadLetters

    dead = DeadLetters(_state(state_dir))
    rows = dead.rows(include_replayed)
    if not rows:
        typer.echo("no dead letters")
        return
    print_table(
        [
            {k: r[k] for k in ("id", "at", "reason", "meter", "account", "uid")} | {"replayed": r["replayed_at"] or ""}
            for r in rows
        ]
    )


@dlq_app.command("show")
def dlq_show(dead_id: Annotated[int, typer.Argument(metavar="ID")], state_dir: StateDir = None) -> None:
    """One dead letter: the measurement, the reason and the backend's answer."""
    from .state import DeadLetters

    row = DeadLetters(_state(state_dir)).get(dead_id)
    if row is None:
        raise _fail(f"no dead letter {dead_id}", 1)
    body = row.pop("body")
    for key, value in row.items():
        typer.echo(f"{key:<12}{value if value is not None else ''}")
    typer.echo("measurement " + json.dumps(json.loads(body), indent=2))


@dlq_app.command("replay")
def dlq_replay(
    state_dir: StateDir = None,
    fix_file: Annotated[
        Path | None, typer.Option("--fix-file", help="JSON lines of corrected measurements, matched by uid")
    ] = None,
    ids: Annotated[list[int] | None, typer.Option("--id", help="replay only these (default: all waiting)")] = None,
) -> None:
    """Hand dead letters (corrected from --fix-file where given) back to the agent.

    They keep their original uid. They are written to the agent's replay spool and
    delivered by the agent, running or at its next start; still-bad ones come back here.
    """
    from .state import DeadLetters, write_replay

    directory = _state(state_dir)
    fixes: dict[str, dict[str, Any]] = {}
    if fix_file is not None:
        for number, line in enumerate(fix_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                fixed = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _fail(f"{fix_file}:{number}: not JSON: {exc}") from None
            if not isinstance(fixed, dict) or not isinstance(fixed.get("uid"), str):
                raise _fail(f"{fix_file}:{number}: a correction must be a measurement with its original uid")
            fixes[fixed["uid"]] = fixed
    dead = DeadLetters(directory)
    rows = [r for r in dead.rows() if not ids or r["id"] in ids]
    if not rows:
        typer.echo("nothing to replay")
        return
    measurements = []
    for r in rows:
        original = json.loads(r["body"])
        uid = original.get("uid") if isinstance(original, dict) else None
        measurements.append(fixes.get(uid, original) if uid else original)
    unused = set(fixes) - {json.loads(r["body"]).get("uid") for r in rows if r["body"].startswith("{")}
    for uid in sorted(unused):
        typer.echo(f"warning: {fix_file}: uid {uid} matches no waiting dead letter", err=True)
    from meterkit._model import tally

    from .audit import Journal, compress_uids

    originals = [o for o in (json.loads(r["body"]) for r in rows) if isinstance(o, dict)]
    path = write_replay(directory, measurements)
    # The journal moves these out of "dead-lettered" and records what was handed back
    # (a correction may change the meter or account) as newly recorded.
    Journal(directory).append(
        [
            {
                "type": "replay",
                "count": len(measurements),
                "dead_letter_ids": [r["id"] for r in rows],
                "uids": compress_uids(
                    m["uid"] for m in measurements if isinstance(m, dict) and isinstance(m.get("uid"), str)
                ),
                "original_totals": tally(originals),
                "totals": tally(m for m in measurements if isinstance(m, dict)),
            }
        ]
    )
    dead.mark_replayed([r["id"] for r in rows])
    typer.echo(f"{len(rows)} dead letter(s) handed to the agent ({len(fixes) - len(unused)} corrected) in {path}")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
