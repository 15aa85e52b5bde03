"""What ``meterkit correct`` and ``meterkit backfill revert`` share: reading a measurement's
live version back from a ledger, finding corrections still in the local spool, and writing
corrections into the spool, each group of them in one write with the control record that
says who corrected what, when and why (``meterkit._client.write_with_control``).

The live version of a measurement is itself, or the latest replacement in its chain
(``corrected.replaced_by``, followed even before the reversal that goes with it arrives:
that correction is on its way); a measurement reversed and not replaced is cancelled.

The ledger's URL is printed without its user information (``user:password@``), and its
token comes from the environment, so neither is ever echoed. Checking the spool for a
correction of the same version and writing one are done under an exclusive lock of the
spool directory (:func:`spool_lock`), so two commands run at once cannot both find
nothing pending and write two different corrections.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

import meterkit
from meterkit._client import write_with_control
from meterkit._corrections import MAX_UIDS_PER_CONTROL, control_record, correction_of, is_reversal, said_problem
from meterkit._errors import safe_repr
from meterkit._model import validate_wire
from meterkit._settings import Settings
from meterkit._spool import KIND_MEASUREMENT, iter_records
from meterkit._timefmt import iso_ms

from ..credentials import shown_url
from .output import fail

#: The environment variable holding the ledger's token: never an option, so never in argv.
ENV_LEDGER_TOKEN = "METERKIT_LEDGER_TOKEN"  # noqa: S105 - the name of a variable, not a secret
#: The lock file in the spool directory around a correction's check and write.
LOCK_NAME = ".correct.lock"
#: Replacements followed at most from one uid: a longer chain is a ledger that loops.
MAX_CHAIN = 1000


class LedgerReader:
    """Reads measurements back from a ledger (or a backend with its API)."""

    def __init__(self, url: str, org: str) -> None:
        import requests

        self.url = shown_url(url)  # what messages print
        self._base = f"{url.rstrip('/')}/organizations/{quote(org, safe='')}/measurements"
        self._session = requests.Session()
        token = os.environ.get(ENV_LEDGER_TOKEN)
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        import requests

        from .ledger import answer_message

        try:
            response = self._session.get(self._base + path, params=params, timeout=60)
        except requests.RequestException as exc:
            raise fail(f"cannot reach the ledger at {self.url}: {type(exc).__name__}", 1) from None
        if response.status_code == 404 and path:
            return None
        if response.status_code in (401, 403):
            raise fail(
                f"the ledger at {self.url} refused the request ({response.status_code}); check {ENV_LEDGER_TOKEN}"
            )
        if response.status_code != 200:
            raise fail(f"the ledger answered {response.status_code}: {answer_message(response)}", 1)
        try:
            return response.json()
        except (ValueError, RecursionError):
            kind = response.headers.get("Content-Type") or "no content type"
            raise fail(f"the ledger at {self.url} answered something that is not JSON ({kind:.60})", 1) from None

    def get(self, uid: str) -> dict[str, Any] | None:
        """The stored measurement with its ``corrected`` state, or ``None`` if unknown."""
        found = self._get("/" + quote(uid, safe=""))
        if found is not None and not isinstance(found, dict):
            raise fail(f"the ledger's answer for {uid} is not a measurement", 1)
        return found

    def batch(self, batch: str, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """A backfill batch's measurements, in uid order, page by page."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"batch": batch, "limit": limit}
            if after is not None:
                params["after"] = after
            page = self._get("", params)
            if not isinstance(page, dict) or not isinstance(page.get("measurements"), list):
                raise fail(f"the ledger at {self.url} cannot list a batch's measurements (no batch listing)", 1)
            yield from page["measurements"]
            after = page.get("next")
            if not after:
                return


def split_state(doc: dict[str, Any], where: str) -> tuple[dict[str, Any], str | None, str | None]:
    """A stored measurement without its ``corrected`` state, and that state: the uids of
    its reversal and of its replacement, or ``None``."""
    measurement = {k: v for k, v in doc.items() if k != "corrected"}
    state = doc.get("corrected") or {}
    if not isinstance(state, dict):
        raise fail(f"{where}: 'corrected' is not an object")
    reversed_by, replaced_by = state.get("reversed_by"), state.get("replaced_by")
    for name, value in (("reversed_by", reversed_by), ("replaced_by", replaced_by)):
        if value is not None and (type(value) is not str or not value):
            raise fail(f"{where}: corrected.{name} is not a uid", 1)
    return measurement, reversed_by, replaced_by


