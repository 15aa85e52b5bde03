"""``meterkit backfill``: spool historical measurements from a CSV or JSON lines file."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

import meterkit
from meterkit._model import CATEGORIES

from .output import fail


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
                    row.setdefault(category, {})[code] = (
                        _number(text) if category in ("measure", "income", "cost") else text
                    )
                else:
                    row[column] = text
            yield reader.line_num, row


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
) -> None:
    """Spool historical measurements with deterministic uids: re-running never double counts."""
    from tqdm import tqdm

    if not file.is_file():
        raise fail(f"{file} does not exist")
    try:
        client = meterkit.Client(catalog, spool_dir, mode="production")
    except meterkit.MeterkitError as exc:
        raise fail(str(exc)) from None
    suffix = file.suffix.lower()
    if suffix == ".csv":
        rows: Iterator[tuple[int, Any]] = _csv_rows(file, meter, client.catalog)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(file, meter)
    else:
        raise fail(f"{file}: expected a .csv or .jsonl file")
    total = sum(1 for _ in file.open("rb")) - (1 if suffix == ".csv" else 0)
    with tqdm(total=max(total, 0), unit="row", desc=file.name, file=sys.stderr, disable=None) as bar:

        def counted() -> Iterator[tuple[int, Any]]:
            for entry in rows:
                bar.update(1)
                yield entry

        result = client.submit_batch(counted(), key_field=key)
    client.shutdown()
    for p in result.problems:
        typer.echo(
            f"{file}:{p.line}: {p.message} [{p.reason}]" + (f" (field {p.field})" if p.field else ""),
            err=True,
        )
    typer.echo(f"{file}: {result.accepted} measurement(s) spooled, {result.rejected} rejected")
    if result.rejected:
        raise typer.Exit(1)
