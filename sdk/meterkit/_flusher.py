"""The flusher: everything a measurement goes through after the hot path.

``Client.record`` (in ``_client``) only appends a tuple to the flusher's queue. The flusher
thread (the :class:`BatchWorker` a :class:`Flusher` owns) hands each batch to
:meth:`Flusher.export`: each item becomes a wire measurement (:func:`to_wire`: the fields
it inherits from ``meterkit.context`` and Baggage merged below the caller's own, uid text
assigned, validated), and the batch is written with its tally and any loss counts not yet
written in one ``write``, or held while the sink is unavailable. A bad measurement goes to
the rejected-measurements file, counted under its reason. Strict mode, sync durability and
records made after shutdown do the same work on the caller's thread
(:meth:`Flusher.record_checked`, :meth:`Flusher.record_late`).

Loss counts leave memory only when a write that carries them succeeds. While the spool
refuses writes they go first, on their own, at every retry: they are small, and the sink
keeps room for them that measurements may not use (``_sinks``), so a full disk still
records what it cost.

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
from collections.abc import Mapping
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
_INDEX = {category: i for i, category in enumerate(SCOPED_CATEGORIES)}  # in the tuple's fields

Measurement = dict[str, Any]
LossKey = tuple[str, str, "str | None"]  # reason, meter, account


class Losses:
    """Measurements lost, by (reason, meter, account): all of them since start, and those
    not yet in a loss record in the spool. Any thread may count; the flusher takes the
    unwritten ones for a write and gives them back if the write fails."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unwritten: Counter[LossKey] = Counter()
        self._total: Counter[str] = Counter()

    def count(self, reason: str, meter: object, account: object, n: int = 1) -> None:
        key = (reason, meter_name(meter), account if isinstance(account, str) else None)
        with self._lock:
            self._unwritten[key] += n
            self._total[reason] += n

    def __bool__(self) -> bool:
        """Whether some are not yet written (a lock-free peek, for the flusher's fast path)."""
        return bool(self._unwritten)

    def take(self) -> Counter[LossKey]:
        if not self._unwritten:
            return Counter()
        with self._lock:
            taken, self._unwritten = self._unwritten, Counter()
        return taken

    def give_back(self, taken: Counter[LossKey]) -> None:
        with self._lock:
            self._unwritten.update(taken)

    def unwritten(self) -> int:
        with self._lock:
            return sum(self._unwritten.values())

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._total)


def losses_record(taken: Counter[LossKey]) -> Measurement:
    """The control record for loss counts (``docs/spool-format.md``)."""
    return {
        "type": "losses",
        "at": iso_ms(_time_ns()),
        "entries": [{"reason": r, "meter": m, "account": a, "count": n} for (r, m, a), n in taken.items()],
    }


