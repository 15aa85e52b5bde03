"""``meterkit spool``: look inside a spool directory."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import orjson
import typer

from meterkit._frames import batch_records
from meterkit._spool import KIND_BATCH, KIND_CONTROL, KIND_MEASUREMENT, read_segment, segments

from .output import fail

spool_app = typer.Typer(help="Look inside a spool directory.", no_args_is_help=True)


@spool_app.command("inspect")
def spool_inspect(
    directory: Annotated[Path, typer.Argument(help="the spool directory")],
    as_json: Annotated[bool, typer.Option("--json", help="print every measurement as a JSON line")] = False,
) -> None:
    """Count measurements per meter and account (in measurement and batch frames); report
    losses and corrupt frames."""
    if not directory.is_dir():
        raise fail(f"{directory} is not a directory")
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
            elif frame.kind == KIND_BATCH:
                try:
                    batch = batch_records(frame.payload)
                except ValueError as exc:
                    problems.append(f"{seg.name}: frame at byte {frame.offset}: {exc}")
                    continue
                per_key.update((str(m.get("meter")), str(m.get("account"))) for m in batch)
                if as_json:
                    out.writelines(orjson.dumps(m) + b"\n" for m in batch)
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
