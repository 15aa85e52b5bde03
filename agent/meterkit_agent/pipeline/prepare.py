"""Preparing a batch: parse each frame, take in the SDKs' control records, run the
processors. What cannot be parsed or is refused by a processor is set aside with its
reason; nothing is dropped."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from meterkit._spool import KIND_MEASUREMENT

from ..component import Processor, Rejected
from ..processors.validate import ValidateProcessor
from ..receivers.spool import Envelope
from .telemetry import AgentMetrics


@dataclass
class Prepared:
    """A batch parsed and processed, waiting for the sender to deliver and commit it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    trusted: list[bool] = field(default_factory=list)  # per record: validated by its writer as we would
    rejected: list[Rejected] = field(default_factory=list)
    broken: list[tuple[Any, str, str]] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    sources: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # segment -> (writer, uids)
    journal: list[dict[str, Any]] = field(default_factory=list)


class Preparer:
    def __init__(self, processors: list[Processor], metrics: AgentMetrics) -> None:
        self.processors = processors
        self.metrics = metrics
        self.sdk_losses: Counter[str] = Counter()
        # Frames validated by their writer under our rules and catalog skip a second check.
        # Trust needs a validate processor that runs first: later processors change records.
        first = processors[0] if processors else None
        self.validated_token = first.token if isinstance(first, ValidateProcessor) else None

    def __call__(self, batch: list[Envelope]) -> Prepared:
        p = Prepared()
        for env in batch:
            p.positions[env.source] = max(p.positions.get(env.source, 0), env.end)
            try:
                body = orjson.loads(env.payload)
            except orjson.JSONDecodeError as exc:
                p.broken.append((env.payload.decode("utf-8", "replace"), "invalid:not_json", str(exc)))
                continue
            if env.kind == KIND_MEASUREMENT:
                p.records.append(body)
                p.trusted.append(env.validated is not None and env.validated == self.validated_token)
                if isinstance(body, dict) and isinstance(body.get("uid"), str):
                    p.sources.setdefault(env.source, (env.writer, []))[1].append(body["uid"])
            else:
                self._control(body)
                if isinstance(body, dict) and body.get("type") in ("tally", "losses"):
                    p.journal.append(
                        {**body, "type": f"sdk_{body['type']}", "source": env.source, "writer": env.writer}
                    )
        self.metrics.received.add(len(p.records))
        for process in self.processors:
            if isinstance(process, ValidateProcessor):
                p.records, refused = process(p.records, p.trusted)
            else:
                p.records, refused = process(p.records)
            p.rejected.extend(refused)
        return p

    def _control(self, body: Any) -> None:
        if isinstance(body, dict) and body.get("type") == "losses":
            for e in body.get("entries", []):
                reason = str(e.get("reason"))
                count = int(e.get("count", 0))
                self.sdk_losses[reason] += count
                self.metrics.sdk_lost.add(count, {"reason": reason})
