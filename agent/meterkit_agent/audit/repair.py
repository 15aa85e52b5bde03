"""``meterkit reconcile --repair``: re-send the measurements reconciliation named missing at
the backend, from the spool segments still on disk (live or retained) or the dead-letter
store, with their original uids, so a repair can never double count. Each is re-sent as
found where it was recorded in the bucket it is missing from; the journal records the
repair."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meterkit._model import tally

from ..contentdigest import bucket_of
from .journal import Journal, compress_uids
from .originals import Originals
from .reconcile import Report

Key = tuple[str, str]


@dataclass
class RepairResult:
    resent: int = 0
    refused: int = 0
    unrecoverable: dict[Key, int] = field(default_factory=dict)


def repair(state_dir: Path, report: Report, exporter: Any, spool_dirs: list[Path]) -> RepairResult:
    result = RepairResult()
    missing = [(d.meter, d.account, u) for d in report.differences if d.kind == "missing_at_backend" for u in d.uids]
    if not missing:
        return result
    versions = Originals(state_dir, spool_dirs).versions(u["uid"] for _, _, u in missing)
    resend: list[dict[str, Any]] = []
    for meter, account, u in missing:
        found = list(versions.get(u["uid"], {}).values())
        fits = [m for m in found if bucket_of(m) == (meter, account, u["hour"])] or found
        if fits:
            resend.append(fits[0])
        else:
            result.unrecoverable[(meter, account)] = result.unrecoverable.get((meter, account), 0) + 1
    if resend:
        refused = exporter.export(resend)
        result.refused = len(refused)
        result.resent = len(resend) - len(refused)
        entry = {"type": "repair", "count": result.resent, "uids": compress_uids(m["uid"] for m in resend)}
        Journal(state_dir).append([{**entry, "totals": tally(resend)}])
    return result
