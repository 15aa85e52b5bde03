"""The flusher: everything a measurement goes through after the hot path.

``Client.record`` (in ``_client``) only appends a tuple to the flusher's queue. The flusher
thread (the :class:`BatchWorker` a :class:`Flusher` owns) hands each batch to
:meth:`Flusher.export`: each item becomes a wire measurement (:func:`to_wire`: scope and
trace context merged, uid text assigned, validated), and the batch is written with its
tally and any new loss counts in one ``write``, or held while the sink is unavailable. A
bad measurement goes to the rejected-measurements file, counted under its reason. Strict
mode, sync durability and records made after shutdown do the same work on the caller's
thread (:meth:`Flusher.record_checked`, :meth:`Flusher.record_late`).

A module of its own so that the hot path and the public methods read on one page, and the
flusher's work and state (its thread, the sink, the batch it holds, the loss counts) on
another. Dependencies run one way: ``_client`` imports this module, never the reverse. The
layout of the queued tuple is defined here, where it is read; ``Client.record`` builds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from . import _guard
from ._batch import BatchWorker
from ._errors import MeasurementError
from ._model import CATEGORIES, UidSource, build, tally
from ._otel_context import extract, placed
from ._scope import EMPTY, SCOPED_CATEGORIES, Scope
from ._sinks import Sink, SinkUnavailable
from ._timefmt import iso_ms

if TYPE_CHECKING:
    from ._catalog import Catalog
    from ._settings import Settings

_time_ns = time.time_ns

# Field positions in the hot-path tuple.
_SEQ, _NOW, _METER, _ACCOUNT, _TS, _ETS, _UID, _SCOPE = range(8)
_FIELDS = slice(8, 16)  # who, what, where, other, metadata, measure, income, cost
_OTEL = 16  # the OpenTelemetry context at record time, or None
_SCOPED = tuple(enumerate(SCOPED_CATEGORIES))

Measurement = dict[str, Any]


class Flusher:
    """Owns the flusher thread and the sink: writes what is queued, and counts what it wrote
    and what was lost, by reason. ``trouble`` is the loss reason while the sink refuses writes.
    """

    def __init__(self, settings: Settings, sink: Sink, catalog: Catalog | None, uids: UidSource) -> None:
        self.sink = sink
        self.catalog = catalog
        self._uids = uids
        self.strict = settings.mode == "strict"
        self.sync = settings.durability == "sync"
        self.block_seconds = settings.queue_full_timeout_millis / 1000.0
        self.worker: BatchWorker[Any] = BatchWorker(
            self.export,
            name="meterkit-flusher",
            max_queue_size=settings.max_queue_size,
            max_batch_size=settings.max_batch_size,
            schedule_delay_millis=settings.flush_interval_millis,
        )
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: tuple[list[Measurement], list[Measurement]] | None = None
        self.trouble: str | None = None
        self.written = 0
        self._losses: Counter[tuple[str, str, str | None]] = Counter()
        self._losses_total: Counter[str] = Counter()

    def after_fork(self) -> None:
        """In a forked child: the parent's queue, held batch and counts are the parent's to
        write; the child's flusher starts empty, with its own segment files (and no thread
        until ``worker.start()``)."""
        self.sink.after_fork()
        self.worker.reinit()
        self._reset()

    # -- on the flusher thread -------------------------------------------------------------

    def export(self, batch: list[Any]) -> bool:
        """Called by the flusher thread only. False: the sink is unavailable, back off."""
        if self._pending is not None:
            if self.write(*self._pending) is not None:
                return False
            self._pending = None
        records = []
        for item in batch:
            try:
                records.append(to_wire(item, self.catalog, self._uids))
            except MeasurementError as exc:
                self.reject(item, exc)
        controls = self.take_controls(records)
        if (records or controls) and self.write(records, controls) is not None:
            self._pending = (records, controls)
            return False
        return True

    def write(self, records: list[Measurement], controls: list[Measurement]) -> str | None:
        """Write to the sink. Returns ``None``, or the loss reason if the sink refused."""
        try:
            self.sink.write(records, controls)
        except SinkUnavailable as exc:
            if self.trouble != exc.reason:
                self.trouble = exc.reason
                _guard.logger.error("meterkit: %s; holding measurements in memory until it can be written", exc)
            return exc.reason
        if self.trouble is not None:
            _guard.logger.warning("meterkit: spool writable again")
            self.trouble = None
        with self._lock:
            self.written += len(records)
        return None

    def take_controls(self, records: list[Measurement]) -> list[Measurement]:
        """Control records for this write: a tally of ``records`` and any new losses.

        The tally is per (meter, account, hour): count and sums of numeric fields. It is
        written in the same ``write`` as the records it counts, so the two cannot part.
        """
        controls: list[Measurement] = []
        if records:
            controls.append({"type": "tally", "entries": tally(records)})
        if self._losses:
            with self._lock:
                losses, self._losses = self._losses, Counter()
            controls.append(
                {
                    "type": "losses",
                    "at": iso_ms(_time_ns()),
                    "entries": [
                        {"reason": reason, "meter": m, "account": a, "count": n} for (reason, m, a), n in losses.items()
                    ],
                }
            )
        return controls

    # -- on the caller's thread ------------------------------------------------------------

    def record_checked(self, item: tuple[Any, ...]) -> None:
        """Strict mode and sync durability: validate (and in sync mode, write) right here."""
        try:
            wire = to_wire(item, self.catalog, self._uids)
        except MeasurementError as exc:
            if self.strict:
                raise
            self.reject(item, exc)
            return
        if self.sync and self.write([wire], self.take_controls([wire])) is None:
            return
        # Buffered strict mode, or a sync write that failed: the flusher thread takes it from here.
        if not self.worker.put(wire, self.block_seconds):
            self.lose(wire, self.trouble or "queue_full")

    def record_late(self, item: tuple[Any, ...]) -> None:
        """Recorded after shutdown (another atexit hook, say): write it straight through."""
        try:
            wire = to_wire(item, self.catalog, self._uids)
        except MeasurementError as exc:
            self.reject(item, exc)
            return
        trouble = self.write([wire], self.take_controls([wire]))
        if trouble is not None:
            self.lose(wire, trouble)
        self.sink.close()

    def shutdown(self, timeout: float) -> bool:
        """Drain within ``timeout``, count what is left as lost, close the sink. True if
        nothing was left. What is left counts in :meth:`lost` only, not in a loss record."""
        done = self.worker.shutdown(timeout)
        left = len(self.worker.queue) + (len(self._pending[0]) if self._pending else 0)
        if left:
            reason = self.trouble or "shutdown_timeout"
            _guard.logger.error(
                "meterkit: %d measurement(s) could not be spooled before shutdown (%s)",
                left,
                reason,
            )
            with self._lock:
                self._losses_total[reason] += left
        self.sink.close()
        return done and not left

    # -- losses ----------------------------------------------------------------------------

    def reject(self, item: tuple[Any, ...] | Measurement, exc: MeasurementError) -> None:
        self.reject_raw(item if isinstance(item, dict) else _raw(item), exc)

    def reject_raw(self, raw: dict[str, Any], exc: MeasurementError) -> None:
        """Count, log once per (meter, reason), and keep the measurement in ``rejected/``."""
        p = exc.problem
        meter = meter_name(p.meter or raw.get("meter"))
        account = raw.get("account")
        self._count_loss(f"rejected:{p.reason}", meter, account if isinstance(account, str) else None)
        _guard.log_once(
            ("reject", meter, p.reason),
            logging.WARNING,
            "meterkit: measurement rejected (%s); further ones for this meter and reason are counted, not logged",
            p,
        )
        entry = {
            "at": iso_ms(_time_ns()),
            "reason": p.reason,
            "message": p.message,
            "meter": meter,
            "field": p.field,
            "record": raw,
        }
        try:
            self.sink.reject(entry)
        except OSError as exc2:
            _guard.background_error("rejected-measurements file", exc2)

    def lose(self, item: tuple[Any, ...] | Measurement, reason: str) -> None:
        """Count ``item`` (a hot-path tuple or a wire measurement) as lost for ``reason``."""
        if isinstance(item, dict):
            self._count_loss(reason, item["meter"], item["account"])
            return
        scope: Scope = item[_SCOPE]
        self._count_loss(reason, item[_METER], item[_ACCOUNT] if item[_ACCOUNT] is not None else scope.account)

    def _count_loss(self, reason: str, meter: str, account: str | None) -> None:
        with self._lock:
            self._losses[(reason, meter, account)] += 1
            self._losses_total[reason] += 1

    def lost(self) -> dict[str, int]:
        """Measurements lost so far, by reason."""
        with self._lock:
            return dict(self._losses_total)


def to_wire(item: tuple[Any, ...] | Measurement, catalog: Catalog | None, uids: UidSource) -> Measurement:
    """The wire measurement for a hot-path tuple (a dict is one already). Raises
    :class:`MeasurementError` if it is not valid."""
    if isinstance(item, dict):
        return item
    seq, now, meter, account, ts, ets, uid, scope = item[:8]
    values: Any = item[_FIELDS]
    if scope is not EMPTY:
        values = list(values)
        if account is None:
            account = scope.account
        for i, category in _SCOPED:
            inherited = getattr(scope, category)
            if inherited:
                values[i] = {**inherited, **values[i]} if values[i] else inherited
    otel = item[_OTEL]
    if otel:  # an empty Context is falsy: no span, no baggage, nothing to do
        values, account = _apply_otel(otel, meter, account, values, catalog)
    if uid is None:
        uid = f"{uids.prefix}{seq & 0xFFFFFFFFFFFF:012x}"
    return build(meter, account, now, uid, values, ets=ets, catalog=catalog, now_ns=now, user_ts=ts)


def _apply_otel(ctx: Any, meter: Any, account: Any, values: Any, catalog: Catalog | None) -> tuple[Any, Any]:
    """Baggage and trace ids, below everything the caller or a scope gave."""
    baggage_account, fields = extract(ctx)
    if catalog is not None:
        known = catalog.meters.get(meter) if isinstance(meter, str) else None
        fields = placed(fields, known.field_categories if known else {})
    if not fields and baggage_account is None:
        return values, account
    values = list(values)
    for i, category in _SCOPED:
        extra = fields.get(category)
        if extra:
            values[i] = {**extra, **values[i]} if values[i] else extra
    return values, account if account is not None else baggage_account


def meter_name(meter: object) -> str:
    return meter if isinstance(meter, str) else repr(meter)


def _raw(item: tuple[Any, ...]) -> dict[str, Any]:
    """The caller's measurement as given, for the rejected-measurements file."""
    raw: dict[str, Any] = {"meter": item[_METER], "account": item[_ACCOUNT]}
    for category, values in zip(CATEGORIES, item[_FIELDS], strict=True):
        if values:
            raw[category] = values
    if item[_TS] is not None:
        raw["ts"] = item[_TS]
    if item[_UID] is not None:
        raw["uid"] = item[_UID]
    scope: Scope = item[_SCOPE]
    if scope.account and item[_ACCOUNT] is None:
        raw["account"] = scope.account
    return raw
