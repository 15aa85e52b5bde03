"""``meterkit privacy``: erase a person, age out per-person detail, and write the
transparency report (docs/privacy.md).

``erase`` takes the subject's raw value (``--subject -`` reads it from stdin, so it is
not in the process list either), computes every pseudonym it may have under the listed
keys and its SHA-256, and sends those (never the value) to the ledger in a POST body over
the authenticated connection (:mod:`..ledger.erasure` says why a hash and not the value).
The value is never printed, logged, journaled or written: the control record the agent
journals names the subject by its pseudonym under the newest key. ``retain`` runs a
retention pass (:mod:`..ledger.retention`). Both write a control record into the spool
(``erasure`` / ``retention``, :mod:`..pipeline.control`) that the agent journals, unless
``--dry-run``. The ledger's token comes from ``METERKIT_LEDGER_TOKEN``, never argv.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from .output import LedgerOrg, call_ledger, fail, print_json

privacy_app = typer.Typer(help="Erase a person, age out per-person detail, write the transparency report.")

LedgerUrl = Annotated[str, typer.Option("--url", "--ledger", help="the ledger's URL (token: METERKIT_LEDGER_TOKEN)")]
SpoolDir = Annotated[Path | None, typer.Option("--spool-dir", help="default: METERKIT_SPOOL_DIR")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="say what would change; change and journal nothing")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]
RetentionFile = Annotated[
    Path | None, typer.Option("--retention", help="a YAML file: retention: {per_person_days, billing_years}")
]
Days = Annotated[int | None, typer.Option("--per-person-days", help="age out per-person detail after N days")]
Years = Annotated[int | None, typer.Option("--billing-years", help="keep account totals for M years")]


def _post(url: str, org: str, route: str, body: dict[str, Any]) -> dict[str, Any]:
    from ..credentials import shown_url
    from .correcting import ENV_LEDGER_TOKEN
    from .ledger import answer_message

    path = f"/organizations/{quote(org, safe='')}/privacy/{route}"
    response = call_ledger("POST", url, path, os.environ.get(ENV_LEDGER_TOKEN), json=body, timeout=600, code=1)
    if response.status_code in (401, 403):
        raise fail(
            f"the ledger at {shown_url(url)} refused the request ({response.status_code}); check {ENV_LEDGER_TOKEN}"
        )
    if response.status_code != 200:
        raise fail(f"the ledger answered {response.status_code}: {answer_message(response)}", 1)
    found: dict[str, Any] = response.json()
    return found


def _journal(spool_dir: Path | None, controls: list[dict[str, Any]]) -> Path:
    """Write the control records into the spool (the agent journals them); the spool used."""
    import meterkit
    from meterkit._client import write_with_control

    from .correcting import resolve

    settings, _ = resolve(spool_dir, None)
    try:
        client = meterkit.Client(None, settings.spool_dir, mode="production")
    except meterkit.MeterkitError as exc:
        raise fail(str(exc)) from None
    try:
        for control in controls:
            write_with_control(client, [], control)
    except meterkit.MeterkitError as exc:
        raise fail(f"the ledger has done its part, but the spool refused the control record: {exc}", 1) from None
    finally:
        client.shutdown()
    return settings.spool_dir


def _subject(value: str) -> str:
    if value == "-":
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise fail("--subject is empty")
    return value


@privacy_app.command("erase")
def erase_cmd(
    subject: Annotated[str, typer.Option("--subject", help="the person's value as recorded; - reads it from stdin")],
    reason: Annotated[str, typer.Option("--reason", help="why (the journal keeps it)")],
    ledger: LedgerUrl,
    org: LedgerOrg,
    spool_dir: SpoolDir = None,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Erase a person's values from the ledger's per-person detail; totals and bills stay."""
    from meterkit._corrections import MAX_UIDS_PER_CONTROL, said_problem
    from meterkit._errors import ConfigError
    from meterkit._pseudonyms import load_keyring, pseudonym
    from meterkit._timefmt import iso_ms

    from .correcting import actor

    why = said_problem(reason, "--reason")
    if why is not None:
        raise fail(why)
    value = _subject(subject)
    try:
        keyring = load_keyring()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if keyring is None:
        raise fail(
            "no pseudonymization key (METERKIT_PSEUDONYMIZATION_KEY or _FILE): the subject's pseudonyms are unknown"
        )
    erasure_id = f"er-{uuid.uuid4().hex[:16]}"
    forms = keyring.pseudonyms_of(value)
    sha = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    subject_hash = pseudonym(value, keyring.keys[-1])
    del value
    answer = _post(ledger, org, "erase", {"id": erasure_id, "forms": forms, "sha256": sha, "dryRun": dry_run})
    uids = [u for u in answer.get("uids", []) if isinstance(u, str)]
    at, by = iso_ms(time.time_ns()), actor()
    controls = [
        {"type": "erasure", "id": erasure_id, "reason": reason, "by": by, "at": at, "subject_hash": subject_hash,
         "uids": uids[i : i + MAX_UIDS_PER_CONTROL]}
        for i in range(0, max(len(uids), 1), MAX_UIDS_PER_CONTROL)
    ]  # fmt: skip
    journaled = None if dry_run else _journal(spool_dir, controls)
    doc = {**answer, "subject_hash": subject_hash, "journaled_to": str(journaled) if journaled else None}
    if as_json:
        print_json(doc)
        return
    verb = "would erase" if dry_run else "erased"
    typer.echo(
        f"{verb} the subject ({subject_hash[:12]}...) from {len(uids)} measurement(s) in {answer.get('hours', 0)}"
        f" hour(s) and {answer.get('conflicts', 0)} conflicting re-send(s); erasure {erasure_id}"
    )
    if answer.get("hoursLeftDirty"):
        typer.echo(f"{answer['hoursLeftDirty']} hour(s) were already altered: reconcile names them", err=True)
    if journaled:
        typer.echo(f"the control record is in {journaled}: the agent journals it")
    if uids:
        typer.echo("these measurements also went to the agent's other backends; erase them there too:")
        for uid in uids:
            typer.echo(f"  {uid}")


