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

The destinations of one pipeline share the reading and preparing (:mod:`.feed`) while
they keep up; one that falls behind is detached and reads on its own. ``make bench``
measures what a second destination costs.

A segment is retired only when every destination that reads its directory has it
acknowledged (:class:`.retire.Retirer`), or when a lagging destination's retention runs
out (:meth:`Destination.give_up`), which is journaled and counted as that destination's
loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterkit._spool import private_dir

from ..audit.journal import Journal
from ..component import Exporter, Processor
from ..exporters.exporterhelper import IngestExporter, RetryConfig
from ..lease import Fenced, Lease
from ..processors.batch import BatchConfig
from ..processors.validate import ValidateProcessor
from ..receivers.spool import SpoolReceiver
from .checkpoint import Checkpoint
from .commit import Committer
from .deadletters import REPLAY_SPOOL, DeadLetters
from .deliver import Deliverer
from .drain import Drain
from .feed import Feed
from .fence import Fence
from .sender import Sender
from .telemetry import AgentMetrics


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

        self.feed: Feed
        self.metrics = metrics.for_destination(self.name, lambda: len(self.feed.worker.queue))
        self.sender = Sender(
            Deliverer([exporter], {exporter.name: retry}, self.drain, self.metrics, self.fence),
            Committer(self.journal, self.checkpoint, self.dead_letters, self.metrics, self.fence),
            retire,
            self.drain,
        )
        #: what this destination reads on its own: its replay spool, the pipeline's spools
        #: too unless a shared feed (:mod:`.feed`) reads them for it
        self.feed = Feed(self.name, processors, batch_cfg, self.metrics, [self])
        # `meterkit dlq replay` hands this destination's dead letters back through this
        # spool; the agent tails it after the pipeline's own receivers.
        self.replay_dir = self.state_dir / REPLAY_SPOOL

    @property
    def receivers(self) -> list[SpoolReceiver]:
        """The tailers of this destination's own feed."""
        return self.feed.receivers

    def tail(self, directory: Path, poll_interval: float) -> None:
        """Read a spool directory with this destination's own feed (once per directory)."""
        self.feed.tail(directory, poll_interval)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.sender.start()
        self.feed.start()

    def begin_stop(self, timeout: float) -> None:
        """Set the drain deadline: from now on nothing waits past it."""
        self.drain.begin(timeout)

    def stop_reading(self) -> None:
        self.feed.stop_reading(self.drain.left())

    def finish(self, timeout: float) -> bool:
        """Deliver what was read within the drain deadline, checkpoint, close. True if
        everything read was acknowledged."""
        drained = self.feed.finish(timeout)
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
        if not self.feed.worker.flush(max(0.0, deadline - time.monotonic())):
            return False
        return self.sender.wait_idle(deadline)

    def describe(self) -> dict[str, Any]:
        """Where this destination keeps its state (for status and logs)."""
        return {"destination": self.name, "state_dir": str(self.state_dir)}
