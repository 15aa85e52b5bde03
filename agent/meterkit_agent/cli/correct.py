"""``meterkit correct``: cancel or amend one measurement, never by rewriting it.

A correction is usage like any other: it is written into the spool and the agent delivers
it to every destination. It is the reversal of the measurement's *live* version (every
number negated, ``correction: {of, kind: reversal}``) and, for an amendment, that
version's replacement; their uids derive from the live version's (``meterkit._corrections``),
so running the same command twice writes the same measurements again and changes
nothing. Beside them, in the same write, goes a control record saying who corrected
what, when and why; the agent journals it.

The live version comes from the ledger (``GET .../measurements/{uid}``, following
``corrected.replaced_by`` to the latest replacement) or, for a backend that cannot be
read back, from ``--original``. A correction of the same version already in the local
spool (written, not yet delivered) is found there too: the same one again is nothing to
do, a different one is refused until the first has been delivered, as two different
replacements under one uid would conflict. What this shares with ``meterkit backfill
revert`` is in ``.correcting``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

import meterkit
from meterkit._corrections import content, control_record, replacement, reversal
from meterkit._model import CATEGORIES, NUMERIC_CATEGORIES
from meterkit._timefmt import iso_ms

from .correcting import (
    CorrectionWriter,
    LedgerReader,
    actor,
    check_correctable,
    check_reason,
    checked,
    live_version,
    resolve,
    split_state,
    spooled_corrections,
)
from .output import fail, print_json, print_table

_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def parse_changes(sets: Sequence[str]) -> dict[str, Any]:
    """``--set category.code=value`` options as changes for ``replacement``: numbers in
    measure, income and cost; text elsewhere; an empty value removes the field."""
    changes: dict[str, Any] = {}
    for given in sets:
        name, eq, text = given.partition("=")
        category, _, code = name.partition(".")
        if not eq or not code:
            raise fail(f"--set {given!r}: expected category.code=value, e.g. measure.calls=3")
        if category not in CATEGORIES:
            raise fail(f"--set {given!r}: {category!r} is not a category ({', '.join(CATEGORIES)})")
        if name in changes:
            raise fail(f"--set {name} is given twice")
        changes[name] = typed(name, text) if category in NUMERIC_CATEGORIES else (text or None)
    return changes


def typed(name: str, text: str) -> int | float | None:
    """A number as written: an ``int`` if it is whole digits, else a finite float whose
    shortest spelling has the text's exact value (so what is sent is what was typed)."""
    if text == "":
        return None
    if _INT.match(text):
        return int(text)
    if not _FLOAT.match(text):
        raise fail(f"--set {name}={text}: not a number")
    value = float(text)
    if not math.isfinite(value):
        raise fail(f"--set {name}={text}: out of range for a number")
    if Decimal(text) != Decimal(repr(value)):
        raise fail(f"--set {name}={text}: more digits than a number keeps exactly (about 17 significant)")
    return value


def without_derived(measurement: dict[str, Any], catalog: meterkit.Catalog | None) -> dict[str, Any]:
    """``measurement`` without its meter's derived fields: the agent computes them anew
    from a replacement's data fields, so a stale value is not carried over."""
    known = catalog.meters.get(measurement.get("meter", "")) if catalog is not None else None
    if known is None or not known.derived_fields:
        return measurement
    out = dict(measurement)
    for field in known.derived_fields:
        category = field.category.value
        values = out.get(category)
        if isinstance(values, dict) and field.code in values:
            values = {k: v for k, v in values.items() if k != field.code}
            if values:
                out[category] = values
            else:
                del out[category]
    return out


def written_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "kind": r["correction"]["kind"],
            "uid": r["uid"],
            "of": r["correction"]["of"],
            "meter": r["meter"],
            "account": r["account"],
            "ts": r["ts"],
        }
        for r in records
    ]


