"""One batching engine for the SDK's buffer and the agent's batch processor.

A bounded queue in front of a worker thread that hands batches to an ``export`` callable
when ``max_batch_size`` items are waiting or ``schedule_delay_millis`` has passed (with
jitter, so pre-forked workers do not flush in lockstep). The producer side is a deque
append and a length check: no lock, no I/O; the worker takes a batch off the deque in C
(``deque.popleft`` driven by ``list.extend``), not one item per Python statement.

``stride``: an item may be laid out flat as ``stride`` consecutive slots of the deque
(appended with one ``deque.extend`` of a tuple, which no other thread can interleave
with). The SDK's flusher does this so that a queued measurement holds no container of its
own: a million queued tuples holding dicts would each be tracked by the garbage
collector, whose full collections would then walk all of them, again and again. Sizes are
in items; ``queue`` holds slots; ``export`` gets the slots of whole items.

``export(batch) -> bool``: ``True`` means "taken, keep going"; ``False`` means "I could not
take it now (disk full, backend down); the batch is mine, back off and call me again with
an empty batch until I say ``True``". The exporter, not the engine, owns its retry state.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Generic, TypeVar

from ._guard import background_error

T = TypeVar("T")
_NEVER = object()  # ``iter(popleft, _NEVER)``: popleft never returns it, the queue runs dry first


class BatchWorker(Generic[T]):
    def __init__(
        self,
        export: Callable[[list[T]], bool],
        *,
        name: str,
        max_queue_size: int = 65_536,
        max_batch_size: int = 4_096,
        schedule_delay_millis: float = 200.0,
        max_backoff_millis: float = 5_000.0,
        stride: int = 1,
    ) -> None:
        if max_batch_size > max_queue_size:
            raise ValueError("max_batch_size cannot exceed max_queue_size")
        self._export = export
        self.name = name
        self.stride = stride
        self.max_queue_size = max_queue_size
        self.max_batch_size = max_batch_size
        self.max_queue_slots = max_queue_size * stride
        self.max_batch_slots = max_batch_size * stride
        self.schedule_delay_millis = schedule_delay_millis
        self.max_backoff_millis = max_backoff_millis
        self.reinit()

    def reinit(self) -> None:
        """Fresh queue, locks and no thread: at construction, and in a forked child."""
        self.queue: deque[T] = deque()
        # An item, or (with a stride) a tuple of that many slots.
        self._add: Callable[[Any], None] = self.queue.append if self.stride == 1 else self.queue.extend
        self._cond = threading.Condition(threading.Lock())
        self._space = threading.Condition(threading.Lock())
        self._flush_waiters: list[threading.Event] = []
        self._shutdown = False
        self._deadline = float("inf")
        self.healthy = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    # -- producer side -------------------------------------------------------------------

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def queued(self) -> int:
        """Items waiting (not slots)."""
        return len(self.queue) // self.stride

    def put(self, item: T, block_seconds: float = 0.0) -> bool:
        """Enqueue (with a ``stride``, ``item`` is a tuple of that many slots); when full,
        wait up to ``block_seconds`` for room. False: not enqueued."""
        queue = self.queue
        if len(queue) < self.max_queue_slots:
            self._add(item)
            if len(queue) == self.max_batch_slots:
                self.wake()
            return True
        return self.put_when_room(item, block_seconds)

    def put_when_room(self, item: T, block_seconds: float) -> bool:
        """The slow path of :meth:`put`: the queue is full."""
        self.wake()
        if self._shutdown or block_seconds <= 0:
            return False
        deadline = time.monotonic() + block_seconds
        with self._space:
            while len(self.queue) >= self.max_queue_slots:
                left = deadline - time.monotonic()
                if left <= 0 or self._shutdown:
                    return False
                self._space.wait(left)
        self._add(item)
        return True

    def take(self, slots: int) -> list[T]:
        """Take up to ``slots`` slots off the queue, in C. Safe against another taker (a
        shutdown after its timeout): what was taken before the queue ran dry is kept."""
        taken: list[T] = []
        with contextlib.suppress(IndexError):
            taken.extend(islice(iter(self.queue.popleft, _NEVER), slots))
        return taken

    # -- control -------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Export everything queued before this call. True if done within ``timeout``."""
        if self._thread is None or not self._thread.is_alive():
            return not self.queue
        done = threading.Event()
        with self._cond:
            self._flush_waiters.append(done)
            self._cond.notify()
        return done.wait(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Drain and stop. True if everything was exported within ``timeout``. Idempotent."""
        thread = self._thread
        with self._cond:
            self._shutdown = True
            self._deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
            self._cond.notify()
        with self._space:
            self._space.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive() and not self.queue and self.healthy
        return not self.queue and self.healthy

    # -- worker --------------------------------------------------------------------------

    def _delay(self) -> float:
        # Up to 10% jitter: pre-forked workers started together should not flush together.
        return self.schedule_delay_millis / 1000.0 * (0.9 + random.random() * 0.2)

    def _call(self, batch: list[T]) -> bool:
        try:
            return self._export(batch)
        except Exception as exc:
            background_error(f"{self.name} export", exc)
            return False

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                if not self.healthy:
                    # Back off even with a full queue or a flush waiting: calling an exporter
                    # that just refused again at once would spin (a full disk, a backend down).
                    # A flush or shutdown still wakes it early; a shutdown's deadline caps it.
                    left = self._deadline - time.monotonic() if self._shutdown else backoff
                    if min(backoff, left) > 0:
                        self._cond.wait(min(backoff, left))
                elif not (self._shutdown or self._flush_waiters or len(self.queue) >= self.max_batch_slots):
                    self._cond.wait(backoff or self._delay())
                waiters, self._flush_waiters = self._flush_waiters, []
                stopping, deadline = self._shutdown, self._deadline
            if not self.healthy:
                self.healthy = self._call([])
                backoff = 0.0 if self.healthy else min(max(backoff * 2, 0.05), self.max_backoff_millis / 1000.0)
                if stopping and time.monotonic() >= deadline:
                    break
                if not self.healthy:
                    with self._cond:
                        self._flush_waiters[:0] = waiters
                    continue
            while self.healthy:
                batch = self.take(self.max_batch_slots)
                self.healthy = self._call(batch)
                with self._space:
                    self._space.notify_all()
                if not batch or (stopping and time.monotonic() >= deadline):
                    break
            if not self.healthy:
                backoff = 0.05
                with self._cond:
                    self._flush_waiters[:0] = waiters
                if not (stopping and time.monotonic() >= deadline):
                    continue
            for w in waiters:
                w.set()
            if stopping and (not self.queue or time.monotonic() >= deadline):
                break
