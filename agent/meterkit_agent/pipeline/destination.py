"""One destination: an exporter and everything that makes its delivery independent.

An agent with several exporters (in one pipeline or several) runs one
:class:`Destination` per exporter. Each has its own cursor over the spool (its
checkpoint), its own tailers, delivery worker and sender, its own retries and pauses, its
own dead letters and its own journal, all in its own state directory. So a destination
that is down or slow only ever delays itself: the others read the same spool segments
at their own pace. This is the difference from a fan-out that waits for every branch
(one slow sink stalls all of them) or retries the whole fan-out (the branches that had
succeeded get duplicates): here every destination is a complete, crash-safe delivery
path of its own, and uids make any replay harmless.

The price is that each destination reads and prepares the frames itself; the spool's
pages are in the page cache for the second reader, and ``make bench`` measures what a
second destination costs.

A segment is retired only when every destination that reads its directory has it
acknowledged (:class:`.retire.Retirer`), or when a lagging destination's retention runs
out (:meth:`Destination.give_up`), which is journaled and counted as that destination's
loss.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterkit._batch import BatchWorker
from meterkit._spool import private_dir

from ..audit.journal import Journal
from ..component import Exporter, Processor
from ..exporters.exporterhelper import IngestExporter, RetryConfig
from ..lease import Fenced, Lease
from ..processors.batch import BatchConfig
from ..processors.validate import ValidateProcessor
from ..receivers.spool import Envelope, SpoolReceiver
from .checkpoint import Checkpoint
from .commit import Committer
from .deadletters import REPLAY_SPOOL, DeadLetters
from .deliver import Deliverer
from .drain import Drain
from .fence import Fence
from .prepare import Prepared, Preparer
from .sender import Sender
from .telemetry import AgentMetrics

#: At most this many bytes of frames read and not yet prepared (and always at least one frame).
QUEUE_BYTES = 16 * 1024 * 1024


class Destination:
    """An exporter's delivery path over the spool(s), with state in ``state_dir``."""

    def __init__(
        self,
        exporter: Exporter,
        retry: RetryConfig,
        processors: list[tuple[str, Processor]],
        batch_cfg: BatchConfig,
        state_dir: Path,
        metrics: AgentMetrics,
        retire: Callable[[], None],
        lease: Lease | None = None,
    ) -> None:
        self.name = exporter.name
        self.exporter = exporter
        self.fence = Fence()  # its own, so it can be closed alone; the agent sets the lease
        self.fence.lease = lease
        self.state_dir = private_dir(state_dir)
        self.checkpoint = Checkpoint(self.state_dir)
        self.journal = Journal(self.state_dir)
        for entry in self.journal.tail_after(self.checkpoint.journal_seq):
            # Journal appended, checkpoint file not yet written when the agent stopped.
            self.checkpoint.advance(entry.get("positions") or {}, int(entry["seq"]), save=False)
        self.dead_letters = DeadLetters(self.state_dir)
        self.drain = Drain()
        self.batch_cfg = batch_cfg
        if isinstance(exporter, IngestExporter):
            # One request never exceeds the batch processor's limits (m3ter's, by default).
            exporter.max_count, exporter.max_bytes = batch_cfg.max_measurements, batch_cfg.max_bytes
            exporter.fence = self.fence.epoch_to_send  # checked before every request
        if hasattr(exporter, "journal_head"):  # carried to the backend, which anchors the journal
            exporter.journal_head = self.journal.anchor
        # Every record the exporter gets passed the validate processor, if it runs last.
        last = processors[-1][1] if processors else None
        if isinstance(last, ValidateProcessor) and hasattr(exporter, "validated_token"):
            exporter.validated_token = last.token

        self.worker: BatchWorker[Envelope] = BatchWorker(
            self._export,
            name=f"meterkit-agent-delivery:{self.name}",
            max_queue_size=max(10 * batch_cfg.max_measurements, 10_000),
            max_batch_size=batch_cfg.max_measurements,
            schedule_delay_millis=batch_cfg.timeout_millis,
            max_backoff_millis=5_000,
        )
        self.metrics = metrics.for_destination(self.name, lambda: len(self.worker.queue))
        self.prepare = Preparer(processors, self.metrics)
        # Frames read but not yet prepared, in payload bytes: a batch frame holds hundreds
        # of measurements, so the queue is bounded by bytes as well as by frames.
        self._queued_bytes = 0
        self._room = threading.Condition(threading.Lock())
        self.receivers: list[SpoolReceiver] = []
        self.sender = Sender(
            Deliverer([exporter], {exporter.name: retry}, self.drain, self.metrics, self.fence),
            Committer(self.journal, self.checkpoint, self.dead_letters, self.metrics, self.fence),
            retire,
            self.drain,
        )
        # `meterkit dlq replay` hands this destination's dead letters back through this
        # spool; the agent tails it after the pipeline's own receivers.
        self.replay_dir = self.state_dir / REPLAY_SPOOL

    def tail(self, directory: Path, poll_interval: float) -> None:
        """Read a spool directory into this destination (once per directory)."""
        if any(r.directory == Path(directory) for r in self.receivers):
            return
        self.receivers.append(
            SpoolReceiver(
                Path(directory),
                self.checkpoint.get,
                self._emit,
                poll_interval=poll_interval,
                on_corrupt=lambda _key, n: self.metrics.corrupt_bytes.add(n),
                on_abandoned=lambda _key, reason: self.metrics.segments_abandoned.add(1, {"reason": reason}),
            )
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.sender.start()
        self.worker.start()
        for receiver in self.receivers:
            receiver.start()

    def begin_stop(self, timeout: float) -> None:
        """Set the drain deadline: from now on nothing waits past it."""
        self.drain.begin(timeout)

    def stop_reading(self) -> None:
        for receiver in self.receivers:
            receiver.shutdown(max(1.0, self.drain.left()))

    def finish(self, timeout: float) -> bool:
        """Deliver what was read within the drain deadline, checkpoint, close. True if
        everything read was acknowledged."""
        drained = self.worker.shutdown(timeout)
        drained = self.sender.stop() and drained
        try:
            with self.fence.committing():  # a leader that lost the lease leaves the file alone
                self.checkpoint.save()  # what the journal holds since the last periodic save
        except Fenced:
            drained = False
        self.exporter.shutdown()
        self.dead_letters.close()
        return drained

    def flush(self, deadline: float) -> bool:
        """Deliver everything read so far, by ``deadline`` (monotonic)."""
        if not self.worker.flush(max(0.0, deadline - time.monotonic())):
            return False
        return self.sender.wait_idle(deadline)

    # -- the delivery worker's step ------------------------------------------------------

    def _emit(self, envelope: Envelope) -> bool:
        """Queue a frame for the delivery worker; False if there was no room within half a
        second (the receiver tries again)."""
        size = len(envelope.payload)
        with self._room:
            if self._queued_bytes and not self._room.wait_for(
                lambda: self._queued_bytes + size <= QUEUE_BYTES or not self._queued_bytes, 0.5
            ):
                return False
            self._queued_bytes += size
            full = self._queued_bytes >= self.batch_cfg.max_bytes
        if not self.worker.put(envelope, 0.5):
            self._release(size)
            return False
        if full:
            self.worker.wake()  # a batch's worth is waiting: no need to wait for the timer
        return True

    def _release(self, size: int) -> None:
        with self._room:
            self._queued_bytes -= size
            self._room.notify_all()

    def _export(self, batch: list[Envelope]) -> bool:
        """Prepare a batch and hand it to the sender: preparing batch N+1 while batch N is
        on the wire keeps the agent busy while the backend works.

        The worker's batch is counted in frames, and a batch frame holds many measurements,
        so a batch is handed on once it holds ``max_measurements``. A frame is never cut in
        two: the checkpoint moves by whole frames, so a frame half delivered and journaled
        before a crash would be delivered and journaled again after it, and reconciliation
        would count its first half twice. A batch may so exceed ``max_measurements`` by less
        than one frame (the SDK's ``max_batch_size``); the exporters cut requests to their
        backends' limits whatever its size."""
        if not batch:
            return True
        try:
            limit = self.batch_cfg.max_measurements
            p = Prepared()
            for envelope in batch:
                self.prepare.take(p, envelope)
                if len(p.records) >= limit:
                    if not self.sender.put(self.prepare.finish(p)):
                        return False
                    p = Prepared()
            return not p.taken or self.sender.put(self.prepare.finish(p))
        finally:
            self._release(sum(len(e.payload) for e in batch))

    def describe(self) -> dict[str, Any]:
        """Where this destination keeps its state (for status and logs)."""
        return {"destination": self.name, "state_dir": str(self.state_dir)}
