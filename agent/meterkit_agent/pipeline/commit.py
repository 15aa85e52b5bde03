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

A delivery that carried corrections (reversals and replacements, marked ``correction``)
lists their uids per bucket under ``corrections``, so reconciliation can tell an auditor
whether each correction a ``correction`` entry announced was delivered, and into which
hours, without reading the journal twice.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from meterkit._model import tally
from meterkit._timefmt import wire_ts_ns

from ..audit.journal import Journal, compress_sorted_uids, compress_uids, sorted_uid_digest
from ..component import Rejected
from ..contentdigest import bucket_of
from .checkpoint import Checkpoint
from .deadletters import DeadLetters
from .fence import Fence
from .prepare import Prepared
from .telemetry import AgentMetrics
from .totals import delivery_totals

logger = logging.getLogger("meterkit.agent")


class Committer:
    def __init__(
        self,
        journal: Journal,
        checkpoint: Checkpoint,
        dead_letters: DeadLetters,
        metrics: AgentMetrics,
        fence: Fence | None = None,
    ) -> None:
        self.journal = journal
        self.checkpoint = checkpoint
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.fence = fence or Fence()

    def __call__(self, p: Prepared, refused: list[Rejected], answers: list[dict[str, Any]]) -> None:
        """Commit a delivered batch, under the lease's commit lock: raises
        :class:`..lease.Fenced`, having written nothing, when another agent leads now."""
        with self.fence.committing():
            self._commit(p, refused, answers)

    def _commit(self, p: Prepared, refused: list[Rejected], answers: list[dict[str, Any]]) -> None:
        rejected = p.rejected + refused
        delivered, digests = _delivered(p, refused)
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
        journal.append(
            {"type": "delivery", "batch": uuid.uuid4().hex}
            | _summary(p, delivered, digests, rejected)
            | {"exporters": answers, "positions": p.positions}
            | ({"epoch": self.fence.epoch} if self.fence.epoch is not None else {})
        )
        self.journal.append(journal)
        self.checkpoint.advance(p.positions, self.journal.seq)
        self._count(rejected, p.broken, delivered, _oldest(p, delivered))

    def _count(
        self,
        rejected: list[Rejected],
        broken: list[tuple[Any, str, str, str]],
        delivered: list[Any],
        oldest: int | None,
    ) -> None:
        """The batch's metrics: one addition per counter and reason, one latency observation."""
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
        # The oldest measurement's wait stands for the batch: every other one waited less.
        if oldest is not None:
            self.metrics.latency.record(max(0.0, (time.time_ns() - oldest) / 1e9))


_ts = itemgetter("ts")


def _oldest(p: Prepared, delivered: list[dict[str, Any]]) -> int | None:
    """The oldest delivered measurement's time (ns), or None; when nothing was refused,
    found once for every destination the batch was handed to (as its summary is)."""
    everything = delivered is p.records
    if everything and p.oldest is not None:
        return p.oldest
    found = None
    with contextlib.suppress(KeyError, TypeError, ValueError):
        found = wire_ts_ns(min(map(_ts, delivered))) if delivered else None
    if everything:
        p.oldest = found
    return found


def _summary(
    p: Prepared, delivered: list[dict[str, Any]], digests: list[bytes], rejected: list[Rejected]
) -> dict[str, Any]:
    """What a delivery entry says of what was delivered: uids, count, totals, sources and
    corrections. When nothing was refused it depends on the batch alone, so destinations
    sharing a prepared batch (:mod:`.feed`) compute it once (the journal copies, never
    changes, what it is given)."""
    if not rejected and p.summary is not None:
        return p.summary
    # Nothing refused: the frames' uids are exactly the delivered ones, sorted once per segment.
    by_segment = None if rejected else {seg: _distinct(uids) for seg, (_, uids) in p.sources.items()}
    summary = (
        uid_fields(delivered, p.sources, everything=not rejected, by_segment=by_segment)
        | {"count": len(delivered), "totals": delivery_totals(delivered, digests)}
        | {"sources": _sources(delivered, p.sources, everything=not rejected, by_segment=by_segment)}
        | _corrections(delivered)
    )
    if not rejected:
        p.summary = summary
    return summary


def _delivered(p: Prepared, refused: list[Rejected]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The records every exporter took, with their content hashes."""
    if not refused:
        return p.records, p.digests
    gone = {id(r.measurement) for r in refused}
    kept = [i for i, m in enumerate(p.records) if id(m) not in gone]
    return [p.records[i] for i in kept], [p.digests[i] for i in kept]


def uid_fields(
    delivered: list[dict[str, Any]],
    sources: dict[str, tuple[str, list[Any]]],
    *,
    everything: bool,
    by_segment: dict[str, list[str]] | None = None,
) -> dict[str, str]:
    """``idempotency_key`` and ``uid_digest`` of the delivered uids: one sort, one hash
    (the key is the digest's first 48 hex digits, :func:`..exporters.exporterhelper.idempotency_key`).
    ``everything``: nothing was refused, so the frames' uids are exactly the delivered ones;
    ``by_segment``: those uids per segment, distinct and sorted, when already known."""
    if everything and by_segment is not None and len(by_segment) == 1:
        uids = next(iter(by_segment.values()))
    elif everything:
        uids = _distinct(itertools.chain.from_iterable(u for _, u in sources.values()))
    else:
        uids = _distinct(m.get("uid") for m in delivered)
    digest = sorted_uid_digest(uids)
    return {"idempotency_key": digest[:48], "uid_digest": digest}


def _sources(
    delivered: list[dict[str, Any]],
    sources: dict[str, tuple[str, list[Any]]],
    *,
    everything: bool,
    by_segment: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """Per segment: its writer and the uids delivered from it, compressed."""
    if everything:
        known = by_segment or {}
        return [
            {"segment": seg, "writer": writer, "uids": compress_sorted_uids(known.get(seg) or _distinct(uids))}
            for seg, (writer, uids) in sources.items()
        ]
    ok = set(_distinct(m.get("uid") for m in delivered))
    return [
        {"segment": seg, "writer": writer, "uids": compress_uids(u for u in uids if type(u) is str and u in ok)}
        for seg, (writer, uids) in sources.items()
    ]


def _corrections(delivered: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"corrections": [{meter, account, hour, uids}]}`` for the corrections among the
    delivered records, or nothing when there are none (one membership test per record,
    in a pass the interpreter runs in C)."""
    with contextlib.suppress(TypeError):  # a record that is not a dict: the careful pass below
        if not any(map(dict.__contains__, delivered, itertools.repeat("correction"))):
            return {}
    found = [m for m in delivered if type(m) is dict and "correction" in m]
    if not found:
        return {}
    by_bucket: dict[tuple[str, str, str], list[str]] = {}
    for m in found:
        if type(m.get("uid")) is str:
            by_bucket.setdefault(bucket_of(m), []).append(m["uid"])
    rows = [{"meter": k[0], "account": k[1], "hour": k[2], "uids": sorted(set(u))} for k, u in by_bucket.items()]
    return {"corrections": rows} if rows else {}


def _distinct(uids: Iterable[Any]) -> list[str]:
    """The distinct uids, sorted. Only a pipeline without a validate processor lets a
    record through whose uid is not a string; those are left out, as they always were."""
    listed = list(uids)
    try:
        # A frame's uids come in order (a counter after a prefix): sorting them as they are
        # is one linear pass, where sorting a set's arbitrary order is a full sort.
        return list(dict.fromkeys(sorted(listed)))
    except TypeError:
        return sorted({u for u in listed if type(u) is str})


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
