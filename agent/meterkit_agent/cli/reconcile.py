"""``meterkit reconcile``: what SDKs recorded, what the agent delivered, what the backend holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .output import StateDir, fail, print_json, print_table, state_dir_or_default


def _backend(config: Path | None, backend_url: str | None, ledger_db: str | None, org: str, token: str | None) -> Any:
    """The backend view and an exporter to repair with, from an agent config or flags."""
    from ..audit.backends import LedgerDbBackend, LedgerHttpBackend
    from ..config import load_config
    from ..exporters.ledger import LedgerExporter, LedgerExporterConfig
    from ..exporters.m3ter import M3terExporter, M3terExporterConfig

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
            if exporter_cfg.base_url is None:
                raise fail(
                    f"{config}: the m3ter exporter sends to m3ter itself (no base_url), and reconcile "
                    "cannot query m3ter's own usage API yet; it needs a ledger (or a backend with the ledger's API)"
                )
            tok = exporter_cfg.token.get_secret_value() if exporter_cfg.token else None
            return (
                LedgerHttpBackend(exporter_cfg.base_url, exporter_cfg.org_id, tok),
                M3terExporter("m3ter", exporter_cfg),
                cfg.service.state_dir,
            )
        raise fail("reconcile needs a backend it can query: a ledger (ledger exporter) or an m3ter-compatible one")
    if backend_url:
        exporter = M3terExporter("m3ter", M3terExporterConfig(base_url=backend_url, org_id=org, token=token or "none"))
        return LedgerHttpBackend(backend_url, org, token), exporter, None
    from ..paths import default_ledger_url

    db = ledger_db or default_ledger_url()
    return LedgerDbBackend(db, org), LedgerExporter("ledger", LedgerExporterConfig(db=db, org_id=org)), None


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
    from ..audit.backends import ReconcileError
    from ..audit.reconcile import period_default, reconcile, repair
    from ..audit.report import render

    default_start, default_end = period_default()
    backend, exporter, cfg_state = _backend(config, backend_url, ledger_db, org, token)
    directory = state_dir or cfg_state or state_dir_or_default(None)
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
        raise fail(str(exc), 2) from None
    if html_out is not None:
        html_out.write_text(render(report), encoding="utf-8")
    if as_json:
        print_json(report.as_dict())
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
