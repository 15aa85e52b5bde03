"""Where the agent and the ledger keep their files unless told otherwise (XDG state)."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "meterkit" / "agent"


def default_ledger_url() -> str:
    return f"sqlite:///{default_state_dir().parent / 'ledger.db'}"
