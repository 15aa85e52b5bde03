"""What happens after a batch is acknowledged: dead letters are stored, then the journal
entry (which carries the checkpoint positions) is appended and fsynced, then the
checkpoint file follows.

A crash before the journal append replays the batch; after it, the journal says where to
resume. The checkpoint never passes a record that was neither acknowledged nor
dead-lettered.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from typing import Any

from meterkit._model import tally
from meterkit._timefmt import wire_ts_ns

from ..audit.journal import Journal, compress_uids, uid_digest
from ..component import Rejected
from ..exporters.exporterhelper import idempotency_key
from .checkpoint import Checkpoint
from .deadletters import DeadLetters
from .prepare import Prepared
from .telemetry import AgentMetrics


class Committer:
    def __init__(
        self, journal: Journal, checkpoint: Checkpoint, dead_letters: DeadLetters, metrics: AgentMetrics
    ) -> None:
        self.journal = journal
        self.checkpoint = checkpoint
        self.dead_letters = dead_letters
        self.metrics = metrics

    def __call__(self, p: Prepared, refused: list[Rejected], answers: list[dict[str, Any]]) -> None:
        rejected = p.rejected + refused
        refused_ids = {id(r.measurement) for r in rejected}
        delivered = [m for m in p.records if id(m) not in refused_ids]
        journal = list(p.journal)

        self.dead_letters.add("agent", [(r.measurement, r.reason, r.detail) for r in rejected] + p.broken)
        if rejected or p.broken:
            journal.append(dead_letter_entry(rejected, p.broken))
        delivered_uids = {m["uid"] for m in delivered}
        journal.append(
            {
                "type": "delivery",
                "batch": uuid.uuid4().hex,
                "idempotency_key": idempotency_key(delivered_uids),
                "uid_digest": uid_digest(delivered_uids),
                "count": len(delivered),
                "totals": tally(delivered),
                "sources": [
                    {"segment": seg, "writer": writer, "uids": compress_uids(u for u in uids if u in delivered_uids)}
                    for seg, (writer, uids) in p.sources.items()
                ],
                "exporters": answers,
                "positions": p.positions,
            }
        )
        self.journal.append(journal)
        self.checkpoint.advance(p.positions, self.journal.seq)
        self._count(rejected, delivered)

    def _count(self, rejected: list[Rejected], delivered: list[dict[str, Any]]) -> None:
        for r in rejected:
            self.metrics.dead_lettered.add(1, {"reason": r.reason})
            if r.reason.startswith("rejected_by_backend"):
                self.metrics.rejected.add(1)
        self.metrics.delivered.add(len(delivered))
        now = time.time_ns()
        for m in delivered:
            with contextlib.suppress(KeyError, ValueError):
                self.metrics.latency.record(max(0.0, (now - wire_ts_ns(m["ts"])) / 1e9))


def dead_letter_entry(rejected: list[Rejected], broken: list[tuple[Any, str, str]]) -> dict[str, Any]:
    """The journal's account of a batch's dead letters: how many, why, and their totals."""
    reasons = Counter(r.reason for r in rejected) + Counter(reason for _, reason, _ in broken)
    measurements = [r.measurement for r in rejected if isinstance(r.measurement, dict)]
    uids = [m["uid"] for m in measurements if isinstance(m.get("uid"), str)]
    return {
        "type": "dead_letter",
        "count": len(rejected) + len(broken),
        "reasons": dict(reasons),
        "totals": tally(measurements),
        "uids": compress_uids(uids),
    }
