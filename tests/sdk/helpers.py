from __future__ import annotations

from pathlib import Path
from typing import Any

from meterkit._spool import KIND_CONTROL, KIND_MEASUREMENT, iter_records


def spooled(directory: Path) -> list[dict[str, Any]]:
    """Every measurement in a spool directory, in write order per segment."""
    return [f.json() for _, f in iter_records(directory) if f.kind == KIND_MEASUREMENT]


def controls(directory: Path, kind: str | None = None) -> list[dict[str, Any]]:
    found = [f.json() for _, f in iter_records(directory) if f.kind == KIND_CONTROL]
    return [c for c in found if kind is None or c["type"] == kind]


def losses(directory: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in controls(directory, "losses"):
        for e in c["entries"]:
            out[e["reason"]] = out.get(e["reason"], 0) + e["count"]
    return out
