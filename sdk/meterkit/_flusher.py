"""The flusher: everything a measurement goes through after the hot path.

``Client.record`` (in ``_client``) only appends an item (``_rows``) to the flusher's queue.
The flusher thread (the :class:`BatchWorker` a :class:`Flusher` owns) hands each batch to
:meth:`Flusher.export`, which makes one write of it:

- **Production mode, into the spool:** the batch's rows become one batch frame
  (``_framer``, ``_frames``): the cheap checks, one ``orjson.dumps``, and a tally computed
  without a Python loop per row. The agent validates them against the catalog.
- **Otherwise** (a sink that keeps wire measurements, such as ``meterkit.testing``'s):
  each item becomes a validated wire measurement (``_rows.to_wire``).

Either way the write carries the batch's tally and any loss counts not yet written, or
is held while the sink is unavailable. A measurement refused here goes to the
rejected-measurements file, counted under its reason. Strict mode, sync durability and
records made after shutdown validate on the caller's thread instead
(:meth:`Flusher.record_checked`, :meth:`Flusher.record_late`). Every path applies the
catalog's privacy rules (``_privacy``) before a value is written, the rejected-measurements
file and corrections included.

Loss counts leave memory only when a write that carries them succeeds. While the spool
refuses writes they go first, on their own, at every retry: they are small, and the sink
keeps room for them that measurements may not use (``_sinks``), so a full disk still
records what it cost. Dependencies run one way: ``_client`` imports this module.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _guard
from ._batch import BatchWorker
from ._directsink import chosen_sink
from ._errors import MeasurementError, Problem
from ._framer import Write, frames_write, private_item, tally_controls, wire_write
from ._frames import ROW_SIZE
from ._losses import Losses, losses_records, meter_name
from ._model import UidSource, tally
from ._privacy import Privacy
from ._rows import PADDING, meter_and_account, raw, to_wire
from ._sinks import Sink, SinkUnavailable
from ._timefmt import iso_ms

if TYPE_CHECKING:
    from ._catalog import Catalog
    from ._settings import Settings

_time_ns = time.time_ns
Measurement = dict[str, Any]


class Flusher:
    """Owns the flusher thread and the sink: writes what is queued, and counts what it wrote
    and what was lost, by reason. ``trouble`` is the loss reason while the sink refuses writes.
    """

    def __init__(self, settings: Settings, sink: Sink, catalog: Catalog | None, uids: UidSource) -> None:
        sink = chosen_sink(settings, sink, lambda *lost: self.losses.count(*lost))  # ``sink="direct"``
        self.sink = sink
        self.catalog = catalog
        self.privacy = Privacy.for_catalog(catalog)  # setup: ConfigError for a key it lacks
        self._uids = uids
        self.strict = settings.mode == "strict"
        self.sync = settings.durability == "sync"
        self.block_seconds = settings.queue_full_timeout_millis / 1000.0
        # Batch frames: production mode into a sink that writes them (the spool).
        self._write_batch = None if self.strict or self.sync else getattr(sink, "write_batch", None)
        self.worker: BatchWorker[Any] = BatchWorker(
            self.export,
            name="meterkit-flusher",
            max_queue_size=settings.max_queue_size,
            max_batch_size=settings.max_batch_size,
            schedule_delay_millis=settings.flush_interval_millis,
            stride=ROW_SIZE,  # a measurement's values lie flat in the queue (``_rows``)
        )
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: Write | None = None
        self.trouble: str | None = None
        self.written = 0
        self.losses = Losses()
        if self.privacy is not None:
            self.privacy.counts.clear()

    def after_fork(self) -> None:
        """In a forked child: the parent's queue, held batch and counts are the parent's to
        write; the child's flusher starts empty, with its own segment files (and no thread
        until ``worker.start()``)."""
        self.sink.after_fork()
        self.worker.reinit()
        self._reset()

    def stats(self) -> dict[str, Any]:
        """``Client.stats``. ``held``: taken from the queue for a write the sink refused, kept
        until it takes them. ``lost_unreported``: lost, not yet in a loss record in the spool.
        ``spool_refuses``: why the sink refuses writes, or ``None``. ``privacy``: values changed
        by the catalog's privacy rules, by what (``redacted:email``, ...). Once the flusher is
        idle, ``written + queued + held + sum(lost)`` is every measurement recorded."""
        pending = self._pending
        return {
            "written": self.written,
            "queued": self.worker.queued(),
            "held": pending.count if pending else 0,
            "lost": self.losses.totals(),
            "lost_unreported": self.losses.unwritten(),
            "spool_refuses": self.trouble,
            "privacy": self.privacy.stats() if self.privacy is not None else {},
        }

    # -- on the flusher thread -------------------------------------------------------------

    def export(self, batch: list[Any]) -> bool:
        """Called by the flusher thread only. False: the sink is unavailable, back off."""
        if self._pending is not None:
            # The sink refused the last write. Loss counts go first, on their own: they fit
            # where the batch does not (the sink keeps room for them).
            if self.losses and self.write(Write()) is not None:
                return False
            if self.write(self._pending) is not None:
                return False
            self._pending = None
        try:
            w = self._prepare(batch) if batch else Write()
            if (w.count or self.losses) and self.write(w) is not None:
                if w.count:
                    self._pending = w
                return False
        except Exception as exc:  # ours, or a value past every check: counted, never dropped unseen
            _guard.background_error("flusher", exc)
            for i in range(0, len(batch), ROW_SIZE):
                self.lose(batch[i : i + ROW_SIZE], "sdk_error")
        return True

    def _prepare(self, batch: list[Any]) -> Write:
        """One write for a batch of queued rows (``ROW_SIZE`` slots each)."""
        make = wire_write if self._write_batch is None else frames_write
        return make(batch, self.catalog, self._uids, self.reject, self.privacy)

    def write(self, w: Write) -> str | None:
        """Write ``w`` with the loss counts not yet written. Returns ``None``, or the loss
        reason if the sink refused; the loss counts then stay for the next write."""
        _private(self.privacy, w)
        taken = self.losses.take()
        controls = [*w.tallies, *losses_records(taken)] if taken else w.tallies
        done, lost = False, None
        try:
            if w.payloads:
                assert self._write_batch is not None
                self._write_batch(w.payloads, w.records, controls)
            else:
                lost = self.sink.write(w.records, controls)  # the direct sink says how many it lost
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
            self.written += w.count - (lost or 0)  # what a direct sink lost is counted there
        return None

    # -- on the caller's thread ------------------------------------------------------------

    def record_checked(self, item: tuple[Any, ...]) -> None:
        """Strict mode and sync durability: validate (and in sync mode, write) right here."""
        try:
            wire = _to_wire(self, item)
        except MeasurementError as exc:
            if self.strict:
                raise
            self.reject(item, exc)
            return
        if self.sync and self.write(_one(wire)) is None:
            return
        # Buffered strict mode, or a sync write that failed: the flusher thread takes it from here.
        if not self.worker.put((wire, *PADDING), self.block_seconds):
            self.lose(wire, self.trouble or "queue_full")

    def put_validated(self, wire: Measurement, block_seconds: float) -> bool:
        """Queue a validated wire measurement (backfill)."""
        return self.worker.put((wire, *PADDING), block_seconds)

    def record_late(self, item: tuple[Any, ...]) -> None:
        """Recorded after shutdown (another atexit hook, say): write it straight through."""
        try:
            wire = _to_wire(self, item)
        except MeasurementError as exc:
            self.reject(item, exc)
            return
        trouble = self.write(_one(wire))
        if trouble is not None:
            self.lose(wire, trouble)
            self.write(Write())  # the loss record, into the room the sink keeps for it
        self.sink.close()

    def shutdown(self, timeout: float) -> bool:
        """Drain within ``timeout``; count what is left as lost and write the loss counts
        (the sink keeps room for them); close the sink. True if nothing was left."""
        done = self.worker.shutdown(timeout)
        flat = self.worker.take(len(self.worker.queue))
        left = [flat[i : i + ROW_SIZE] for i in range(0, len(flat), ROW_SIZE)]
        pending, self._pending = self._pending, None
        reason = self.trouble or "shutdown_timeout"
        if left or pending:
            held = pending.count if pending else 0
            _guard.logger.error(
                "meterkit: %d measurement(s) not spooled before shutdown (%s)", len(left) + held, reason
            )
        for item in left:
            self.lose(item, reason)
        if pending:
            for control in pending.tallies:  # what it held, by meter and account
                for entry in control["entries"]:
                    self.losses.count(reason, entry["meter"], entry["account"], entry["count"])
        if self.losses and self.write(Write()) is not None:
            _guard.logger.error(
                "meterkit: the spool cannot take the loss counts (%s); %d lost measurement(s) are in stats() only",
                self.trouble,
                self.losses.unwritten(),
            )
        self.sink.close()
        return done and not left and not pending

    # -- losses ----------------------------------------------------------------------------

    def reject(self, item: Any, exc: MeasurementError) -> None:
        self.reject_raw(raw(item, self.catalog), exc)

    def reject_raw(self, record: dict[str, Any], exc: MeasurementError) -> None:
        """Count, log once per (meter, reason), and keep the measurement in ``rejected/``."""
        record = self.privacy.scrub(record) if self.privacy is not None else record  # as it may be written
        p = exc.problem
        meter = meter_name(p.meter or record.get("meter"))
        self.losses.count(f"rejected:{p.reason}", meter, record.get("account"))
        _guard.log_once(
            ("reject", meter, p.reason),
            logging.WARNING,
            "meterkit: measurement rejected (%s); further ones for this meter and reason are counted, not logged",
            p,
        )
        try:
            self.sink.reject(_rejected_entry(p, meter, record))
        except Exception as exc2:  # a full disk, or a value no encoder takes: counted above
            _guard.background_error("rejected-measurements file", exc2)

    def lose(self, item: Any, reason: str) -> None:
        """Count ``item`` (a queued row or a wire measurement) as lost for ``reason``."""
        self.losses.count(reason, *meter_and_account(item))


def _rejected_entry(p: Problem, meter: str, record: dict[str, Any]) -> dict[str, Any]:
    """A line of the rejected-measurements file."""
    at = iso_ms(_time_ns())
    return {"at": at, "reason": p.reason, "message": p.message, "meter": meter, "field": p.field, "record": record}


def _to_wire(f: Flusher, item: tuple[Any, ...]) -> Measurement:
    """``item`` validated on the caller's thread, the privacy rules applied before."""
    return to_wire(private_item(item, f.privacy, f.catalog), f.catalog, f._uids.format(f._uids.next()))


def _private(privacy: Privacy | None, w: Write) -> None:
    """Apply the privacy rules to records this flusher did not make (corrections), once,
    leniently: a value the guard would refuse is redacted, so no correction is lost."""
    if not w.private and w.records and privacy is not None:
        w.records = [privacy.wire(r, lenient=True) for r in w.records]
    w.private = True


def _one(wire: Measurement) -> Write:
    return Write([], [wire], tally_controls(tally([wire])), 1, private=True)
