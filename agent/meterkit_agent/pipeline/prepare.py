"""Preparing a batch: parse each frame, take in the SDKs' control records, run the
processors, and check that every record can be serialised.

One bad record costs only itself. A frame that is not JSON, a control record with a
wrong shape (:mod:`.control`), a record a processor refuses or fails on, a record the
serialiser refuses: each is set aside alone with its stage and reason, for the dead-letter
store, and the rest of the batch goes on. Nothing here may raise: a batch that could not
be prepared would leave its frames neither delivered nor dead-lettered.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from meterkit._guard import log_once
from meterkit._spool import KIND_MEASUREMENT

from ..component import Processor, Rejected
from ..processors.validate import ValidateProcessor
from ..receivers.spool import Envelope
from .control import control_problem
from .telemetry import AgentMetrics


@dataclass
class Prepared:
    """A batch parsed and processed, waiting for the sender to deliver and commit it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    trusted: list[bool] = field(default_factory=list)  # per record: validated by its writer as we would
    rejected: list[Rejected] = field(default_factory=list)
    # frames that are not measurements at all (not JSON, a quarantined control record):
    # (body, reason, detail, stage), dead-lettered but never tallied as usage
    broken: list[tuple[Any, str, str, str]] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    sources: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # segment -> (writer, uids)
    journal: list[dict[str, Any]] = field(default_factory=list)


class Preparer:
    def __init__(self, processors: list[tuple[str, Processor]], metrics: AgentMetrics) -> None:
        self.processors = processors
        self.metrics = metrics
        self.sdk_losses: Counter[str] = Counter()
        # Frames validated by their writer under our rules and catalog skip a second check.
        # Trust needs a validate processor that runs first: later processors change records.
        first = processors[0][1] if processors else None
        self.validated_token = first.token if isinstance(first, ValidateProcessor) else None

    def __call__(self, batch: list[Envelope]) -> Prepared:
        p = Prepared()
        for env in batch:
            p.positions[env.source] = max(p.positions.get(env.source, 0), env.end)
            try:
                body = orjson.loads(env.payload)
            except orjson.JSONDecodeError as exc:
                p.broken.append((env.payload.decode("utf-8", "replace"), "invalid:not_json", str(exc), "parse"))
                continue
            if env.kind == KIND_MEASUREMENT:
                p.records.append(body)
                p.trusted.append(env.validated is not None and env.validated == self.validated_token)
                if isinstance(body, dict) and isinstance(body.get("uid"), str):
                    p.sources.setdefault(env.source, (env.writer, []))[1].append(body["uid"])
            elif problem := control_problem(body):
                p.broken.append((body, "invalid:control_record", f"{env.source}: {problem}", "control"))
                self.metrics.quarantined.add(1, {"reason": "invalid:control_record"})
                log_once(
                    ("control", env.source),
                    logging.ERROR,
                    "meterkit agent: quarantined a control record from %s (writer %s): %s",
                    env.source,
                    env.writer,
                    problem,
                )
            else:
                self._control(body)
                p.journal.append({**body, "type": f"sdk_{body['type']}", "source": env.source, "writer": env.writer})
        self.metrics.received.add(len(p.records))
        trusted = p.trusted
        for stage, process in self.processors:
            p.records, refused = self._run(stage, process, p.records, trusted)
            p.rejected.extend(refused)
            trusted = [False] * len(p.records)  # only the first processor may trust a writer
        p.records, unserialisable = _serialisable(p.records)
        p.rejected.extend(unserialisable)
        return p

    @staticmethod
    def _run(
        stage: str, process: Processor, records: list[dict[str, Any]], trusted: list[bool]
    ) -> tuple[list[dict[str, Any]], list[Rejected]]:
        """Run one processor over the batch; if it fails, run it record by record so only
        the records it fails on are set aside."""

        def call(batch: list[dict[str, Any]], marks: list[bool]) -> tuple[list[dict[str, Any]], list[Rejected]]:
            if isinstance(process, ValidateProcessor):
                return process(batch, marks)
            return process(batch)

        try:
            return call(records, trusted)
        except Exception:  # a processor's bug or a record it cannot take: find which
            kept: list[dict[str, Any]] = []
            refused: list[Rejected] = []
            for i, record in enumerate(records):
                try:
                    k, r = call([record], trusted[i : i + 1])
                except Exception as exc:
                    r, k = [Rejected(record, f"{stage}_failed:{type(exc).__name__}", str(exc)[:2000], stage)], []
                kept.extend(k)
                refused.extend(r)
            return kept, refused

    def _control(self, body: dict[str, Any]) -> None:
        if body["type"] == "losses":
            for e in body["entries"]:
                reason, count = str(e["reason"]), int(e["count"])
                self.sdk_losses[reason] += count
                self.metrics.sdk_lost.add(count, {"reason": reason})


def _serialisable(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """The records every exporter can encode. The whole batch is tried at once; only when
    that fails is each record tried, so the common case costs one encode."""
    try:
        orjson.dumps(records)
    except (TypeError, orjson.JSONEncodeError):
        pass
    else:
        return records, []
    kept, refused = [], []
    for record in records:
        try:
            orjson.dumps(record)
        except (TypeError, orjson.JSONEncodeError) as exc:
            refused.append(Rejected(record, "invalid:unserialisable", str(exc), "serialise"))
        else:
            kept.append(record)
    return kept, refused
