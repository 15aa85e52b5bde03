"""The sender thread: delivers and commits prepared batches strictly in order, while the
delivery worker prepares the next one (so the agent keeps busy while the backend works),
and retires idle segments between batches."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable

from meterkit._guard import background_error

from ..component import RetryLater
from ..lease import Fenced
from .commit import Committer
from .deliver import Deliverer
from .drain import Drain
from .prepare import Prepared


class Sender:
    def __init__(self, deliver: Deliverer, commit: Committer, retire: Callable[[], None], drain: Drain) -> None:
        self.deliver = deliver
        self.commit = commit
        self.retire = retire
        self.drain = drain
        # Two batches ahead: one on the wire, one prepared. More would let a shared feed's
        # slower member lag further before it is detached, but each prepared batch is
        # megabytes of records (four cost the agent 37 MiB more RSS in the bench).
        self.inflight: queue.Queue[Prepared | None] = queue.Queue(maxsize=2)
        self.abandoning = False
        self._thread = threading.Thread(target=self._run, name="meterkit-agent-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, prepared: Prepared, timeout: float | None = None) -> bool:
        """Queue a batch within ``timeout`` seconds (None: for as long as it takes). False
        if it was not queued: no room in time, or the drain deadline passed first (it is not
        committed, so the spool replays it on the next start)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self.inflight.put(prepared, timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                return True
            except queue.Full:
                if self.drain.out_of_time() or time.monotonic() >= deadline:
                    return False

    def stop(self) -> bool:
        """Finish the queued batches within the drain deadline. True if all were committed."""
        try:
            self.inflight.put(None, timeout=self.drain.left() + 1.0)
            queued = True
        except queue.Full:
            queued = False
        self._thread.join(self.drain.left() + 2.0)
        return queued and not self.abandoning and not self._thread.is_alive()

    def wait_idle(self, deadline: float) -> bool:
        """Wait until every queued batch is committed, or ``deadline`` (monotonic) passes."""
        with self.inflight.all_tasks_done:
            while self.inflight.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0 or not self.inflight.all_tasks_done.wait(left):
                    return False
        return True

    def _run(self) -> None:
        while True:
            try:
                item = self.inflight.get(timeout=0.5)
            except queue.Empty:
                try:
                    self.retire()  # a segment sealed after its last batch was acknowledged
                except Exception as exc:
                    background_error("segment retirement", exc)
                continue
            try:
                if item is None:
                    return
                while not self.abandoning:
                    try:
                        if self._send(item):
                            break
                    except Exception as exc:
                        background_error("delivery", exc)
                    if self.drain.out_of_time():
                        # Out of time. This batch and every later one stay uncommitted (the
                        # checkpoint must never pass a batch that was not acknowledged); the
                        # spool replays them on the next start.
                        self.abandoning = True
                    else:
                        self.drain.stopping.wait(1.0)
            finally:
                self.inflight.task_done()

    def _send(self, p: Prepared) -> bool:
        try:
            refused, answers = self.deliver(p.records)
            self.commit(p, refused, answers)
        except RetryLater:
            return False  # stopping, or a long outage: wait and try again
        except Fenced:
            # Another agent leads now: nothing more is sent or committed here. A renewal
            # that was only late fences until the next one; then this batch goes again.
            self.abandoning = self.deliver.fence.lost
            return False
        self.retire()
        return True
