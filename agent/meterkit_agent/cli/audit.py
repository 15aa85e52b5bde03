"""``meterkit audit``: verify the journal, trace a measurement."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .output import StateDir, fail, state_dir_or_default

audit_app = typer.Typer(help="The audit journal: verify it, trace a measurement.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    state_dir: StateDir = None,
    head: Annotated[
        str | None, typer.Option("--head", help="a previously exported head hash the chain must end at")
    ] = None,
) -> None:
    """Walk the hash chain; report the first broken link."""
    from ..audit.journal import verify

    journal = state_dir_or_default(state_dir) / "journal.jsonl"
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
    from ..audit.journal import verify

    journal = state_dir_or_default(state_dir) / "journal.jsonl"
    verdict = verify(journal)
    if not verdict.ok:
        raise fail(f"{journal} is broken: {verdict.reason}; run `meterkit audit verify`", 1)
    typer.echo(json.dumps({"journal": str(journal), "entries": verdict.entries, "head": verdict.head}))


@audit_app.command("show")
def audit_show(
    uid: Annotated[str, typer.Option("--uid", help="the measurement's uid")], state_dir: StateDir = None
) -> None:
    """Trace one measurement: who recorded it, which segment, which batch, which acknowledgement."""
    from ..audit.journal import contains_uid, read_entries

    journal = state_dir_or_default(state_dir) / "journal.jsonl"
    if not journal.exists():
        raise fail(f"no journal at {journal}", 1)
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
        raise fail(f"uid {uid} is not in the journal (not delivered yet, or never recorded)", 1)