def live_version(reader: LedgerReader, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The version of a measurement that counts now: itself, or the latest replacement in
    its chain; ``None`` if it was cancelled (reversed, not replaced)."""
    for _ in range(MAX_CHAIN):
        measurement, reversed_by, replaced_by = split_state(doc, reader.url)
        check_correctable(measurement, reader.url)
        if replaced_by:  # followed even before its reversal arrives: a correction on its way
            found = reader.get(replaced_by)
            if found is None:
                raise fail(
                    f"the ledger says {measurement['uid']} was replaced by {replaced_by}, which it cannot find", 1
                )
            doc = found
            continue
        return None if reversed_by else measurement
    raise fail(f"more than {MAX_CHAIN} replacements follow each other from {doc.get('uid')}", 1)


def check_correctable(measurement: dict[str, Any], where: str) -> None:
    """A reversal is never corrected (the ledger refuses it too): correct its original."""
    if is_reversal(measurement):
        of = (correction_of(measurement) or ("?", ""))[0]
        raise fail(
            f"{where}: {measurement.get('uid')} is a reversal; correct the measurement it reverses, {of}, instead"
        )


def spooled_corrections(directory: Path, of: set[str]) -> dict[str, dict[str, Any]]:
    """Corrections of the uids in ``of`` still in the local spool (written, perhaps not yet
    delivered), by uid. Corrections travel in measurement frames, never in batch frames."""
    found: dict[str, dict[str, Any]] = {}
    if not directory.is_dir():
        return found
    for _, frame in iter_records(directory):
        if frame.kind != KIND_MEASUREMENT or b'"correction"' not in frame.payload:
            continue
        try:
            m = frame.json()
        except ValueError:
            continue
        mark = m.get("correction") if isinstance(m, dict) else None
        if isinstance(mark, dict) and mark.get("of") in of:
            found[str(m.get("uid"))] = m
    return found


def checked(record: dict[str, Any], catalog: meterkit.Catalog | None, option: str = "") -> dict[str, Any]:
    """``record`` validated as the agent will validate it; a problem exits 2 naming the
    field (as ``option`` and the field, when the user's option set it)."""
    try:
        return validate_wire(record, catalog)
    except meterkit.MeasurementError as exc:
        p = exc.problem
        of, kind = correction_of(record) or (record.get("uid"), "measurement")
        where = f"{option}{p.field}" if p.field else f"the {kind} of {safe_repr(of):.60}"
        raise fail(f"{where}: {p.message} [{p.reason}]") from None


def check_reason(reason: str) -> None:
    """``--reason`` is required and goes into the audit journal: it must say something, in
    one frame's worth, with no control character (nor may who corrects: :func:`actor`)."""
    if not reason.strip():
        raise fail("--reason must say why (it goes into the audit journal)")
    why = said_problem(reason, "--reason")
    if why is not None:
        raise fail(why)
    actor()


def actor() -> str:
    """Who corrects: ``user@host``, as the control record and the journal name them; a
    name with a control character in it exits 2."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        user = f"uid{os.getuid()}"
    by = f"{user}@{socket.gethostname()}"
    why = said_problem(by, "who corrects (user@host)")
    if why is not None:
        raise fail(why)
    return by


@contextlib.contextmanager
def spool_lock(directory: Path, group: str | int | None = None) -> Iterator[None]:
    """Hold an exclusive lock of the spool ``directory`` (made if need be, as the SDK makes
    it) until the block ends: a correction's look for a pending one and its write happen
    under it. The lock is released when the process ends, however it ends."""
    from meterkit import _permissions

    try:
        _permissions.spool_dir(directory, group)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except (OSError, KeyError) as exc:  # KeyError: an unknown spool group
        raise fail(f"cannot use spool directory {directory}: {getattr(exc, 'strerror', None) or exc}", 1) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def chunks(pairs: list[tuple[str, list[dict[str, Any]]]]) -> Iterator[list[tuple[str, list[dict[str, Any]]]]]:
    """``(of, corrections)`` pairs in groups whose ``of`` and ``uids`` lists each fit one
    control record (:data:`MAX_UIDS_PER_CONTROL`)."""
    group: list[tuple[str, list[dict[str, Any]]]] = []
    written = 0
    for of, records in pairs:
        if group and (len(group) >= MAX_UIDS_PER_CONTROL or written + len(records) > MAX_UIDS_PER_CONTROL):
            yield group
            group, written = [], 0
        group.append((of, records))
        written += len(records)
    if group:
        yield group


class CorrectionWriter:
    """Writes corrections into the spool through an SDK client, each group of them in one
    write with its control record (``meterkit._client.write_with_control``)."""

    def __init__(self, spool_dir: Path | None, catalog: meterkit.Catalog | None, action: str, reason: str) -> None:
        try:
            self.client = meterkit.Client(catalog, spool_dir, mode="production")
        except meterkit.MeterkitError as exc:
            raise fail(str(exc)) from None
        self.action, self.reason, self.by = action, reason, actor()
        self.controls: list[dict[str, Any]] = []

    def write(self, pairs: list[tuple[str, list[dict[str, Any]]]], batch: str | None = None) -> None:
        """Write every group, each with its control record; a refused write exits 1 saying
        how many groups (and corrections) were written before it."""
        for group in chunks(pairs):
            records = [r for _, rs in group for r in rs]
            control = control_record(
                self.action,
                self.reason,
                self.by,
                iso_ms(time.time_ns()),
                [of for of, _ in group],
                [r["uid"] for r in records],
                batch,
            )
            try:
                write_with_control(self.client, records, control)
            except meterkit.MeterkitError as exc:
                if not self.controls:
                    raise fail(str(exc), 1) from None
                done = sum(len(c["uids"]) for c in self.controls)
                raise fail(
                    f"{len(self.controls)} group(s) of corrections ({done} measurements, with their control records)"
                    f" were written; the next was refused: {exc}. Run the command again: it writes the rest, and"
                    " the written ones again as duplicates",
                    1,
                ) from None
            self.controls.append(control)

    def close(self) -> None:
        self.client.shutdown()


def resolve(spool_dir: Path | None, catalog: Path | None) -> tuple[Settings, meterkit.Catalog | None]:
    """The spool directory and catalog as the SDK resolves them (option, then METERKIT_*)."""
    from meterkit._settings import resolve as resolve_settings

    from .output import print_problems

    try:
        settings = resolve_settings(spool_dir=spool_dir, catalog=catalog)
        return settings, meterkit.load_catalog(settings.catalog) if settings.catalog else None
    except meterkit.CatalogError as exc:
        print_problems(exc)
        raise typer.Exit(2) from None
    except meterkit.MeterkitError as exc:
        raise fail(str(exc)) from None
