"""The client: turns ``record(...)`` calls into spooled measurements.

Hot path (``Client.record``): copy the caller's dicts into a tuple with the time, and
append it to a bounded deque. No I/O, no lock, no validation. What needs more (a caller's
ts, ets or uid, fields inherited from ``meterkit.context`` or Baggage) is queued as a
``_rows.Rare`` item for the flusher to finish. The flusher thread (owned by a
:class:`Flusher`, ``_flusher.py``) frames and writes batches to the spool and tallies what
it wrote for reconciliation; in production mode the agent validates them against the
catalog, in strict mode (and sync durability) ``record`` validates on the caller's thread.
This module keeps the hot path, the public methods and the fork and exit hooks; the
flusher, its sink and its loss counts live in ``_flusher``.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from . import _backfill, _guard, _permissions
from ._backfill import BatchResult, Rows
from ._catalog import Catalog, load_catalog
from ._errors import ConfigError, MeasurementError, MeterkitError, Problem
from ._flusher import Flusher, Measurement
from ._framer import Write, tally_controls
from ._losses import meter_name, safe_repr
from ._model import UidSource, tally, validation_token
from ._otel_context import current_context_getter
from ._rows import Rare
from ._scope import EMPTY, current_scope
from ._settings import Settings, resolve
from ._sinks import MemorySink, Sink, SpoolSink

_time_ns = time.time_ns
_current_scope = current_scope.get
#: Stands in for OpenTelemetry's context getter when it is off: never set, so always None.
_no_context: ContextVar[None] = ContextVar("meterkit_no_otel_context", default=None)
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


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
        spool_shared_group: str | None = None,
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
        sink: Sink | str | None = None,
        direct_url: str | None = None,
        direct_token_file: str | None = None,
    ) -> None:
        # Every other argument is a setting (``_settings``), and so is a ``sink`` naming one.
        given = {k: v for k, v in locals().items() if k not in ("self", "catalog", "sink")}
        given["sink"] = sink if isinstance(sink, str) else None
        self.settings: Settings = resolve(catalog=None if isinstance(catalog, Catalog) else catalog, **given)
        s = self.settings
        self.catalog: Catalog | None = (
            catalog if isinstance(catalog, Catalog) else (load_catalog(s.catalog) if s.catalog else None)
        )
        self.strict = s.mode == "strict"
        self._checked = self.strict or s.durability == "sync"  # validate on the caller's thread
        self._block_seconds = s.queue_full_timeout_millis / 1000.0
        self._uids = UidSource()
        self._otel_context = (current_context_getter() if s.otel_context else None) or _no_context.get
        # Production mode with buffered writes: the hot path queues rows for the flusher.
        self._plain = not self._checked
        self.sink: Sink = _spool_sink(s, self.catalog) if sink is None or isinstance(sink, str) else sink
        self._flusher = Flusher(s, self.sink, self.catalog, self._uids)
        self._worker = self._flusher.worker
        self._bind_hot_path()
        self._closed = False
        _live_clients.add(self)
        self._worker.start()

    def _bind_hot_path(self) -> None:
        """What ``record`` reads, bound once: at construction, and again in a forked child."""
        self._record_checked = self._flusher.record_checked
        self._queue = self._worker.queue
        self._max_slots = self._worker.max_queue_slots
        self._wake_slots = self._worker.max_batch_slots

    @property
    def written(self) -> int:
        """Measurements written to the sink since this client started (or its process forked)."""
        return self._flusher.written

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
        self._record(meter, account, measure, who, what, where, other, metadata, income, cost, ts, ets, uid)

    def _record(
        self,
        meter: Any,
        account: Any,
        measure: Any,
        who: Any,
        what: Any,
        where: Any,
        other: Any,
        metadata: Any,
        income: Any,
        cost: Any,
        ts: Any,
        ets: Any,
        uid: Any,
    ) -> None:
        """``record``, positional (cheaper to pass on). Copies the caller's dicts into a row
        (``_rows``): its head is the time, or a ``Rare`` for the flusher to finish (a caller's
        time or uid, ``meterkit.context``, an OTel span or Baggage); lays it flat in the queue."""
        try:
            scope = _current_scope()
            otel = self._otel_context()
            row = (
                _time_ns()
                if ts is ets is uid is None and scope is EMPTY and not otel
                else Rare(_time_ns(), ts, ets, uid, scope, otel),
                meter,
                account,
                dict(who) if who else None,
                dict(what) if what else None,
                dict(where) if where else None,
                dict(other) if other else None,
                dict(metadata) if metadata else None,
                dict(measure) if measure else None,
                dict(income) if income else None,
                dict(cost) if cost else None,
            )
            if self._plain:
                queue = self._queue
                if len(queue) < self._max_slots:
                    queue.extend(row)  # one C call: no other thread's slots land in between
                    if len(queue) == self._wake_slots:
                        self._worker.wake()
                    return
                self._enqueue_slow(row)
                return
            self._record_checked(row)
        except MeasurementError:
            if self.strict:
                raise
        except Exception as exc:
            # Misuse such as measure="x" (not a mapping): name it, never raise in production.
            _misused(self, "record() arguments", meter, account, exc)

    def _enqueue_slow(self, item: tuple[Any, ...]) -> None:
        if self._closed:
            # Recorded after shutdown (another atexit hook, say): write it straight through.
            self._flusher.record_late(item)
            return
        if not self._worker.put_when_room(item, self._block_seconds):
            self._flusher.lose(item, self._flusher.trouble or "queue_full")

    # -- backfill --------------------------------------------------------------------------

    def submit_batch(self, rows: Rows, *, key_field: str | None = None, batch: str | None = None) -> BatchResult:
        """Validate and spool historical measurements (backfill). Never stops at a bad row.

        ``rows`` are mappings in wire shape (``meter``, ``account``, ``ts``, ``measure``, ...),
        or ``(line, mapping)`` pairs so problems name the line of a source file. Each row
        needs its own ``ts`` (historical times are fine). Its uid is ``uid`` if given, else
        derived from the ``key_field`` value, else from its content: re-running the same
        backfill can never double count. Returns a :class:`BatchResult` listing every bad
        row with its line, meter, field and reason. ``batch``, a backfill's id (named like an
        account; re-runs must reuse it), is stamped on every measurement so that ``meterkit
        backfill revert`` can reverse them all; a bad one raises :class:`MeasurementError`.
        """
        return _backfill.submit_batch(self, rows, key_field=key_field, batch=batch)

    def _write_now(self, records: list[Measurement]) -> None:
        """Backfill: write validated records through the same path as the flusher."""
        for record in records:
            if not self._flusher.put_validated(record, max(self._block_seconds, 30.0)):
                raise MeterkitError("the spool is not accepting measurements; try again later")

    # -- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts since this client started (or its process forked): ``written``, ``queued``,
        ``held``, ``lost`` by reason, ``lost_unreported``, ``spool_refuses`` (see the README)."""
        return self._flusher.stats()

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
        self._max_slots = 0  # from now on record() takes the slow path, which writes directly
        if timeout is None:
            timeout = self.settings.shutdown_timeout_millis / 1000.0
        try:
            return self._flusher.shutdown(timeout)
        except Exception as exc:
            _guard.background_error("shutdown", exc)
            return False
        finally:
            _live_clients.discard(self)

    def _after_fork_in_child(self) -> None:
        # The child starts empty, with its own uid prefix, segment files and flusher thread.
        self._uids.reseed()
        self._flusher.after_fork()
        self._bind_hot_path()
        if not self._closed:
            self._worker.start()