def _original(path: Path, uid: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"--original {path}: cannot read a JSON measurement ({exc})") from None
    if not isinstance(doc, dict):
        raise fail(f"--original {path}: expected a JSON object (a measurement)")
    measurement, reversed_by, replaced_by = split_state(doc, str(path))
    if measurement.get("uid") != uid:
        raise fail(f"--original {path} is measurement {measurement.get('uid')!r}, not --uid {uid!r}")
    if reversed_by or replaced_by:
        raise fail(f"--original {path}: it was corrected already ({reversed_by or replaced_by}); pass its live version")
    check_correctable(measurement, str(path))
    return measurement


def correct_cmd(
    uid: Annotated[str, typer.Option("--uid", help="the measurement to correct")],
    reason: Annotated[str, typer.Option("--reason", help="why (required): the audit journal keeps it")],
    cancel: Annotated[bool, typer.Option("--cancel", help="reverse it: it no longer counts")] = False,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="amend a field: measure.calls=3, who.user=u7; numbers (measure, income, cost) are an integer"
            " or a decimal kept exactly as typed; an empty value (measure.calls=) removes the field",
        ),
    ] = None,
    ledger: Annotated[str | None, typer.Option("--ledger", help="ledger base URL to read the measurement from")] = None,
    org: Annotated[str, typer.Option("--org")] = "default",
    original: Annotated[
        Path | None, typer.Option("--original", help="the measurement as JSON, for a backend without read-back")
    ] = None,
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="default: METERKIT_SPOOL_DIR")] = None,
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="meters.yaml to validate the correction against")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be written; write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cancel (--cancel) or amend (--set) one measurement: a reversal of its live version,
    plus its replacement, with uids derived from it, so running this twice changes nothing.
    The ledger's token comes from METERKIT_LEDGER_TOKEN. Bad input exits 2."""
    check_reason(reason)
    if cancel == bool(sets):
        raise fail("give exactly one of --cancel or --set")
    if (ledger is None) == (original is None):
        raise fail("give exactly one of --ledger (read the measurement back) or --original FILE.json")
    changes = parse_changes(sets or [])
    settings, cat = resolve(spool_dir, catalog)
    if original is not None:
        live: dict[str, Any] | None = _original(original, uid)
    else:
        assert ledger is not None
        reader = LedgerReader(ledger, org)
        doc = reader.get(uid)
        if doc is None:
            raise fail(f"the ledger has no measurement {uid!r} in organisation {org!r}")
        live = live_version(reader, doc)
    if live is None:
        if cancel:
            typer.echo(f"{uid} is already cancelled: nothing to do")
            return
        raise fail(f"{uid} was cancelled; there is no live version to amend")
    live = checked(live, None)
    records = [checked(reversal(live), cat)]
    if not cancel:
        records.append(checked(replacement(without_derived(live, cat), changes), cat, "--set "))
    pending = spooled_corrections(settings.spool_dir, {live["uid"]})
    if pending:
        if {r["uid"]: r for r in records} == pending:
            typer.echo(f"the same correction of {live['uid']} is in the spool already: nothing to do")
            return
        raise fail(
            f"another correction of {live['uid']} is in the spool {settings.spool_dir}, not yet delivered; "
            "run again once the agent has delivered it"
        )
    if not cancel and content(without_derived(records[1], cat)) == content(without_derived(live, cat)):
        typer.echo(f"{live['uid']} already says that: nothing to do")
        return
    report(records, "cancel" if cancel else "amend", reason, settings.spool_dir, cat, dry_run, as_json)


def report(
    records: list[dict[str, Any]],
    action: str,
    reason: str,
    spool_dir: Path,
    cat: meterkit.Catalog | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Write one correction (unless ``dry_run``) and print what was written."""
    of = records[0]["correction"]["of"]
    if dry_run:
        uids = [r["uid"] for r in records]
        controls = [control_record(action, reason, actor(), iso_ms(time.time_ns()), [of], uids)]
    else:
        writer = CorrectionWriter(spool_dir, cat, action, reason)
        try:
            writer.write([(of, records)])
        finally:
            writer.close()
        controls = writer.controls
    if as_json:
        print_json({"action": action, "dry_run": dry_run, "measurements": records, "controls": controls})
        return
    print_table(written_rows(records))
    typer.echo(f"{'would write' if dry_run else 'spooled'} {len(records)} measurement(s) to {spool_dir}")


__all__ = ["correct_cmd"]