def tally_controls(records: list[Measurement]) -> list[Measurement]:
    """The tally control record for ``records``, written in the same ``write`` as they are,
    so the two cannot part: per (meter, account, hour), count and sums of numeric fields."""
    return [{"type": "tally", "entries": tally(records)}] if records else []


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
        self.losses = Losses()

    def after_fork(self) -> None:
        """In a forked child: the parent's queue, held batch and counts are the parent's to
        write; the child's flusher starts empty, with its own segment files (and no thread
        until ``worker.start()``)."""
        self.sink.after_fork()
        self.worker.reinit()
        self._reset()

    def stats(self) -> dict[str, Any]:
        """``Client.stats``. ``held``: measurements taken from the queue for a write the sink
        refused, kept in memory until it takes them. ``lost_unreported``: lost measurements
        not yet in a loss record in the spool. ``spool_refuses``: why the sink refuses writes,
        or ``None``. Once the flusher is idle, ``written + queued + held + sum(lost)`` is every
        measurement recorded."""
        pending = self._pending
        return {
            "written": self.written,
            "queued": len(self.worker.queue),
            "held": len(pending[0]) if pending else 0,
            "lost": self.losses.totals(),
            "lost_unreported": self.losses.unwritten(),
            "spool_refuses": self.trouble,
        }

    # -- on the flusher thread -------------------------------------------------------------

    def export(self, batch: list[Any]) -> bool:
        """Called by the flusher thread only. False: the sink is unavailable, back off."""
        if self._pending is not None:
            # The sink refused the last write. Loss counts go first, on their own: they fit
            # where the batch does not (the sink keeps room for them).
            if self.losses and self.write([], []) is not None:
                return False
            if self.write(*self._pending) is not None:
                return False
            self._pending = None
        records = []
        for item in batch:
            try:
                records.append(to_wire(item, self.catalog, self._uids))
            except MeasurementError as exc:
                self.reject(item, exc)
        tallies = tally_controls(records)
        if (records or self.losses) and self.write(records, tallies) is not None:
            if records:
                self._pending = (records, tallies)
            return False
        return True

    def write(self, records: list[Measurement], controls: list[Measurement]) -> str | None:
        """Write ``records`` and their tally with the loss counts not yet written. Returns
        ``None``, or the loss reason if the sink refused; the loss counts then stay for the
        next write."""
        taken = self.losses.take()
        if taken:
            controls = [*controls, losses_record(taken)]
        done = False
        try:
            self.sink.write(records, controls)
            done = True
        except SinkUnavailable as exc:
            if not exc.written:
                if self.trouble != exc.reason:
                    self.trouble = exc.reason
                    _guard.logger.error("meterkit: %s; holding measurements in memory until it can be written", exc)
                return exc.reason
            # A failed fsync: the frames are in the spool, and writing them again would
            # duplicate them. They are as safe as without fsync; say so, once.
            done = True
            _guard.log_once(("not durable", exc.reason), logging.ERROR, "meterkit: %s", exc)
        finally:
            if taken and not done:
                self.losses.give_back(taken)
        if self.trouble is not None:
            _guard.logger.warning("meterkit: spool writable again")
            self.trouble = None
        with self._lock:
            self.written += len(records)
        return None

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
        if self.sync and self.write([wire], tally_controls([wire])) is None:
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
        trouble = self.write([wire], tally_controls([wire]))
        if trouble is not None:
            self.lose(wire, trouble)
            self.write([], [])  # the loss record, into the room the sink keeps for it
        self.sink.close()

    def shutdown(self, timeout: float) -> bool:
        """Drain within ``timeout``; count what is left as lost and write the loss counts
        (the sink keeps room for them); close the sink. True if nothing was left."""
        done = self.worker.shutdown(timeout)
        left: list[Any] = []
        queue = self.worker.queue
        while queue:
            try:
                left.append(queue.popleft())
            except IndexError:  # the flusher thread took it first
                break
        pending, self._pending = self._pending, None
        if pending:
            left.extend(pending[0])
        if left:
            reason = self.trouble or "shutdown_timeout"
            _guard.logger.error("meterkit: %d measurement(s) not spooled before shutdown (%s)", len(left), reason)
            for item in left:
                self.lose(item, reason)
        if self.losses and self.write([], []) is not None:
            _guard.logger.error(
                "meterkit: the spool cannot take the loss counts (%s); %d lost measurement(s) are in stats() only",
                self.trouble,
                self.losses.unwritten(),
            )
        self.sink.close()
        return done and not left

    # -- losses ----------------------------------------------------------------------------

    def reject(self, item: tuple[Any, ...] | Measurement, exc: MeasurementError) -> None:
        self.reject_raw(item if isinstance(item, dict) else _raw(item, self.catalog), exc)

    def reject_raw(self, raw: dict[str, Any], exc: MeasurementError) -> None:
        """Count, log once per (meter, reason), and keep the measurement in ``rejected/``."""
        p = exc.problem
        meter = meter_name(p.meter or raw.get("meter"))
        self.losses.count(f"rejected:{p.reason}", meter, raw.get("account"))
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
            self.losses.count(reason, item["meter"], item["account"])
            return
        scope: Scope = item[_SCOPE]
        self.losses.count(reason, item[_METER], item[_ACCOUNT] if item[_ACCOUNT] is not None else scope.account)


