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
    warnings = privacy_warnings(catalog)
    for warning in warnings:
        typer.echo(f"{file}: warning: {warning}", err=True)
    typer.echo(f"{file}: ok, {len(catalog.meters)} meter(s), {derived} derived field(s), {len(warnings)} warning(s)")


def privacy_warnings(catalog: meterkit.Catalog) -> list[str]:
    """A WHO field names a person or an organisation: the catalog should say what leaves
    the application (docs/privacy.md). One warning per WHO field that does not."""
    return [
        f"meter {meter.code!r}, field {f.code!r}: a WHO field should say privacy: pseudonymize, drop or keep"
        " (unset, its value is kept as given)"
        for meter in catalog.meters.values()
        for f in meter.data_fields
        if f.category.value == "who" and f.privacy is None
    ]
