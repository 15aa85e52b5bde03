"""What happens after a batch is acknowledged: dead letters are stored, then the journal
entry (which carries the checkpoint positions) is appended and fsynced, then the
checkpoint file follows.

A crash before the journal append replays the batch; after it, the journal says where to
resume. The checkpoint never passes a record that was neither acknowledged nor
dead-lettered.

Each ``delivery`` entry's totals carry, per (meter, account, hour), the content digest of
what was delivered (:mod:`..contentdigest`): one sha256 of each measurement's JSON, the
same hash the ledger stores, so reconciliation compares measurement by measurement and
not only totals.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import Counter
from typing import Any

from meterkit._model import content_hash, tally
from meterkit._timefmt import wire_ts_ns

from ..audit.journal import Journal, compress_uids, uid_digest
from ..component import Rejected
from ..contentdigest import bucket_of, fold
from ..exporters.exporterhelper import idempotency_key
from .checkpoint import Checkpoint
from .deadletters import DeadLetters
from .prepare import Prepared
from .telemetry import AgentMetrics

logger = logging.getLogger("meterkit.agent")


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

        by_stage: dict[str, list[tuple[Any, str, str]]] = {}
        for r in rejected:
            by_stage.setdefault(r.stage or "agent", []).append((r.measurement, r.reason, r.detail))
        for body, reason, detail, stage in p.broken:
            by_stage.setdefault(stage, []).append((body, reason, detail))
        for stage, entries in by_stage.items():
            self.dead_letters.add(stage, entries)
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
                "totals": delivery_totals(delivered),
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
        self._count(rejected, p.broken, delivered)

    def _count(self, rejected: list[Rejected], broken: list[tuple[Any, str, str, str]], delivered: list[Any]) -> None:
        isolated = Counter((r.stage or "agent", r.reason) for r in rejected)
        isolated.update((stage, reason) for _, reason, _, stage in broken)
        for (stage, reason), n in isolated.items():
            self.metrics.dead_lettered.add(n, {"reason": reason, "stage": stage})
            if reason.startswith("rejected_by_backend"):
                self.metrics.rejected.add(n)
        if isolated:
            logger.warning(
                "meterkit agent: dead-lettered %d of %d: %s (meterkit dlq list shows them)",
                sum(isolated.values()),
                len(delivered) + sum(isolated.values()),
                ", ".join(f"{n} {reason} at {stage}" for (stage, reason), n in sorted(isolated.items())),
            )
        self.metrics.delivered.add(len(delivered))
        now = time.time_ns()
        for m in delivered:
            with contextlib.suppress(KeyError, ValueError):
                self.metrics.latency.record(max(0.0, (now - wire_ts_ns(m["ts"])) / 1e9))


def delivery_totals(delivered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`meterkit._model.tally` of a delivered batch, each bucket with its content digest."""
    hashes: dict[tuple[str, str, str], list[str]] = {}
    for m in delivered:
        hashes.setdefault(bucket_of(m), []).append(content_hash(m))
    totals = tally(delivered)
    for row in totals:
        row.update(fold(hashes[(row["meter"], row["account"], row["hour"])]).as_json())
    return totals


def dead_letter_entry(rejected: list[Rejected], broken: list[tuple[Any, str, str, str]]) -> dict[str, Any]:
    """The journal's account of a batch's dead letters: how many, why, and their totals
    (frames that are no measurement at all count, but add to no usage total)."""
    reasons = Counter(r.reason for r in rejected) + Counter(reason for _, reason, _, _ in broken)
    measurements = [r.measurement for r in rejected if isinstance(r.measurement, dict)]
    uids = [m["uid"] for m in measurements if isinstance(m.get("uid"), str)]
    return {
        "type": "dead_letter",
        "count": len(rejected) + len(broken),
        "reasons": dict(reasons),
        "totals": tally(measurements),
        "uids": compress_uids(uids),
    }
