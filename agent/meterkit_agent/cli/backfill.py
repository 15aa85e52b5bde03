"""``meterkit backfill``: spool historical measurements from a CSV or JSON lines file, each
stamped with the backfill's batch id, and revert a whole batch (``meterkit backfill revert``).

``meterkit backfill FILE --meter M`` is the command people already run, so it stays: the
group reads a first argument that names no subcommand as the file to load (``load``).
The default batch id derives from the meter and the file's bytes, so re-running the same
file stamps the same id on the same uids, and stays idempotent.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from typer import _click  # typer vendors click: its groups are typed with this Context
from typer.core import TyperGroup

import meterkit
from meterkit._corrections import MAX_UIDS_PER_CONTROL, check_batch, reversal
from meterkit._model import CATEGORIES, NUMERIC_CATEGORIES

from .correcting import (
    CorrectionWriter,
    LedgerReader,
    check_reason,
    checked,
    live_version,
    resolve,
)
from .output import LedgerOrg, fail, print_json

LOAD = "load"
#: JSON lines have no header: a ``--key`` none of the first this many rows holds is misspelled.
KEY_PROBE_ROWS = 100


class _BackfillGroup(TyperGroup):
    """``backfill revert BATCH``, and ``backfill FILE ...`` as ``backfill load FILE ...``."""

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [LOAD, *args]
        return super().parse_args(ctx, args)


backfill_app = typer.Typer(
    cls=_BackfillGroup,
    no_args_is_help=True,
    help="Spool history (meterkit backfill FILE --meter M), or revert a backfill (meterkit backfill revert BATCH).",
)


def default_batch(meter: str, file: Path) -> str:
    """``bf-`` and 16 hex digits of sha256(meter, NUL, the file's bytes): the same file
    backfilled again gets the same id."""
    digest = hashlib.sha256(meter.encode() + b"\0")
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "bf-" + digest.hexdigest()[:16]


def _csv_rows(path: Path, meter: str, catalog: meterkit.Catalog | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """CSV columns: account, ts, ets, uid, and fields as ``category.code`` (``measure.bytes``)
    or, with a catalog, bare field codes."""
    known = catalog.meters.get(meter) if catalog else None
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for record in reader:
            row: dict[str, Any] = {"meter": meter}
            for column, text in record.items():
                if column is None or text is None or text == "":
                    continue
                category, _, code = column.rpartition(".")
                if not category and known is not None and column in known.field_categories:
                    category, code = known.field_categories[column], column
                if category in CATEGORIES:
                    row.setdefault(category, {})[code] = _number(text) if category in NUMERIC_CATEGORIES else text
                else:
                    row[column] = text
            yield reader.line_num, row


def _checked_rows(
    file: Path, suffix: str, meter: str, key: str | None, catalog: meterkit.Catalog | None
) -> Iterator[tuple[int, Any]]:
    """The file's rows, once the mistakes that would spoil every row are ruled out: a meter
    the catalog does not know, a ``--key`` column the file does not have. Each is named once
    (exit 2) before any row is read for submission, instead of once per row."""
    if catalog is not None and meter not in catalog:
        raise fail(f"meter {meter!r} is not in the catalog {catalog.source}")
    if suffix == ".csv":
        if key is not None:
            header = _csv_header(file)
            if key not in header:
                raise fail(f"{file}: the --key column {key!r} is not in the header ({', '.join(header) or 'empty'})")
        return _csv_rows(file, meter, catalog)
    if suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(file, meter)
        if key is None:
            return rows
        probe = list(itertools.islice(rows, KEY_PROBE_ROWS))
        objects = [row for _, row in probe if isinstance(row, dict)]
        if objects and all(row.get(key) in (None, "") for row in objects):
            raise fail(f"{file}: none of the first {len(objects)} row(s) has the --key field {key!r}")
        return itertools.chain(probe, rows)
    raise fail(f"{file}: expected a .csv or .jsonl file")


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def _report(file: Path, problems: list[meterkit.Problem]) -> None:
    """One line per bad row; but a meter the catalog does not know (a row naming its own)
    once, with the count of rows it cost, at its first line."""
    unknown: dict[str | None, list[meterkit.Problem]] = {}
    for p in problems:
        if p.reason == "unknown_meter":
            unknown.setdefault(p.meter, []).append(p)
    for p in problems:
        if p.reason == "unknown_meter":
            same = unknown.pop(p.meter, None)
            if same is None:
                continue  # already named
            more = f" ({len(same)} rows)" if len(same) > 1 else ""
            typer.echo(f"{file}:{p.line}: {p.message} [{p.reason}]{more}", err=True)
            continue
        typer.echo(
            f"{file}:{p.line}: {p.message} [{p.reason}]" + (f" (field {p.field})" if p.field else ""),
            err=True,
        )


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # left for validation to name


def _jsonl_rows(path: Path, meter: str) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield number, f"not JSON: {exc}"
                continue
            if isinstance(row, dict):
                row.setdefault("meter", meter)
            yield number, row


@backfill_app.command(LOAD)
def backfill(
    file: Annotated[Path, typer.Argument(help="a .csv or .jsonl file of historical measurements")],
    meter: Annotated[str, typer.Option("--meter", help="the meter these rows belong to")],
    spool_dir: Annotated[
        Path | None,
        typer.Option("--spool-dir", help="spool directory (default: METERKIT_SPOOL_DIR)"),
    ] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="meters.yaml to validate against")] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="column holding a source event id; uids derive from it"),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option("--batch", help="batch id stamped on every measurement (default: bf-<hash of meter and file>)"),
    ] = None,
) -> None:
    """Spool historical measurements with deterministic uids: re-running never double counts.
    Every measurement carries the batch id, printed at the end, for `backfill revert`."""
    from tqdm import tqdm

    if not file.is_file():
        raise fail(f"{file} does not exist")
    if batch is not None:
        try:
            check_batch(batch)
        except meterkit.MeasurementError as exc:
            raise fail(f"--batch: {exc.problem.message}") from None
    batch = batch or default_batch(meter, file)
    try:
        client = meterkit.Client(catalog, spool_dir, mode="production")
    except meterkit.MeterkitError as exc:
        raise fail(str(exc)) from None
    suffix = file.suffix.lower()
    try:
        rows = _checked_rows(file, suffix, meter, key, client.catalog)
    except typer.Exit:
        client.shutdown()  # nothing was submitted: the spool holds nothing of this file
        raise
    total = sum(1 for _ in file.open("rb")) - (1 if suffix == ".csv" else 0)
    with tqdm(total=max(total, 0), unit="row", desc=file.name, file=sys.stderr, disable=None) as bar:

        def counted() -> Iterator[tuple[int, Any]]:
            for entry in rows:
                bar.update(1)
                yield entry

        result = client.submit_batch(counted(), key_field=key, batch=batch)
    client.shutdown()
    _report(file, result.problems)
    typer.echo(f"{file}: {result.accepted} measurement(s) spooled, {result.rejected} rejected, batch {batch}")
    if result.rejected:
        raise typer.Exit(1)


@backfill_app.command("revert")
def revert(
    batch: Annotated[str, typer.Argument(help="the batch id `meterkit backfill` printed")],
    reason: Annotated[str, typer.Option("--reason", help="why (required): the audit journal keeps it")],
    ledger: Annotated[str, typer.Option("--url", "--ledger", help="ledger base URL: lists the batch's measurements")],
    org: LedgerOrg = "default",
    spool_dir: Annotated[Path | None, typer.Option("--spool-dir", help="default: METERKIT_SPOOL_DIR")] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="meters.yaml to validate against")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would be reversed; write nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Reverse every measurement of a backfill batch (its live version, if amended since);
    those already reversed are skipped. Running it twice writes the same reversals. The
    ledger's token comes from METERKIT_LEDGER_TOKEN."""
    from tqdm import tqdm

    try:
        check_batch(batch)
    except meterkit.MeasurementError as exc:
        raise fail(f"batch: {exc.problem.message}") from None
    check_reason(reason)
    settings, cat = resolve(spool_dir, catalog)
    reader = LedgerReader(ledger, org)
    writer: CorrectionWriter | None = None  # made at the first write: a run with nothing to write creates no spool

    def write(pairs: list[tuple[str, list[dict[str, Any]]]]) -> None:
        nonlocal writer
        if not dry_run and pairs:
            writer = writer or CorrectionWriter(settings.spool_dir, cat, "revert", reason)
            writer.write(pairs, batch)

    listed = reversed_ = skipped = 0
    pairs: list[tuple[str, list[dict[str, Any]]]] = []
    try:
        with tqdm(unit="measurement", desc=f"revert {batch}", file=sys.stderr, disable=None) as bar:
            for doc in reader.batch(batch):
                listed += 1
                bar.update(1)
                live = _live(reader, doc)
                if live is None:
                    skipped += 1
                    continue
                pairs.append((live["uid"], [checked(reversal(checked(live, None)), cat)]))
                reversed_ += 1
                if len(pairs) == MAX_UIDS_PER_CONTROL:
                    write(pairs)
                    pairs = []
            write(pairs)
    finally:
        if writer is not None:
            writer.close()
    if listed == 0:
        raise fail(f"the ledger lists no measurement in batch {batch!r} of organisation {org!r}")
    summary = {"batch": batch, "listed": listed, "reversed": reversed_, "already_reversed": skipped}
    if as_json:
        print_json({**summary, "dry_run": dry_run, "controls": [c["id"] for c in writer.controls] if writer else []})
        return
    verb = "would reverse" if dry_run else "spooled the reversal of"
    typer.echo(f"batch {batch}: {verb} {reversed_} measurement(s); {skipped} already reversed")


def _live(reader: LedgerReader, doc: Any) -> dict[str, Any] | None:
    """The live version of a listed measurement. The ledger's listing says each one's
    ``corrected`` state, so only an amended one is read again (its replacement); a listing
    without it (an older ledger) costs a request per measurement."""
    if not isinstance(doc, dict) or not isinstance(doc.get("uid"), str):
        raise fail(f"the ledger at {reader.url} listed something that is not a measurement", 1)
    if "corrected" not in doc:
        found = reader.get(doc["uid"])
        if found is None:
            raise fail(f"the ledger listed {doc['uid']} and then could not find it", 1)
        doc = found
    return live_version(reader, doc)
