"""Where the agent and the ledger keep their files unless told otherwise: beside the SDK's
default spool, in the project's state directory (:func:`meterkit._settings.project_state_dir`),
so one project's agent, spool and ledger are found together and never mixed with another's."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote

import orjson

from meterkit._settings import project_state_dir


def default_state_dir(project: Path | None = None) -> Path:
    """``<project state dir>/agent``: checkpoint, dead letters, status."""
    return project_state_dir(project) / "agent"


def default_ledger_path(project: Path | None = None) -> Path:
    """``<project state dir>/ledger.db``: the embedded SQLite ledger."""
    return project_state_dir(project) / "ledger.db"


def default_ledger_url(project: Path | None = None) -> str:
    return f"sqlite:///{default_ledger_path(project)}"


def legacy_spool_dir() -> Path:
    """``$XDG_STATE_HOME/meterkit/spool``: where SDKs before per-project state spooled by
    default, one spool for every application of the user."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "meterkit" / "spool"


def stranded_segments(read: list[Path]) -> tuple[Path, int] | None:
    """The old shared default spool and how many segments wait in it, when it holds some
    and no receiver in ``read`` tails it: measurements an older SDK wrote that nothing
    would ever deliver."""
    legacy = legacy_spool_dir()
    if any(Path(d).resolve() == legacy.resolve() for d in read):
        return None
    try:
        waiting = sum(1 for p in legacy.iterdir() if p.name.endswith(".mks"))
    except OSError:
        return None
    return (legacy, waiting) if waiting else None


#: Where an agent's destinations other than the first keep their state.
DESTINATIONS_DIR = "destinations"
#: The file in a destination's state directory naming its exporter.
OWNER_NAME = "destination"
#: How much of a journal's end is read to find which exporter wrote it.
_JOURNAL_TAIL_BYTES = 256 * 1024


def destination_dir(state_dir: Path, exporter: str, *, primary: bool) -> Path:
    """A destination's state directory: the agent's own for the first destination (so an
    agent that gains a second exporter moves nothing), ``destinations/<exporter id>`` for
    the others, the id percent-encoded (``m3ter/eu`` is ``m3ter%2Feu``) so no two ids share
    a directory."""
    return Path(state_dir) if primary else Path(state_dir) / DESTINATIONS_DIR / quote(exporter, safe="")


class StateMismatch(Exception):
    """A state directory holds another destination's progress than the one configured there."""


def claim_state(directory: Path, exporter: str, *, alone: bool) -> None:
    """Record that ``directory``'s checkpoint and journal are ``exporter``'s, or refuse if
    they are another exporter's: reordering the exporters must not hand one destination's
    progress (and its journal) to another. A directory written before the record existed is
    claimed for the exporter its journal's last delivery names. An agent with one exporter
    (``alone``) owns its directory whatever the exporter is called, as it always has."""
    path = Path(directory) / OWNER_NAME
    recorded = path.exists()
    if recorded:
        held: str | None = path.read_text(encoding="utf-8").strip()
    else:
        held = None if alone else _journal_owner(Path(directory))
    if held is not None and held != exporter and not alone:
        raise StateMismatch(
            f"the state directory {directory} holds the progress of exporter {held!r}, not of {exporter!r}:"
            f" list {held!r} first (the first exporter's progress lives in the state directory itself),"
            f" or give this configuration its own state directory (or, if {exporter!r} is {held!r} renamed,"
            f" write {exporter!r} into {path})"
        )
    if held != exporter or not recorded:
        path.write_text(f"{exporter}\n", encoding="utf-8")
        path.chmod(0o600)


def _journal_owner(directory: Path) -> str | None:
    """The exporter the last delivery in ``directory``'s journal went to, if any."""
    try:
        with (directory / "journal.jsonl").open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - _JOURNAL_TAIL_BYTES))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("type") == "delivery" and entry.get("exporters"):
            return str(entry["exporters"][0].get("exporter"))
    return None


def destination_dirs(state_dir: Path) -> dict[str, Path]:
    """Every destination whose state is in ``state_dir``, by exporter id: the first (named
    by its ``destination`` file; ``""`` for a state directory older than it) and each under
    ``destinations/``."""
    found: dict[str, Path] = {}
    for path in [Path(state_dir), *sorted((Path(state_dir) / DESTINATIONS_DIR).glob("*"))]:
        if not path.is_dir():
            continue
        try:
            found[(path / OWNER_NAME).read_text(encoding="utf-8").strip()] = path
        except FileNotFoundError:
            found["" if path == Path(state_dir) else unquote(path.name)] = path
    return found
