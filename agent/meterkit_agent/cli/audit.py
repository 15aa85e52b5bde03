"""``meterkit audit``: verify the journal, trace a measurement, list corrections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .ledger import secret_option
from .output import LedgerOrg, LedgerToken, LedgerTokenFile, StateDir, fail, print_json, state_dir_or_default

audit_app = typer.Typer(
    help="The audit journal: verify it against the backend's anchor, trace a measurement, list corrections.",
    no_args_is_help=True,
)


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    state_dir: StateDir = None,
    head: Annotated[
        str | None, typer.Option("--head", help="a previously exported head hash the chain must end at")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="the agent's agent.yaml: its state dir and the backend's anchor")
    ] = None,
    backend_url: Annotated[
        str | None, typer.Option("--url", "--backend", help="ledger base URL holding the anchor")
    ] = None,
    ledger_db: Annotated[
        str | None, typer.Option("--db", "--ledger-db", help="ledger database holding the anchor")
    ] = None,
    org: LedgerOrg = "default",
    token: LedgerToken = None,
    token_file: LedgerTokenFile = None,
) -> None:
    """Walk the chain (keyed entries with journal.key) and check it against the anchor the
    backend keeps: names the first edited, removed or reordered entry, a cut end, a rewrite."""
    from ..audit.backends import ReconcileError
    from ..audit.chain import verify
    from ..audit.journal import JournalError, journal_id, read_key
    from .reconcile import backend_for

    token = secret_option(ctx, "--token", token, "--token-file", token_file, "METERKIT_LEDGER_TOKEN")
    backend: Any = None
    try:
        if head is None and (config or backend_url or ledger_db or _default_ledger_exists()):
            backend, _, cfg_state = backend_for(config, backend_url, ledger_db, org, token)
            state_dir = state_dir or cfg_state
        directory = state_dir_or_default(state_dir)
        key = read_key(directory)
        anchor = backend.anchor(journal_id(key)) if backend is not None and key is not None else None
    except (ReconcileError, JournalError) as exc:
        raise fail(str(exc), 2) from None
    where = backend.name if backend is not None else ""
    journal = directory / "journal.jsonl"
    verdict = verify(journal, head, key, anchor)
    if verdict.ok:
        typer.echo(f"{journal}: ok, {verdict.entries:,} entries, head {verdict.head}")
        for note in verdict.notes:
            typer.echo(f"note: {note}")
        if verdict.anchored:
            typer.echo(f"anchored: {verdict.anchored} ({where})")
        elif head is None:
            found = f"{where} holds no anchor for this journal" if where else "no backend was asked for its anchor"
            typer.echo(f"not anchored: {found}; a cut at the end cannot be seen from here", err=True)
        return
    where_broken = f"line {verdict.line} (entry {verdict.seq})" if verdict.line else "the end"
    typer.echo(f"{journal}: BROKEN at {where_broken}: {verdict.reason}", err=True)
    typer.echo(f"the first {verdict.trusted:,} entries are proven", err=True)
    raise typer.Exit(1)


def _default_ledger_exists() -> bool:
    from ..paths import default_ledger_url

    return Path(default_ledger_url().split(":///", 1)[1]).exists()


@audit_app.command("head")
def audit_head(state_dir: StateDir = None) -> None:
    """Print the chain head (seq and hash) to store elsewhere or sign."""
    from ..audit.chain import verify
    from ..audit.journal import read_key

    journal = state_dir_or_default(state_dir) / "journal.jsonl"
    verdict = verify(journal, key=read_key(state_dir_or_default(state_dir)))
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
        elif kind == "correction" and (contains_uid(e.get("of", {}), uid) or contains_uid(e.get("uids", {}), uid)):
            found += 1
            role = "corrected" if contains_uid(e.get("of", {}), uid) else "written by"
            typer.echo(f"{role:<13} {e.get('action')} by {e.get('by')} at {e.get('made_at')}: {e.get('reason')}")
            typer.echo(f"              correction {e.get('id')} (journal entry {e.get('seq')}, {e.get('at')})")
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


@audit_app.command("corrections")
def audit_corrections(
    state_dir: StateDir = None,
    since: Annotated[
        str | None, typer.Option("--since", help="only corrections made at or after this instant (ISO 8601)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """List the journal's corrections: who corrected what, when and why, and whether the
    reversals and replacements each wrote were delivered. Only entries the chain proves."""
    from ..audit.corrections import read_corrections
    from ..audit.journal import JournalError, read_key
    from ..instants import InstantError, parse_instant
    from .reconcile import print_corrections

    directory = state_dir_or_default(state_dir)
    journal = directory / "journal.jsonl"
    if not journal.exists():
        raise fail(f"no journal at {journal}", 1)
    try:
        since_ns = parse_instant(since, "--since") if since else None
        found, verdict = read_corrections(journal, read_key(directory))
    except InstantError as exc:
        raise fail(f"bad --since: {exc}", 2) from None
    except JournalError as exc:
        raise fail(str(exc), 2) from None
    if since_ns is not None:
        found = [c for c in found if _made_since(c.made_at, since_ns)]
    if not verdict.ok:
        typer.echo(
            f"warning: {journal}: {verdict.reason}; only the first {verdict.trusted:,} entries are proven and listed"
            " (`meterkit audit verify` says more)",
            err=True,
        )
    if as_json:
        print_json({"journal": str(journal), "proven": verdict.trusted, "corrections": [c.as_dict() for c in found]})
    elif not found:
        typer.echo("no corrections" + (f" since {since}" if since else "") + " in the journal")
    else:
        print_corrections(found)


def _made_since(instant: str, since_ns: int) -> bool:
    from meterkit._timefmt import parse_ts

    try:
        return parse_ts(instant) >= since_ns
    except ValueError:
        return True  # a proven entry whose instant cannot be read: shown rather than hidden
