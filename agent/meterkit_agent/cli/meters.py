"""``meterkit meters``: work with a meter catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import meterkit

from .output import print_problems

meters_app = typer.Typer(help="Work with a meter catalog (meters.yaml).", no_args_is_help=True)


@meters_app.command("validate")
def meters_validate(file: Annotated[Path, typer.Argument(help="the meters.yaml to check")]) -> None:
    """Check a catalog; print every problem with file, line, meter, field and reason."""
    try:
        catalog = meterkit.load_catalog(file)
    except meterkit.CatalogError as exc:
        print_problems(exc)
        typer.echo(f"{len(exc.problems)} problem(s) in {file}", err=True)
        raise typer.Exit(1) from None
    derived = sum(len(m.derived_fields) for m in catalog.meters.values())
    typer.echo(f"{file}: ok, {len(catalog.meters)} meter(s), {derived} derived field(s)")