def to_wire(item: tuple[Any, ...] | Measurement, catalog: Catalog | None, uids: UidSource) -> Measurement:
    """The wire measurement for a hot-path tuple (a dict is one already). Raises
    :class:`MeasurementError` if it is not valid."""
    if isinstance(item, dict):
        return item
    seq, now, meter, account, ts, ets, uid, scope = item[:8]
    values: Any = item[_FIELDS]
    otel = item[_OTEL]
    if scope is not EMPTY or otel:  # an empty OTel Context is falsy: no span, no baggage
        account, values = _inherit(meter, account, values, scope, otel, catalog)
    if uid is None:
        uid = f"{uids.prefix}{seq & 0xFFFFFFFFFFFF:012x}"
    return build(meter, account, now, uid, values, ets=ets, catalog=catalog, now_ns=now, user_ts=ts)


def _inherit(
    meter: Any, account: Any, values: Any, scope: Scope, otel: Any, catalog: Catalog | None
) -> tuple[Any, Any]:
    """Account and fields from ``meterkit.context`` (the scope) and then Baggage, below what
    the caller passed. With a catalog, an inherited field fills only a meter that declares
    it, in the category the catalog gives it; the others are left out, not refused. What
    the caller passed is not filtered: ``build`` validates it, so a field the meter lacks
    stays an error there. The hot path captured the scope and the OTel context in the
    tuple; this is the flusher's work."""
    declared: Mapping[str, str] | None = None
    if catalog is not None:
        known = catalog.meters.get(meter) if isinstance(meter, str) else None
        declared = known.field_categories if known is not None else {}
    values = list(values)
    if scope is not EMPTY:  # first: a field the scope sets is not overwritten by Baggage
        if account is None:
            account = scope.account
        for category in SCOPED_CATEGORIES:
            inherited = getattr(scope, category)
            if inherited:
                _fill(values, category, inherited, declared)
    if otel:
        baggage_account, fields = extract(otel)
        if account is None:
            account = baggage_account
        for category, inherited in fields.items():
            _fill(values, category, inherited, declared)
    return account, values


def _fill(values: list[Any], category: str, inherited: Mapping[str, Any], declared: Mapping[str, str] | None) -> None:
    """Merge one category of inherited fields below what ``values`` holds already."""
    if declared is not None:
        for code in inherited:
            if declared.get(code) != category:
                # Not all declared here: keep the declared ones, each in its declared category.
                for where, fields in placed({category: inherited}, declared).items():
                    _fill(values, where, fields, None)
                return
    i = _INDEX[category]
    values[i] = {**inherited, **values[i]} if values[i] else inherited


def meter_name(meter: object) -> str:
    return meter if isinstance(meter, str) else repr(meter)


def _raw(item: tuple[Any, ...], catalog: Catalog | None) -> dict[str, Any]:
    """The measurement as it was validated, for the rejected-measurements file: the
    caller's fields with those it inherited from ``meterkit.context`` and Baggage, so the
    field named as the reason is in it."""
    account, values = item[_ACCOUNT], item[_FIELDS]
    if item[_SCOPE] is not EMPTY or item[_OTEL]:
        account, values = _inherit(item[_METER], account, values, item[_SCOPE], item[_OTEL], catalog)
    raw: dict[str, Any] = {"meter": item[_METER], "account": account}
    for category, given in zip(CATEGORIES, values, strict=True):
        if given:
            raw[category] = given
    if item[_TS] is not None:
        raw["ts"] = item[_TS]
    if item[_UID] is not None:
        raw["uid"] = item[_UID]
    return raw
