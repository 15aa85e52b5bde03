"""Where the agent and the ledger keep their files unless told otherwise: beside the SDK's
default spool, in the project's state directory (:func:`meterkit._settings.project_state_dir`),
so one project's agent, spool and ledger are found together and never mixed with another's."""

from __future__ import annotations

from pathlib import Path

from meterkit._settings import project_state_dir


def default_state_dir(project: Path | None = None) -> Path:
    """``<project state dir>/agent``: checkpoint, dead letters, status."""
    return project_state_dir(project) / "agent"


def default_ledger_path(project: Path | None = None) -> Path:
    """``<project state dir>/ledger.db``: the embedded SQLite ledger."""
    return project_state_dir(project) / "ledger.db"


def default_ledger_url(project: Path | None = None) -> str:
    return f"sqlite:///{default_ledger_path(project)}"
