"""``meterkit agent``: run and inspect the sidecar agent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import meterkit

from .output import configure_logging, fail, print_json, print_problems, state_dir_or_default

agent_app = typer.Typer(help="Run and inspect the sidecar agent.", no_args_is_help=True)


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
    from ..config import ConfigFileError, load_config, simple_config

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
        print_problems(exc)
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
    from ..agent import Agent, stop_on_signals

    done = stop_on_signals()
    configure_logging(verbose)
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

    from ..pipeline.telemetry import read_status

    directory = state_dir_or_default(state_dir)
    status = read_status(directory)
    if status is None:
        raise fail(f"no status in {directory}: is an agent running with this --state-dir?", 1)
    if as_json:
        print_json(status)
        return
    age = time.time() - float(status.get("at", 0))
    typer.echo(f"agent pid {status.get('pid')}, status written {age:.0f} s ago")
    metrics = status.get("metrics", {})
    for p in metrics.get("meterkit.agent.paused", []):
        a = p.get("attributes", {})
        typer.echo(
            f"PAUSED: {a.get('exporter')} answered HTTP {a.get('status')}: fix its URL or credentials;"
            " measurements wait in the spool, nothing is discarded"
        )
    isolated = [p for p in metrics.get("meterkit.agent.dead_lettered", []) if p.get("value")]
    if isolated:
        typer.echo("isolated (dead-lettered alone; `meterkit dlq list` shows each):")
        for p in isolated:
            a = p.get("attributes", {})
            typer.echo(f"  {p['value']:>10,}  {a.get('reason')} at {a.get('stage', 'agent')}")
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
