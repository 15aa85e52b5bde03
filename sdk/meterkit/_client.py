"""The client: turns ``record(...)`` calls into spooled measurements.

Hot path (``Client.record``): copy the caller's dicts into a tuple with a sequence number,
the time and the current scope, and append it to a bounded deque. No I/O, no lock, no
pydantic. The flusher thread (a :class:`BatchWorker`) validates, assigns the uid text,
frames and writes batches to the spool, and tallies what it wrote for reconciliation.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import _guard
from ._batch import BatchWorker
from ._catalog import Catalog, load_catalog
from ._errors import ConfigError, MeasurementError, MeterkitError, Problem
from ._model import CATEGORIES, UidSource, build, tally, validation_token
from ._otel_context import current_context_getter, extract, placed
from ._scope import EMPTY, SCOPED_CATEGORIES, Scope, current_scope
from ._settings import Settings, resolve
from ._sinks import MemorySink, Sink, SinkUnavailable, SpoolSink
from ._timefmt import iso_ms

_time_ns = time.time_ns
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()

# Field positions in the hot-path tuple.
_SEQ, _NOW, _METER, _ACCOUNT, _TS, _ETS, _UID, _SCOPE = range(8)
_FIELDS = slice(8, 16)  # who, what, where, other, metadata, measure, income, cost
_OTEL = 16  # the OpenTelemetry context at record time, or None
_SCOPED = tuple(enumerate(SCOPED_CATEGORIES))

Measurement = dict[str, Any]


class Client:
    """Records measurements into a spool directory. Most applications use the module-level
    functions (:func:`meterkit.record`, ...), which share one client made by
    :func:`meterkit.configure`; backfills and tests may make their own.

    Raises :class:`ConfigError` or :class:`CatalogError` for bad arguments; after that, in
    ``production`` mode, no method raises into the caller.
    """

    def __init__(
        self,
        catalog: str | Path | Catalog | None = None,
        spool_dir: str | Path | None = None,
        *,
        mode: str | None = None,
        durability: str | None = None,
        flush_interval_millis: int | None = None,
        max_queue_size: int | None = None,
        max_batch_size: int | None = None,
        queue_full_timeout_millis: int | None = None,
        max_segment_bytes: int | None = None,
        max_segment_age_seconds: float | None = None,
        max_spool_bytes: int | None = None,
        fsync: bool | None = None,
        shutdown_timeout_millis: int | None = None,
        otel_context: bool | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.settings: Settings = resolve(
            catalog=None if isinstance(catalog, Catalog) else catalog,
            spool_dir=spool_dir,
            mode=mode,
            durability=durability,
            flush_interval_millis=flush_interval_millis,
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            queue_full_timeout_millis=queue_full_timeout_millis,
            max_segment_bytes=max_segment_bytes,
            max_segment_age_seconds=max_segment_age_seconds,
            max_spool_bytes=max_spool_bytes,
            fsync=fsync,
            shutdown_timeout_millis=shutdown_timeout_millis,
            otel_context=otel_context,
        )
        s = self.settings
        self.catalog: Catalog | None = (
            catalog if isinstance(catalog, Catalog) else (load_catalog(s.catalog) if s.catalog else None)
        )
        self.strict = s.mode == "strict"
        self._sync = s.durability == "sync"
        self._block_seconds = s.queue_full_timeout_millis / 1000.0
        self._uids = UidSource()
        self._otel_context = current_context_getter() if s.otel_context else None
        if sink is None:
            try:
                sink = SpoolSink(
                    s.spool_dir,
                    os.urandom(4).hex(),
                    max_segment_bytes=s.max_segment_bytes,
                    max_segment_age_seconds=s.max_segment_age_seconds,
                    max_spool_bytes=s.max_spool_bytes,
                    fsync=s.fsync,
                    validated=validation_token(self.catalog),
                )
            except OSError as exc:
                raise ConfigError(f"cannot use spool directory {s.spool_dir}: {exc.strerror}") from None
        self.sink: Sink = sink
        self._worker: BatchWorker[Any] = BatchWorker(
            self._export,
            name="meterkit-flusher",
            max_queue_size=s.max_queue_size,
            max_batch_size=s.max_batch_size,
            schedule_delay_millis=s.flush_interval_millis,
        )
        self._reset_counters()
        self._closed = False
        _live_clients.add(self)
        self._worker.start()

    def _reset_counters(self) -> None:
        self._next_seq = self._uids.next
        self._checked = self.strict or self._sync
        self._queue = self._worker.queue
        self._max_queue = self._worker.max_queue_size
        self._batch_size = self._worker.max_batch_size
        self._lock = threading.Lock()
        self._pending: tuple[list[Measurement], list[Measurement]] | None = None
        self._sink_trouble: str | None = None
        self.written = 0
        self._losses: Counter[tuple[str, str, str | None]] = Counter()
        self._losses_total: Counter[str] = Counter()

    # -- the hot path ----------------------------------------------------------------------

    def record(
        self,
        meter: str,
        *,
        account: str | None = None,
        measure: Mapping[str, Any] | None = None,
        who: Mapping[str, Any] | None = None,
        what: Mapping[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        other: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        income: Mapping[str, Any] | None = None,
        cost: Mapping[str, Any] | None = None,
        ts: Any = None,
        ets: Any = None,
        uid: str | None = None,
    ) -> None:
        """Record one measurement. See :func:`meterkit.record`."""
        try:
            item = (
                self._next_seq(),
                _time_ns(),
                meter,
                account,
                ts,
                ets,
                uid,
                current_scope.get(),
                who and dict(who),
                what and dict(what),
                where and dict(where),
                other and dict(other),
                metadata and dict(metadata),
                measure and dict(measure),
                income and dict(income),
                cost and dict(cost),
                self._otel_context and self._otel_context(),
            )
            if self._checked:
                self._record_checked(item)
                return
            queue = self._queue
            if len(queue) < self._max_queue:
                queue.append(item)
                if len(queue) == self._batch_size:
                    self._worker.wake()
                return
            self._enqueue_slow(item)
        except MeasurementError:
            if self.strict:
                raise
        except Exception as exc:
            # Misuse such as measure="x" (not a mapping): name it, never raise in production.
            error = MeasurementError(Problem("bad_argument", f"record() arguments unusable: {exc}", _name(meter)))
            if self.strict:
                raise error from exc
            self._reject_raw({"meter": _name(meter), "account": repr(account)}, error)

    def _record_checked(self, item: tuple[Any, ...]) -> None:
        """Strict mode and sync durability: validate (and in sync mode, write) right here."""
        try:
            wire = self._to_wire(item)
        except MeasurementError as exc:
            if self.strict:
                raise
            self._reject(item, exc)
            return
        if self._sync and self._write([wire], self._take_controls([wire])) is None:
            return
        # Buffered strict mode, or a sync write that failed: the flusher takes it from here.
        if not self._worker.put(wire, self._block_seconds):
            self._count_loss(self._sink_trouble or "queue_full", wire["meter"], wire["account"])

    def _enqueue_slow(self, item: tuple[Any, ...]) -> None:
        if self._closed:
            # Recorded after shutdown (another atexit hook, say): write it straight through.
            self._record_late(item)
            return
        if not self._worker.put_when_room(item, self._block_seconds):
            scope: Scope = item[_SCOPE]
            account = item[_ACCOUNT] if item[_ACCOUNT] is not None else scope.account
            self._count_loss(self._sink_trouble or "queue_full", item[_METER], account)

    def _record_late(self, item: tuple[Any, ...]) -> None:
        try:
            wire = self._to_wire(item)
        except MeasurementError as exc:
            self._reject(item, exc)
            return
        trouble = self._write([wire], self._take_controls([wire]))
        if trouble is not None:
            self._count_loss(trouble, wire["meter"], wire["account"])
        self.sink.close()

    # -- the flusher -----------------------------------------------------------------------

    def _to_wire(self, item: tuple[Any, ...] | Measurement) -> Measurement:
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
            values, account = self._apply_otel(otel, meter, account, values)
        if uid is None:
            uid = f"{self._uids.prefix}{seq & 0xFFFFFFFFFFFF:012x}"
        return build(meter, account, now, uid, values, ets=ets, catalog=self.catalog, now_ns=now, user_ts=ts)

    def _apply_otel(self, ctx: Any, meter: Any, account: Any, values: Any) -> tuple[Any, Any]:
        """Baggage and trace ids, below everything the caller or a scope gave."""
        baggage_account, fields = extract(ctx)
        if self.catalog is not None:
            known = self.catalog.meters.get(meter) if isinstance(meter, str) else None
            fields = placed(fields, known.field_categories if known else {})
        if not fields and baggage_account is None:
            return values, account
        values = list(values)
        for i, category in _SCOPED:
            extra = fields.get(category)
            if extra:
                values[i] = {**extra, **values[i]} if values[i] else extra
        return values, account if account is not None else baggage_account

    def _export(self, batch: list[Any]) -> bool:
        """Called by the flusher thread only. False: the sink is unavailable, back off."""
        if self._pending is not None:
            if self._write(*self._pending) is not None:
                return False
            self._pending = None
        records = []
        for item in batch:
            try:
                records.append(self._to_wire(item))
            except MeasurementError as exc:
                self._reject(item, exc)
        controls = self._take_controls(records)
        if (records or controls) and self._write(records, controls) is not None:
            self._pending = (records, controls)
            return False
        return True

    def _write(self, records: list[Measurement], controls: list[Measurement]) -> str | None:
        """Write to the sink. Returns ``None``, or the loss reason if the sink refused."""
        try:
            self.sink.write(records, controls)
        except SinkUnavailable as exc:
            if self._sink_trouble != exc.reason:
                self._sink_trouble = exc.reason
                _guard.logger.error("meterkit: %s; holding measurements in memory until it can be written", exc)
            return exc.reason
        if self._sink_trouble is not None:
            _guard.logger.warning("meterkit: spool writable again")
            self._sink_trouble = None
        with self._lock:
            self.written += len(records)
        return None

    def _take_controls(self, records: list[Measurement]) -> list[Measurement]:
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

    def _reject(self, item: tuple[Any, ...] | Measurement, exc: MeasurementError) -> None:
        self._reject_raw(item if isinstance(item, dict) else _raw(item), exc)

    def _reject_raw(self, raw: dict[str, Any], exc: MeasurementError) -> None:
        """Count, log once per (meter, reason), and keep the measurement in ``rejected/``."""
        p = exc.problem
        meter = _name(p.meter or raw.get("meter"))
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

    def _count_loss(self, reason: str, meter: str, account: str | None) -> None:
        with self._lock:
            self._losses[(reason, meter, account)] += 1
            self._losses_total[reason] += 1

    # -- backfill --------------------------------------------------------------------------

    def submit_batch(
        self, rows: Iterable[Mapping[str, Any] | tuple[int, Any]], *, key_field: str | None = None
    ) -> BatchResult:
        """Validate and spool historical measurements (backfill). Never stops at a bad row.

        ``rows`` are mappings in wire shape (``meter``, ``account``, ``ts``, ``measure``, ...),
        or ``(line, mapping)`` pairs so problems name the line of a source file. Each row
        needs its own ``ts`` (historical times are fine). Its uid is ``uid`` if given, else
        derived from the ``key_field`` value, else from its content: re-running the same
        backfill can never double count. Returns a :class:`BatchResult` listing every bad
        row with its line, meter, field and reason.
        """
        from ._backfill import submit_batch

        return submit_batch(self, rows, key_field=key_field)

    def _write_now(self, records: list[Measurement]) -> None:
        """Backfill: write validated records through the same path as the flusher."""
        for record in records:
            if not self._worker.put(record, max(self._block_seconds, 30.0)):
                raise MeterkitError("the spool is not accepting measurements; try again later")

    # -- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts since this client started: written, queued, and lost by reason."""
        with self._lock:
            losses = dict(self._losses_total)
        return {"written": self.written, "queued": len(self._worker.queue), "lost": losses}

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Write everything recorded so far to the spool. True if done within ``timeout``."""
        try:
            return self._worker.flush(timeout)
        except Exception as exc:
            _guard.background_error("flush", exc)
            return False

    def shutdown(self, timeout: float | None = None) -> bool:
        """Flush, seal the current segment and stop. Idempotent. True if nothing was left."""
        if self._closed:
            return True
        self._closed = True
        self._max_queue = 0  # from now on record() takes the slow path, which writes directly
        if timeout is None:
            timeout = self.settings.shutdown_timeout_millis / 1000.0
        try:
            done = self._worker.shutdown(timeout)
            left = len(self._worker.queue) + (len(self._pending[0]) if self._pending else 0)
            if left:
                reason = self._sink_trouble or "shutdown_timeout"
                _guard.logger.error(
                    "meterkit: %d measurement(s) could not be spooled before shutdown (%s)",
                    left,
                    reason,
                )
                with self._lock:
                    self._losses_total[reason] += left
            self.sink.close()
            return done and not left
        except Exception as exc:
            _guard.background_error("shutdown", exc)
            return False
        finally:
            _live_clients.discard(self)

    def _after_fork_in_child(self) -> None:
        # The parent's queue, pending batch and counts are the parent's to write; the child
        # starts empty, with its own uid prefix, segment files and flusher thread.
        self._uids.reseed()
        self.sink.after_fork()
        self._worker.reinit()
        self._reset_counters()
        if not self._closed:
            self._worker.start()


class BatchResult:
    """What :meth:`Client.submit_batch` did: how many rows were accepted, which were not."""

    def __init__(self, accepted: int, problems: list[Problem]) -> None:
        self.accepted = accepted
        self.problems = problems

    @property
    def rejected(self) -> int:
        return len(self.problems)

    def __repr__(self) -> str:
        return f"BatchResult(accepted={self.accepted}, rejected={self.rejected})"


def _name(meter: object) -> str:
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


def _after_fork_in_child() -> None:
    _guard.reset_after_fork()
    for client in list(_live_clients):
        client._after_fork_in_child()


def _at_exit() -> None:
    for client in list(_live_clients):
        client.shutdown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)

__all__ = ["BatchResult", "Client", "MemorySink"]
