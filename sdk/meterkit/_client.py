"""The client: turns ``record(...)`` calls into spooled measurements.

Hot path (``Client.record``): copy the caller's dicts into a tuple with a sequence number,
the time and the current scope, and append it to a bounded deque. No I/O, no lock, no
pydantic. The flusher thread (owned by a :class:`Flusher`, ``_flusher.py``) validates,
assigns the uid text, frames and writes batches to the spool, and tallies what it wrote for
reconciliation. This module keeps the hot path, the public methods and the fork and exit
hooks; the flusher, its sink and its loss counts live in ``_flusher``.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from . import _backfill, _guard, _permissions
from ._backfill import BatchResult
from ._catalog import Catalog, load_catalog
from ._errors import ConfigError, MeasurementError, MeterkitError, Problem
from ._flusher import Flusher, Measurement, meter_name
from ._model import UidSource, validation_token
from ._otel_context import current_context_getter
from ._scope import current_scope
from ._settings import Settings, resolve
from ._sinks import MemorySink, Sink, SpoolSink

_time_ns = time.time_ns
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
        sink: Sink | None = None,
    ) -> None:
        self.settings: Settings = resolve(
            catalog=None if isinstance(catalog, Catalog) else catalog,
            spool_dir=spool_dir,
            spool_shared_group=spool_shared_group,
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
        self._checked = self.strict or s.durability == "sync"  # validate on the caller's thread
        self._block_seconds = s.queue_full_timeout_millis / 1000.0
        self._uids = UidSource()
        self._otel_context = current_context_getter() if s.otel_context else None
        self.sink: Sink = sink if sink is not None else _spool_sink(s, self.catalog)
        self._flusher = Flusher(s, self.sink, self.catalog, self._uids)
        self._worker = self._flusher.worker
        self._bind_hot_path()
        self._closed = False
        _live_clients.add(self)
        self._worker.start()

    def _bind_hot_path(self) -> None:
        """What ``record`` reads, bound once: at construction, and again in a forked child."""
        self._next_seq = self._uids.next
        self._record_checked = self._flusher.record_checked
        self._queue = self._worker.queue
        self._max_queue = self._worker.max_queue_size
        self._batch_size = self._worker.max_batch_size

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
        try:
            item = (  # in the layout ``_flusher`` reads
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
            error = MeasurementError(Problem("bad_argument", f"record() arguments unusable: {exc}", meter_name(meter)))
            if self.strict:
                raise error from exc
            self._flusher.reject_raw({"meter": meter_name(meter), "account": repr(account)}, error)

    def _enqueue_slow(self, item: tuple[Any, ...]) -> None:
        if self._closed:
            # Recorded after shutdown (another atexit hook, say): write it straight through.
            self._flusher.record_late(item)
            return
        if not self._worker.put_when_room(item, self._block_seconds):
            self._flusher.lose(item, self._flusher.trouble or "queue_full")

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
        return _backfill.submit_batch(self, rows, key_field=key_field)

    def _write_now(self, records: list[Measurement]) -> None:
        """Backfill: write validated records through the same path as the flusher."""
        for record in records:
            if not self._worker.put(record, max(self._block_seconds, 30.0)):
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
        self._max_queue = 0  # from now on record() takes the slow path, which writes directly
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


def _spool_sink(s: Settings, catalog: Catalog | None) -> SpoolSink:
    """The default sink: this process's own segment files in the spool directory."""
    try:
        _permissions.spool_dir(s.spool_dir, s.spool_shared_group)  # shared with a group, or private
        return SpoolSink(
            s.spool_dir,
            os.urandom(4).hex(),
            max_segment_bytes=s.max_segment_bytes,
            max_segment_age_seconds=s.max_segment_age_seconds,
            max_spool_bytes=s.max_spool_bytes,
            fsync=s.fsync,
            validated=validation_token(catalog),
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

__all__ = ["Client", "MemorySink"]
