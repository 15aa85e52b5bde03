"""meterkit's sidecar: the agent and its pipeline, the ledger, the audit trail and the
``meterkit`` command line. Installed by ``pip install 'meterkit[agent]'``.

The agent imports the SDK (``meterkit``) for the catalog, the measurement model and the
spool reader; the SDK never imports the agent. docs/architecture.md maps the packages.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    """The ``meterkit`` command. Says what to install when the agent's extra is missing,
    instead of a traceback (the wheel ships this package with a plain ``pip install
    meterkit`` too, without its dependencies)."""
    try:
        from .cli import app
    except ModuleNotFoundError as exc:
        if (exc.name or "meterkit").startswith("meterkit"):
            raise  # our own module missing is a broken install, not a missing extra
        sys.exit(
            f"meterkit: the command line needs the agent's dependencies ({exc.name} is not installed);"
            " install them with: pip install 'meterkit[agent]'"
        )
    app()
