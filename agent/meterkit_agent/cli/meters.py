"""``meterkit meters``: check a meter catalog, and keep an organisation's meters (m3ter's
Meter API, or a ledger's) in step with it: ``diff``, ``push``, ``pull`` (:mod:`.metersync`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

import meterkit

from .output import fail, print_problems

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


MetersFile = Annotated[Path, typer.Argument(help="the meters.yaml", metavar="FILE")]
Url = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="M3TER_BASE_URL",
        metavar="URL",
        help="the API's base URL: a ledger's, or https://api.m3ter.com"
        " (token: METERKIT_LEDGER_TOKEN or M3TER_TOKEN; or M3TER_API_KEY and M3TER_API_SECRET)",
    ),
]
Org = Annotated[str, typer.Option("--org", envvar="M3TER_ORG_ID", metavar="ORG", help="the organisation")]


@meters_app.command("diff")
def meters_diff(file: MetersFile, url: Url, org: Org) -> None:
    """Print what a push would change. Exits 0 when the organisation's meters are the
    file's, 1 when they differ, 2 on a bad file or bad credentials."""
    from .metersync import plan

    want = _bodies(file)
    remote = _remote(url, org)
    found = plan(want, _call(remote.meters))
    for line in found.lines(prune=False):
        typer.echo(line)
    raise typer.Exit(1 if found.differs else 0)


@meters_app.command("push")
def meters_push(
    file: MetersFile,
    url: Url,
    org: Org,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the difference; change nothing")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="delete the organisation's meters the file does not have")
    ] = False,
) -> None:
    """Make the organisation's meters the file's: the difference is printed first; a meter
    only the organisation has is deleted only with --prune. Running it again changes nothing."""
    from .metersync import plan

    want = _bodies(file)
    remote = _remote(url, org)
    stored = _call(remote.meters)
    found = plan(want, stored)
    for line in found.lines(prune):
        typer.echo(line)
    if dry_run:
        typer.echo("dry run: nothing changed")
        return
    for code in found.create:
        _call(remote.create, want[code])
    for code in found.change:
        _call(remote.update, stored[code], want[code])
    gone = found.only_remote if prune else []
    for code in gone:
        _call(remote.delete, stored[code])
    typer.echo(f"pushed: {len(found.create)} created, {len(found.change)} changed, {len(gone)} deleted")


@meters_app.command("pull")
def meters_pull(
    url: Url,
    org: Org,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="the meters.yaml to write")] = Path("meters.yaml"),
) -> None:
    """Write the organisation's meters to a meters.yaml. When FILE exists, what only
    meterkit reads (privacy, description, pii, organisation custom_fields) is kept from it."""
    from .metersfile import write_catalog

    remote = _remote(url, org)
    meters = _call(remote.meters)
    try:
        write_catalog(out, [meters[code] for code in sorted(meters)])
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror}") from None
    except meterkit.CatalogError as exc:
        print_problems(exc)
        raise fail(f"the meters read do not make a valid catalog; {out} is unchanged", 1) from None
    typer.echo(f"{out}: {len(meters)} meter(s) written")


def _bodies(file: Path) -> dict[str, Any]:
    from .metersync import bodies

    try:
        return bodies(file)
    except meterkit.CatalogError as exc:
        print_problems(exc)
        raise fail(f"{len(exc.problems)} problem(s) in {file}") from None


def _remote(url: str, org: str) -> Any:
    from .metersync import Remote

    return _call(Remote, url, org)


def _call(fn: Any, *args: Any) -> Any:
    from .metersync import SyncError

    try:
        return fn(*args)
    except SyncError as exc:
        raise fail(str(exc), exc.code) from None
