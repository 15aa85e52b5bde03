"""meterkit's sidecar: the command line, and (as it grows) the agent, its pipeline and the ledger.

The agent imports the SDK (``meterkit``) for the catalog, the measurement model and the
spool reader; the SDK never imports the agent.
"""

__all__: list[str] = []
