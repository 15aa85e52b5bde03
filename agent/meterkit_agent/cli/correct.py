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

Derived fields. With a catalog, the replacement's derived fields are computed from its
amended data fields by :func:`meterkit._derive.derive`, the function the agent's
``derive`` processor runs, so the replacement is whole even through an agent that does
not derive; ``--set`` of a derived field is refused. Without a catalog the command cannot
tell derived fields from data fields: the replacement keeps every field the live version
has, as it has it (a derived value the amended fields would change stays as it was
unless the agent runs ``derive``).
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
from meterkit._derive import NumberOutOfRange, derive, plan
from meterkit._model import CATEGORIES, NUMERIC_CATEGORIES, uid_problem
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
    spool_lock,
    spooled_corrections,
)
from .output import LedgerOrg, fail, print_json, print_table

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
        try:
            return int(text)
        except ValueError:  # past Python's limit on digits converted: far past any number's range
            raise fail(f"--set {name}: {len(text)} digits: out of range for a number") from None
    if not _FLOAT.match(text):
        raise fail(f"--set {name}={text}: not a number")
    value = float(text)
    if not math.isfinite(value):
        raise fail(f"--set {name}={text}: out of range for a number")
    if Decimal(text) != Decimal(repr(value)):
        raise fail(f"--set {name}={text}: more digits than a number keeps exactly (about 17 significant)")
    return value


def derived_codes(measurement: dict[str, Any], catalog: meterkit.Catalog | None) -> dict[str, str]:
    """``category.code`` -> calculation of the measurement's meter's derived fields."""
    known = catalog.meters.get(measurement.get("meter", "")) if catalog is not None else None
    if known is None:
        return {}
    return {f"{f.category.value}.{f.code}": f.calculation for f in known.derived_fields}


def without_derived(measurement: dict[str, Any], catalog: meterkit.Catalog | None) -> dict[str, Any]:
    """``measurement`` without its meter's derived fields."""
    codes = derived_codes(measurement, catalog)
    if not codes:
        return measurement
    out = dict(measurement)
    for name in codes:
        category, _, code = name.partition(".")
        values = out.get(category)
        if isinstance(values, dict) and code in values:
            values = {k: v for k, v in values.items() if k != code}
            if values:
                out[category] = values
            else:
                del out[category]
    return out


def amended(live: dict[str, Any], changes: dict[str, Any], catalog: meterkit.Catalog | None) -> dict[str, Any]:
    """The replacement of ``live`` with ``changes``; with a catalog, its derived fields
    computed anew from its data fields, as the agent computes them."""
    codes = derived_codes(live, catalog)
    for name in changes:
        if name in codes:
            raise fail(f"--set {name}: a derived field, computed from the data fields ({codes[name]}); set those")
    out = replacement(without_derived(live, catalog), changes)
    if not codes or catalog is None:
        return out
    meter = catalog.meters[live["meter"]]
    try:
        derived = derive(meter, plan(meter), out)
    except NumberOutOfRange as exc:
        raise fail(f"the replacement of {live['uid']}: {exc} [derived_out_of_range]") from None
    for code, why in derived.skipped:
        typer.echo(f"note: derived field {meter.code}.{code} {why}; the replacement goes without it", err=True)
    derived.store_into(out)
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
    except RecursionError:
        raise fail(f"--original {path}: nested too deeply to be a measurement") from None
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
            metavar="FIELD=VALUE",
            help="amend a field: measure.calls=3, who.user=u7; numbers (measure, income, cost) are an integer"
            " or a decimal kept exactly as typed; an empty value (measure.calls=) removes the field",
        ),
    ] = None,
    ledger: Annotated[
        str | None, typer.Option("--url", "--ledger", help="ledger base URL to read the measurement from")
    ] = None,
    org: LedgerOrg = "default",
    original: Annotated[
        Path | None, typer.Option("--original", help="the measurement as JSON, for a backend without read-back")
    ] = None,
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="default: METERKIT_SPOOL_DIR")] = None,
    catalog: Annotated[
        Path | None, typer.Option("--catalog", help="meters.yaml to validate the correction against")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be written; write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Cancel (--cancel) or amend (--set) one measurement: a reversal of its live version,
    plus its replacement, with uids derived from it, so running this twice changes nothing.
    The ledger's token comes from METERKIT_LEDGER_TOKEN. Bad input exits 2."""
    bad_uid = uid_problem(uid, None)
    if bad_uid is not None:
        raise fail(f"--uid: {bad_uid.problem.message}")
    check_reason(reason)
    if cancel == bool(sets):
        raise fail("give exactly one of --cancel or --set")
    if (ledger is None) == (original is None):
        raise fail("give exactly one of --url (read the measurement back) or --original FILE.json")
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
        records.append(checked(amended(live, changes, cat), cat, "--set "))
        if content(without_derived(records[1], cat)) == content(without_derived(live, cat)):
            typer.echo(f"{live['uid']} already says that: nothing to do")
            return
    action = "cancel" if cancel else "amend"
    if dry_run:
        _check_spool(settings.spool_dir, live["uid"], records)
        report(records, action, reason, settings.spool_dir, cat, dry_run, as_json)
        return
    with spool_lock(settings.spool_dir, settings.spool_shared_group):  # no other correction between look and write
        if _check_spool(settings.spool_dir, live["uid"], records):
            report(records, action, reason, settings.spool_dir, cat, dry_run, as_json)


def _check_spool(spool_dir: Path, of: str, records: list[dict[str, Any]]) -> bool:
    """Whether to write: not if the same correction of ``of`` is in the spool (nothing to
    do); exit 2 if a different one is, until the agent has delivered it."""
    pending = spooled_corrections(spool_dir, {of})
    if not pending:
        return True
    if {r["uid"]: r for r in records} == pending:
        typer.echo(f"the same correction of {of} is in the spool already: nothing to do")
        return False
    raise fail(
        f"another correction of {of} is in the spool {spool_dir}, not yet delivered; "
        "run again once the agent has delivered it"
    )


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
