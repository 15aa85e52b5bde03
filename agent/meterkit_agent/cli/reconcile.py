"""``meterkit reconcile``: what SDKs recorded, what the agent delivered, what the backend holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .ledger import secret_option
from .output import (
    DestinationOpt,
    LedgerOrg,
    LedgerToken,
    LedgerTokenFile,
    StateDir,
    fail,
    print_json,
    print_table,
    state_dir_or_default,
)


def backend_for(
    config: Path | None,
    backend_url: str | None,
    ledger_db: str | None,
    org: str,
    token: str | None,
    destination: str | None = None,
) -> tuple[Any, Callable[[], Any], Path | None]:
    """The backend view, a way to build an exporter to repair with, and the state directory,
    from an agent config (its ``destination``, by default the first) or flags."""
    from ..audit.backends import LedgerDbBackend, LedgerHttpBackend
    from ..config import load_config
    from ..exporters.ledger import LedgerExporter, LedgerExporterConfig
    from ..exporters.m3ter import M3terExporter, M3terExporterConfig

    if config is not None:
        cfg = load_config(config)
        names = [cid for _, cid in cfg.destinations]
        chosen = destination or names[0]
        if chosen not in names:
            raise fail(f"{config}: no destination {chosen!r}; its exporters are {', '.join(names)}", 2)
        state = cfg.state_dir_of(chosen)
        exporter_cfg = cfg.component("exporters", chosen)
        if isinstance(exporter_cfg, LedgerExporterConfig):
            ledger_cfg = exporter_cfg
            return (
                LedgerDbBackend(ledger_cfg.db, ledger_cfg.org_id),
                lambda: LedgerExporter("ledger", ledger_cfg),
                state,
            )
        if isinstance(exporter_cfg, M3terExporterConfig):
            if exporter_cfg.base_url is None:
                raise fail(
                    f"{config}: the m3ter exporter sends to m3ter itself (no base_url), and reconcile "
                    "cannot query m3ter's own usage API yet; it needs a ledger (or a backend with the ledger's API)"
                )
            m3ter_cfg, base = exporter_cfg, exporter_cfg.base_url
            tok = m3ter_cfg.token.get_secret_value() if m3ter_cfg.token else None
            return (
                LedgerHttpBackend(base, m3ter_cfg.org_id, tok),
                lambda: M3terExporter("m3ter", m3ter_cfg),
                state,
            )
        raise fail("reconcile needs a backend it can query: a ledger (ledger exporter) or an m3ter-compatible one")
    if backend_url:
        url = backend_url

        def http_exporter() -> Any:
            return M3terExporter("m3ter", M3terExporterConfig(base_url=url, org_id=org, token=token or "none"))

        return LedgerHttpBackend(backend_url, org, token), http_exporter, None
    from ..paths import default_ledger_url

    db = ledger_db or default_ledger_url()
    return LedgerDbBackend(db, org), lambda: LedgerExporter("ledger", LedgerExporterConfig(db=db, org_id=org)), None


def reconcile_cmd(
    ctx: typer.Context,
    start: Annotated[str | None, typer.Option("--from", help="period start, ISO 8601 (default: 24 hours ago)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="period end, ISO 8601 (default: now)")] = None,
    meter: Annotated[str | None, typer.Option("--meter", help="one meter only (default: every meter)")] = None,
    account: Annotated[str | None, typer.Option("--account", help="one account only (default: every account)")] = None,
    state_dir: StateDir = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="the agent's agent.yaml: state dir and backend")
    ] = None,
    backend_url: Annotated[
        str | None, typer.Option("--url", "--backend", help="ledger base URL (default: the embedded ledger database)")
    ] = None,
    ledger_db: Annotated[
        str | None,
        typer.Option("--db", "--ledger-db", help="database URL of the embedded ledger (default: the project's)"),
    ] = None,
    org: LedgerOrg = "default",
    token: LedgerToken = None,
    token_file: LedgerTokenFile = None,
    spool_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--spool-dir",
            metavar="DIR",
            help="live spool(s): original content to name altered fields and to repair from",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    do_repair: Annotated[
        bool, typer.Option("--repair", help="re-send measurements missing at the backend, then check again")
    ] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="also write a self-contained HTML report")] = None,
    destination: DestinationOpt = None,
) -> None:
    """Compare what SDKs recorded, what the agent delivered and what the backend holds.
    An agent with several destinations keeps a journal for each: reconcile one at a time."""
    from meterkit._timefmt import iso_ms

    from ..audit.backends import ReconcileError
    from ..audit.reconcile import period_default, reconcile
    from ..audit.repair import repair
    from ..audit.report import render
    from ..instants import InstantError, parse_instant

    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_LEDGER_TOKEN")
    default_start, default_end = period_default()
    backend, exporter, cfg_state = backend_for(config, backend_url, ledger_db, org, token, destination)
    # --config names the destination's state itself; --state-dir is the agent's, and in it
    # --destination picks one.
    directory = (
        cfg_state if state_dir is None and cfg_state is not None else state_dir_or_default(state_dir, destination)
    )
    spools = list(spool_dir or [])
    try:
        # The same spellings, and the same instants, as the ledger API and `meterkit usage`.
        period = (
            iso_ms(parse_instant(start, "--from")) if start else default_start,
            iso_ms(parse_instant(end, "--to")) if end else default_end,
        )
    except InstantError as exc:
        raise fail(f"bad period: {exc}", 2) from None
    try:
        report = reconcile(directory, backend, *period, meter, account, spools)
        if do_repair and any(d.kind == "missing_at_backend" for d in report.differences):
            result = repair(directory, report, exporter(), spools)
            typer.echo(f"repair: re-sent {result.resent:,}, refused {result.refused:,}", err=True)
            for (m, a), n in result.unrecoverable.items():
                typer.echo(
                    f"repair: {n:,} of {m}/{a} cannot be re-sent: their spool segments are gone"
                    " (keep them with service.retain_segments_hours)",
                    err=True,
                )
            report = reconcile(directory, backend, *period, meter, account, spools)
    except ReconcileError as exc:
        raise fail(str(exc), 2) from None
    if html_out is not None:
        html_out.write_text(render(report), encoding="utf-8")
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    raise typer.Exit(1 if report.unexplained else 0)


#: uids printed per difference; --json lists them all
SHOWN_UIDS = 20


def _print_report(report: Any) -> None:
    journal = report.journal
    trust = "" if journal.get("trusted") == journal.get("entries") else f", {journal.get('trusted', 0):,} proven"
    typer.echo(f"period {report.start} .. {report.end}; journal read ({journal.get('entries', 0):,} entries{trust})")
    for note in report.notes:
        typer.echo(f"note: {note}")
    if report.empty:
        typer.echo("nothing was recorded, delivered or stored in this period: nothing to reconcile")
        print_corrections(report.corrections)
        return
    table = [
        {
            "meter": r.meter,
            "account": r.account,
            "recorded": r.recorded.count,
            "sdk lost": sum(r.sdk_lost.values()),
            "dead": r.dead_lettered.count,
            "delivered": r.delivered.count,
            "resent": r.resent,
            "backend": r.backend,
        }
        for r in report.rows
    ]
    print_table(table)
    if report.differences:
        typer.echo("")
        for d in report.differences:
            mark = "explained  " if d.explained else "UNEXPLAINED"
            typer.echo(f"{mark} {d.kind:<19} {d.meter}/{d.account}: {d.count:,}  {d.detail}")
            for u in d.uids[:SHOWN_UIDS]:
                typer.echo(f"    {u['uid'] or '(several)'}  {u['hour']}  {u['detail']}")
            if len(d.uids) > SHOWN_UIDS:
                typer.echo(f"    ... and {len(d.uids) - SHOWN_UIDS:,} more (--json lists them all)")
    print_corrections(report.corrections)
    typer.echo("")
    if report.unexplained:
        typer.echo(f"NOT reconciled: {len(report.unexplained)} unexplained difference(s)")
    else:
        typer.echo("reconciled: every difference is explained")


def print_corrections(corrections: list[Any]) -> None:
    """Who corrected what, when and why, and whether what each correction wrote was delivered."""
    if not corrections:
        return
    typer.echo("")
    typer.echo(f"corrections ({len(corrections)}):")
    for c in corrections:
        batch = f" of backfill batch {c.batch}" if c.batch else ""
        typer.echo(f"  {c.made_at}  {c.action}{batch} by {c.by}: {len(c.of):,} measurement(s)  reason: {c.reason}")
        where = ", ".join(f"{w['meter']}/{w['account']}: {w['count']:,}" for w in c.where()) or "nowhere yet"
        typer.echo(f"    {c.status}: {len(c.delivered):,} of {len(c.uids):,} written ({where}); id {c.id}")
        missing = c.undelivered
        for u in missing[:SHOWN_UIDS]:
            typer.echo(f"    not delivered: {u}")
        if len(missing) > SHOWN_UIDS:
            typer.echo(f"    ... and {len(missing) - SHOWN_UIDS:,} more (--json lists them all)")
