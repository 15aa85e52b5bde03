"""``meterkit agent``: run and inspect the sidecar agent.

No secret is printed: ``validate-config`` shows what the configuration resolved to with
every secret as ``***``, and ``run`` keeps every secret of its configuration out of every
log line (:func:`..credentials.redact_logs`). ``run --token`` warns that the command line
is visible to every user; ``--token-file`` or ``METERKIT_AGENT_TOKEN`` are not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

import meterkit

from .ledger import secret_option
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
    balances: bool = False,
) -> Any:
    from ..config import ConfigFileError, load_config, simple_config

    try:
        if config is not None:
            return load_config(config)
        return simple_config(
            spool_dir=spool_dir,
            catalog=catalog,
            to=to,
            org=org,
            token=token,
            state_dir=state_dir,
            ledger_db=ledger_db,
            balances=balances,
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
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="agent.yaml (Collector shape)")] = None,
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="spool to deliver (no --config)")] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="meters.yaml to validate and derive with")] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="m3ter-compatible ingest base URL; default: the local SQLite ledger")
    ] = None,
    org: Annotated[str, typer.Option("--org", help="organisation id")] = "default",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="METERKIT_AGENT_TOKEN", help="bearer token for --to (prefer --token-file)"),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", envvar="METERKIT_AGENT_TOKEN_FILE", help="bearer token for --to, in a file (600)"),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="checkpoint, dead letters, status")] = None,
    ledger_db: Annotated[str | None, typer.Option("--ledger-db", help="database URL of the embedded ledger")] = None,
    balances: Annotated[
        bool, typer.Option("--balances", help="keep <spool-dir>/balances.json fresh from the ledger at --to")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Deliver spooled measurements until SIGTERM, then drain and exit. Logs one line at
    start: what it reads and where it sends. Refuses (exit 2) a state directory another
    agent is running with."""
    import logging

    from meterkit._spool import private_dir

    from ..agent import Agent, AgentRunning, hold_state_lock, stop_on_signals
    from ..config import NO_TOKEN
    from ..credentials import redact_logs, secret_values, without_url_passwords

    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_AGENT_TOKEN")
    done = stop_on_signals()
    configure_logging(verbose)
    cfg = _agent_config(config, spool_dir, catalog, to, org, token, state_dir, ledger_db, balances)
    redact_logs(secret for secret in secret_values(cfg) if secret != NO_TOKEN)
    logging.getLogger("meterkit.agent.startup").setLevel(logging.INFO)
    try:
        lock = hold_state_lock(private_dir(cfg.service.state_dir))
    except AgentRunning as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot use the state directory {cfg.service.state_dir}: {exc.strerror or exc}") from None
    try:
        agent = Agent(cfg)
    except Exception as exc:  # a database, port or file the configuration names cannot be used
        lock.close()
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise fail(f"cannot start the agent: {type(exc).__name__}: {without_url_passwords(first)}") from None
    raise typer.Exit(agent.run_forever(done, lock))


@agent_app.command("validate-config")
def agent_validate_config(file: Annotated[Path, typer.Argument(help="agent.yaml")]) -> None:
    """Check an agent configuration; print every problem, or what it resolved to (secrets
    from the environment and from files included, each shown as ***)."""
    import yaml

    from ..config import redacted

    cfg = _agent_config(file, None, None, None, "default", None, None, None)
    pipe = cfg.pipeline
    typer.echo(
        f"{file}: ok; pipeline {', '.join(pipe.receivers)} -> {', '.join(pipe.processors) or '(none)'}"
        f" -> {', '.join(pipe.exporters)}"
    )
    typer.echo(yaml.safe_dump(redacted(cfg), sort_keys=False, default_flow_style=False).rstrip())


