"""``meterkit agent``: run and inspect the sidecar agent.

No secret is printed: ``validate-config`` shows what the configuration resolved to with
every secret as ``***``, and ``run`` keeps every secret of its configuration out of every
log line (:func:`..credentials.redact_logs`). ``run --token`` warns that the command line
is visible to every user; ``--token-file`` or ``METERKIT_AGENT_TOKEN`` are not.
"""

from __future__ import annotations

import dataclasses
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
        str | None,
        typer.Option("--url", "--to", help="m3ter-compatible ingest base URL; default: the local SQLite ledger"),
    ] = None,
    org: Annotated[str, typer.Option("--org", help="organisation id")] = "default",
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="METERKIT_AGENT_TOKEN", help="bearer token for --url (prefer --token-file)"),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", envvar="METERKIT_AGENT_TOKEN_FILE", help="bearer token for --url, in a file (600)"
        ),
    ] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="checkpoint, dead letters, status")] = None,
    ledger_db: Annotated[
        str | None, typer.Option("--db", "--ledger-db", help="database URL of the embedded ledger")
    ] = None,
    balances: Annotated[
        bool, typer.Option("--balances", help="keep <spool-dir>/balances.json fresh from the ledger at --url")
    ] = False,
    standby: Annotated[
        bool,
        typer.Option(
            "--standby",
            help="if another agent runs with this state directory, wait and take over when it dies,"
            " pauses or stops (run two: a leader and a standby)",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log every delivery step (DEBUG)")] = False,
) -> None:
    """Deliver spooled measurements until SIGTERM, then drain and exit. Logs one line at
    start: what it reads and where it sends. Refuses (exit 2) a state directory another
    agent is running with, unless ``--standby``: then it waits, takes the lease when the
    leader dies, pauses or stops, and stands by again if it ever loses it."""
    import logging

    from meterkit._spool import private_dir

    from ..agent import Agent, stop_on_signals
    from ..config import NO_TOKEN
    from ..credentials import redact_logs, secret_values, without_url_passwords
    from ..lease import AgentRunning, Lease

    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_AGENT_TOKEN")
    done = stop_on_signals()
    configure_logging(verbose)
    cfg = _agent_config(config, spool_dir, catalog, to, org, token, state_dir, ledger_db, balances)
    # What validate-config checks beyond the shape (catalogs load, URLs and addresses usable),
    # refused before anything starts rather than as a traceback in a thread later.
    from .configcheck import config_problems

    if problems := config_problems(cfg, str(config or "agent run")):
        for line in problems:
            typer.echo(line, err=True)
        raise typer.Exit(2)
    redact_logs(secret for secret in secret_values(cfg) if secret != NO_TOKEN)
    logging.getLogger("meterkit.agent.startup").setLevel(logging.INFO)
    waiting = logging.getLogger("meterkit.agent.startup")
    while True:
        try:
            lease = Lease.acquire(
                private_dir(cfg.service.state_dir), standby=standby, on_waiting=waiting.info, stop=done
            )
        except AgentRunning as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"cannot use the state directory {cfg.service.state_dir}: {exc.strerror or exc}") from None
        if lease is None:
            raise typer.Exit(0)  # stopped while standing by: nothing was read
        try:
            agent = Agent(cfg)  # built once leading: it reads the checkpoints the leader left
        except Exception as exc:  # a database, port or file the configuration names cannot be used
            lease.release()
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise fail(f"cannot start the agent: {type(exc).__name__}: {without_url_passwords(first)}") from None
        code = agent.run_forever(done, lease)
        if not agent.lost.is_set():
            raise typer.Exit(code)
        if not standby or done.is_set():
            raise typer.Exit(1)  # another agent leads now; this one sent and committed nothing since


@agent_app.command("validate-config")
def agent_validate_config(file: Annotated[Path, typer.Argument(help="agent.yaml")]) -> None:
    """Check an agent configuration: its shape, the catalogs it names, its URLs and
    listening addresses. Print every problem (exit 2), or what it resolved to (secrets from
    the environment and from files included, each shown as ***)."""
    import yaml

    from ..credentials import redacted
    from .configcheck import config_problems

    cfg = _agent_config(file, None, None, None, "default", None, None, None)
    problems = config_problems(cfg, str(file))
    if problems:
        for line in problems:
            typer.echo(line, err=True)
        typer.echo(f"{len(problems)} problem(s)", err=True)
        raise typer.Exit(2)
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
    from ..lease import read_lease
    from ..pipeline.telemetry import read_status

    directory = state_dir_or_default(state_dir)
    lease = read_lease(directory)  # one reading: the pid and the epoch shown always agree
    pid = lease.pid if lease is not None and lease.alive else None
    status = read_status(directory)
    snapshots = _balance_snapshots(directory, balances)
    if as_json:
        print_json(
            {
                "running": pid is not None,
                **({"running_pid": pid} if pid is not None else {}),
                **({"lease": dataclasses.asdict(lease)} if lease is not None else {}),
                "destinations": _destinations(directory, status),
                **(status or {}),
                **({"balances": snapshots} if snapshots is not None else {}),
            }
        )
        raise typer.Exit(0 if pid is not None else 1)
    if pid is None:
        last = "no status file" if status is None else "its last status follows"
        typer.echo(f"agent NOT RUNNING: no agent holds the lease of {directory} ({last})")
    elif lease is not None:
        typer.echo(
            f"lease epoch {lease.epoch} held by pid {lease.pid}, renewed {lease.renewal_age_seconds or 0:.1f} s ago"
        )
    if status is not None:
        _print_destinations(_destinations(directory, status))
        _print_health(status, running=pid is not None)
    if snapshots is not None:
        _print_snapshots(snapshots)
    if pid is None:
        raise typer.Exit(1)


def _destinations(directory: Path, status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each destination: its state directory and its counters from the status file
    (delivered, dead-lettered, lost, frames queued, paused)."""
    from ..paths import destination_dirs

    metrics = (status or {}).get("metrics", {})

    def total(metric: str, name: str) -> int:
        points = metrics.get(f"meterkit.agent.{metric}", [])
        return int(sum(p.get("value", 0) for p in points if p.get("attributes", {}).get("destination") == name))

    paused = {p.get("attributes", {}).get("exporter") for p in metrics.get("meterkit.agent.paused", [])}
    return [
        {
            "destination": name or "(first)",
            "state_dir": str(path),
            "delivered": total("delivered", name),
            "dead_lettered": total("dead_lettered", name),
            "lost": total("lost", name),
            "queued_frames": total("queue_depth", name),
            "paused": name in paused,
        }
        for name, path in destination_dirs(directory).items()
    ]


def _print_destinations(rows: list[dict[str, Any]]) -> None:
    typer.echo(f"  {'destination':<24}{'delivered':>14}{'dead-lettered':>15}{'lost':>10}{'queued':>9}  state")
    for r in rows:
        flag = "  PAUSED" if r["paused"] else ""
        typer.echo(
            f"  {r['destination']:<24}{r['delivered']:>14,}{r['dead_lettered']:>15,}{r['lost']:>10,}"
            f"{r['queued_frames']:>9,}  {r['state_dir']}{flag}"
        )


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