def record_owned(client: Client, meter: str, account: Any, fields: tuple[Any, ...]) -> None:
    """What ``meterkit.meter`` records: ``fields`` are the eight categories in row order,
    dicts the block owns (or the meter's own, which nothing changes), so not copied again.
    ``Client._record`` without the copies; here so the class reads on one page."""
    try:
        scope = _current_scope()
        otel = client._otel_context()
        head = _time_ns() if scope is EMPTY and not otel else Rare(_time_ns(), None, None, None, scope, otel)
        if client._plain:
            queue = client._queue
            if len(queue) < client._max_slots:
                queue.extend((head, meter, account, *fields))
                if len(queue) == client._wake_slots:
                    client._worker.wake()
                return
            client._enqueue_slow((head, meter, account, *fields))
            return
        client._record_checked((head, meter, account, *fields))
    except MeasurementError:
        if client.strict:
            raise
    except Exception as exc:  # as ``Client._record``: never raise into a decorated function
        _misused(client, "meter() fields", meter, account, exc)


def write_with_control(client: Client, records: list[Measurement], control: dict[str, Any]) -> None:
    """Corrections: write validated wire ``records``, their tally and ``control`` (the
    record saying who corrected them and why) in one write of the client's sink, so they
    land in the same segment and cannot part. Flushes what is queued first. Raises
    :class:`MeterkitError` if the spool refuses the write; then nothing was written."""
    if not client.flush(timeout=60.0):
        raise MeterkitError("the spool did not take what was queued before the correction; nothing was written")
    write = Write([], list(records), [*tally_controls(tally(records)), control], len(records))
    trouble = client._flusher.write(write)
    if trouble is not None:
        raise MeterkitError(f"the spool refuses writes ({trouble}); nothing was written, try again later")


def _misused(client: Client, what: str, meter: Any, account: Any, exc: Exception) -> None:
    """Arguments ``record`` or ``meter`` could not use: a ``MeasurementError`` naming them
    in strict mode; in production, counted and kept in ``rejected/``, never raised. Every
    text is made with ``safe_repr``, so an argument whose ``__repr__`` raises cannot either."""
    error = MeasurementError(Problem("bad_argument", f"{what} unusable: {safe_repr(exc)}", meter_name(meter)))
    if client.strict:
        raise error from exc
    client._flusher.reject_raw({"meter": meter_name(meter), "account": meter_name(account)}, error)


def _spool_sink(s: Settings, catalog: Catalog | None) -> SpoolSink:
    """The default sink: this process's own segment files in the spool directory. Its
    header names the catalog its frames were validated against when they were (strict mode,
    sync durability); in production mode the agent validates them (``validated: null``)."""
    try:
        _permissions.spool_dir(s.spool_dir, s.spool_shared_group)  # shared with a group, or private
        return SpoolSink(
            s.spool_dir,
            os.urandom(4).hex(),
            max_segment_bytes=s.max_segment_bytes,
            max_segment_age_seconds=s.max_segment_age_seconds,
            max_spool_bytes=s.max_spool_bytes,
            fsync=s.fsync,
            validated=validation_token(catalog) if s.mode == "strict" or s.durability == "sync" else None,
        )
    except OSError as exc:
        raise ConfigError(f"cannot use spool directory {s.spool_dir}: {exc.strerror}") from None


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

__all__ = ["Client", "MemorySink", "write_with_control"]