@agent_app.command("status")
def agent_status(
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="the agent's state directory")] = None,
    balances: Annotated[
        list[Path] | None,
        typer.Option("--balances", metavar="PATH", help="a balance snapshot to show (default: the agent's)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """Print whether an agent is running with this state directory, its health counters
    (from its status file: a stopped agent's last ones) and how fresh its balance snapshots
    are (from the snapshot files themselves). Exit 1 when no agent is running there."""
    from ..agent import running_pid
    from ..pipeline.telemetry import read_status

    directory = state_dir_or_default(state_dir)
    pid = running_pid(directory)
    status = read_status(directory)
    snapshots = _balance_snapshots(directory, balances)
    if as_json:
        print_json(
            {
                "running": pid is not None,
                **({"running_pid": pid} if pid is not None else {}),
                **(status or {}),
                **({"balances": snapshots} if snapshots is not None else {}),
            }
        )
        raise typer.Exit(0 if pid is not None else 1)
    if pid is None:
        last = "no status file" if status is None else "its last status follows"
        typer.echo(f"agent NOT RUNNING: no agent holds {directory / 'agent.lock'} ({last})")
    if status is not None:
        _print_health(status, running=pid is not None)
    if snapshots is not None:
        _print_snapshots(snapshots)
    if pid is None:
        raise typer.Exit(1)


def _print_health(status: dict[str, Any], running: bool) -> None:
    age = time.time() - float(status.get("at", 0))
    state = "running" if running else "stopped"
    typer.echo(f"agent pid {status.get('pid')} ({state}), status written {age:.0f} s ago")
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


def _balance_snapshots(state_dir: Path, given: list[Path] | None) -> dict[str, Any] | None:
    """The snapshots' freshness, read from the files (their ``fetched_at``), never from a
    running agent: a stopped agent's snapshot shows as old as it is. None: no keeper
    configured and no ``--balances``."""
    from meterkit._settings import LimitSettings

    from ..balances import read_status as keeper_status

    keeper = keeper_status(state_dir)
    paths = list(given or []) or [Path(p) for p in (keeper or {}).get("paths", [])]
    if not paths:
        return None
    max_age = LimitSettings().balances_max_age_seconds  # the SDK's default
    now_ms = time.time_ns() // 1_000_000
    return {
        "max_age_seconds": max_age,
        "snapshots": [_describe(path, now_ms, max_age) for path in paths],
        "last_error": (keeper or {}).get("last_error"),
        "last_error_at": (keeper or {}).get("last_error_at"),
        "failures_in_a_row": (keeper or {}).get("failures_in_a_row", 0),
    }


def _describe(path: Path, now_ms: int, max_age_seconds: float) -> dict[str, Any]:
    from meterkit._caps import parse_snapshot

    from ..instants import iso

    try:
        snapshot = parse_snapshot(path.read_bytes())
    except FileNotFoundError:
        return {"path": str(path), "problem": "no snapshot"}
    except (OSError, ValueError) as exc:
        return {"path": str(path), "problem": f"unreadable ({getattr(exc, 'strerror', None) or exc})"}
    age = (now_ms - snapshot.fetched_at_ms) / 1000.0
    return {
        "path": str(path),
        "as_of": iso(snapshot.as_of_ms),
        "fetched_at": iso(snapshot.fetched_at_ms),
        "age_seconds": round(age, 3),
        "balances": len(snapshot.balances),
        "stale": age > max_age_seconds,
    }


def _print_snapshots(found: dict[str, Any]) -> None:
    typer.echo("balance snapshots:")
    for s in found["snapshots"]:
        if "problem" in s:
            typer.echo(f"  {s['path']}: {s['problem']}; caps follow the fallback policy")
            continue
        stale = (
            f"  STALE: older than {found['max_age_seconds']:.0f} s, caps follow the fallback policy"
            if s["stale"]
            else ""
        )
        typer.echo(
            f"  {s['path']}: as_of {s['as_of']}, fetched_at {s['fetched_at']} ({s['age_seconds']:.0f} s ago),"
            f" {s['balances']} balance(s){stale}"
        )
    if found["last_error"]:
        streak = (
            f", {found['failures_in_a_row']} failure(s) in a row" if found["failures_in_a_row"] else ", since recovered"
        )
        typer.echo(f"  last error at {found['last_error_at']}: {found['last_error']}{streak}")