def _retention(path: Path | None, days: int | None, years: int | None) -> tuple[int, int]:
    if path is not None:
        from meterkit._yaml import load_yaml

        try:
            doc, problems = load_yaml(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise fail(f"cannot read {path}: {exc.strerror}") from None
        section = doc.get("retention") if isinstance(doc, dict) and not problems else None
        if not isinstance(section, dict):
            raise fail(f"{path}: expected retention: {{per_person_days: N, billing_years: M}}")
        days = section.get("per_person_days", days) if days is None else days
        years = section.get("billing_years", years) if years is None else years
    if type(days) is not int or type(years) is not int or days < 0 or years < 1:
        raise fail("give per_person_days (0 or more) and billing_years (1 or more): --retention or the two options")
    return days, years


@privacy_app.command("retain")
def retain_cmd(
    ledger: LedgerUrl,
    org: LedgerOrg,
    retention: RetentionFile = None,
    per_person_days: Days = None,
    billing_years: Years = None,
    spool_dir: SpoolDir = None,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Age out per-person detail older than the retention (a pass; running it again changes nothing)."""
    from meterkit._timefmt import iso_ms

    from .correcting import actor

    days, years = _retention(retention, per_person_days, billing_years)
    pass_id = f"rt-{uuid.uuid4().hex[:12]}"
    answer = _post(
        ledger, org, "retain", {"id": pass_id, "perPersonDays": days, "billingYears": years, "dryRun": dry_run}
    )
    control = {
        "type": "retention", "id": pass_id, "by": actor(), "at": iso_ms(time.time_ns()), "per_person_days": days,
        "billing_years": years, "cutoff": answer.get("cutoff", ""), "rows": int(answer.get("rows", 0)),
        "beyond_billing_years": int(answer.get("beyondBillingYears", 0)),
    }  # fmt: skip
    journaled = None if dry_run else _journal(spool_dir, [control])
    if as_json:
        print_json({**answer, "journaled_to": str(journaled) if journaled else None})
        return
    typer.echo(
        f"{'would age' if dry_run else 'aged'} {answer.get('rows', 0)} measurement(s) before {answer.get('cutoff')}"
        f" in {answer.get('hours', 0)} hour(s); pass {pass_id}"
    )
    typer.echo(
        f"{answer.get('beyondBillingYears', 0)} measurement(s) are older than {years} billing years;"
        " none is deleted in this version (docs/privacy.md)"
    )


@privacy_app.command("report")
def report_cmd(
    catalog: Annotated[Path, typer.Option("--catalog", help="meters.yaml")],
    config: Annotated[Path, typer.Option("--config", help="the agent's agent.yaml")],
    out: Annotated[Path, typer.Option("--out", help="the HTML page")] = Path("privacy-report.html"),
    markdown: Annotated[Path | None, typer.Option("--markdown", help="also write Markdown here")] = None,
    retention: RetentionFile = None,
    per_person_days: Days = None,
    billing_years: Years = None,
) -> None:
    """Write the transparency report: every meter and field, its purpose, protection,
    retention and destinations."""
    import meterkit

    from ..audit import transparency
    from ..config import ConfigFileError, load_config
    from .output import print_problems

    kept = transparency.Retention()
    if retention is not None or per_person_days is not None or billing_years is not None:
        kept = transparency.Retention(*_retention(retention, per_person_days, billing_years))
    try:
        cat, described = transparency.load_described(catalog)
    except OSError as exc:
        raise fail(f"cannot read {catalog}: {exc.strerror}") from None
    except meterkit.CatalogError as exc:
        print_problems(exc)
        raise typer.Exit(2) from None
    try:
        cfg = load_config(config)
    except ConfigFileError as exc:
        raise fail("\n".join(exc.problems)) from None
    sent_to = transparency.destinations(cfg)
    meters = transparency.rows(cat, described, sent_to, kept)
    out.write_text(transparency.render_html(meters, sent_to, kept), encoding="utf-8")
    typer.echo(f"wrote {out}")
    if markdown is not None:
        markdown.write_text(transparency.render_markdown(meters, sent_to, kept), encoding="utf-8")
        typer.echo(f"wrote {markdown}")
