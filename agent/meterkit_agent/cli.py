"""The ``meterkit`` command line."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

import meterkit
from meterkit._model import CATEGORIES
from meterkit._spool import KIND_CONTROL, KIND_MEASUREMENT, read_segment, segments

app = typer.Typer(
    name="meterkit",
    help="Usage metering: check catalogs, inspect spools, backfill history.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
meters_app = typer.Typer(help="Work with a meter catalog (meters.yaml).", no_args_is_help=True)
spool_app = typer.Typer(help="Look inside a spool directory.", no_args_is_help=True)
app.add_typer(meters_app, name="meters")
app.add_typer(spool_app, name="spool")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@meters_app.command("validate")
def meters_validate(file: Annotated[Path, typer.Argument(help="the meters.yaml to check")]) -> None:
    """Check a catalog; print every problem with file, line, meter, field and reason."""
    try:
        catalog = meterkit.load_catalog(file)
    except meterkit.CatalogError as exc:
        for p in exc.problems:
            typer.echo(f"{p}  [{p.reason}]", err=True)
        typer.echo(f"{len(exc.problems)} problem(s) in {file}", err=True)
        raise typer.Exit(1) from None
    derived = sum(len(m.derived_fields) for m in catalog.meters.values())
    typer.echo(f"{file}: ok, {len(catalog.meters)} meter(s), {derived} derived field(s)")


@spool_app.command("inspect")
def spool_inspect(
    directory: Annotated[Path, typer.Argument(help="the spool directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print every measurement as a JSON line")] = False,
) -> None:
    """Count measurements per meter and account; report losses and corrupt frames."""
    if not directory.is_dir():
        raise _fail(f"{directory} is not a directory")
    per_key: Counter[tuple[str, str]] = Counter()
    losses: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    files = segments(directory)
    sealed = 0
    out = sys.stdout.buffer
    for seg in files:
        result = read_segment(seg)
        if result.error:
            problems.append(f"{seg.name}: {result.error}")
            continue
        sealed += result.sealed
        for c in result.corrupt:
            problems.append(f"{seg.name}: {c.reason} at byte {c.offset} ({c.length} bytes skipped)")
        if result.torn and not result.corrupt:
            problems.append(
                f"{seg.name}: incomplete last frame at byte {result.next_offset}"
                " (still being written, or torn by a crash)"
            )
        for frame in result.frames:
            try:
                body = frame.json()
            except orjson.JSONDecodeError:
                problems.append(f"{seg.name}: frame at byte {frame.offset} is not JSON")
                continue
            if frame.kind == KIND_MEASUREMENT:
                per_key[(str(body.get("meter")), str(body.get("account")))] += 1
                if as_json:
                    out.write(frame.payload + b"\n")
            elif frame.kind == KIND_CONTROL and body.get("type") == "losses":
                for e in body.get("entries", []):
                    losses[(str(e.get("reason")), str(e.get("meter")))] += int(e.get("count", 0))
    if as_json:
        out.flush()
        for line in problems:
            typer.echo(f"warning: {line}", err=True)
        raise typer.Exit(1 if problems else 0)
    total = sum(per_key.values())
    typer.echo(f"{directory}: {len(files)} segment(s), {sealed} sealed, {total} measurement(s)")
    if per_key:
        width = max(len(m) for m, _ in per_key) + 2
        typer.echo(f"\n{'meter':<{width}}{'account':<24}{'count':>10}")
        for (m, a), n in sorted(per_key.items()):
            typer.echo(f"{m:<{width}}{a:<24}{n:>10}")
    if losses:
        typer.echo("\nlost (counted by the SDK):")
        for (reason, m), n in sorted(losses.items()):
            typer.echo(f"  {reason:<28}{m:<24}{n:>10}")
    rejected = directory / "rejected"
    if rejected.is_dir():
        lines = sum(1 for f in rejected.glob("*.jsonl") for _ in f.open("rb"))
        if lines:
            typer.echo(f"\n{lines} rejected measurement(s) kept in {rejected}")
    if problems:
        typer.echo("\nproblems:")
        for line in problems:
            typer.echo(f"  {line}")
        raise typer.Exit(1)


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


@app.command("backfill")
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
        raise _fail(f"{file} does not exist")
    try:
        client = meterkit.Client(catalog, spool_dir, mode="production")
    except meterkit.MeterkitError as exc:
        raise _fail(str(exc)) from None
    suffix = file.suffix.lower()
    if suffix == ".csv":
        rows: Iterator[tuple[int, Any]] = _csv_rows(file, meter, client.catalog)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(file, meter)
    else:
        raise _fail(f"{file}: expected a .csv or .jsonl file")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
