"""Reading and preparing the spool, once, for the destinations that keep up.

A :class:`Feed` tails spool directories, hands frames to its delivery worker (the SDK's
:class:`BatchWorker`), prepares each batch (:mod:`.prepare`: parse, run the processors,
serialise, hash) and offers the prepared batch to each of its destinations' senders.

Every destination has a feed of its own (its replay spool, at least). The destinations of
one pipeline also share one feed over the pipeline's spools, so a second destination
costs what it does alone (its requests, its journal) and not a second read, parse and
validation of everything. Sharing never couples them: a destination that cannot take a
batch (its queue full while it retries a failed one, or for :data:`DETACH_SECONDS` while it
is only slow) is detached, and from then on reads
the spool with its own feed, from just after the last batch the shared feed handed it,
at its own pace; the others go on at theirs. A destination's cursor is always its own
checkpoint: the shared feed starts, after a restart, from the lowest of its members', and
offers each member only the frames past its own, so nothing is sent twice to one that
had it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from meterkit._batch import BatchWorker

from ..component import Processor
from ..processors.batch import BatchConfig
from ..receivers.spool import Envelope, SpoolReceiver
from .checkpoint import Checkpoint
from .drain import Drain
from .prepare import Prepared, Preparer
from .sender import Sender
from .telemetry import AgentMetrics

logger = logging.getLogger("meterkit.agent")

#: At most this many bytes of frames read and not yet prepared (and always at least one frame).
QUEUE_BYTES = 16 * 1024 * 1024
#: A member of a shared feed that cannot take a batch for this long reads on its own.
DETACH_SECONDS = 1.0


class Destination(Protocol):
    """What a feed needs of a destination (:class:`.destination.Destination`)."""

    name: str
    checkpoint: Checkpoint
    sender: Sender
    drain: Drain

    @property
    def feed(self) -> Feed: ...


class Feed:
    """Spool directories read and prepared once for ``members`` (attached destinations)."""

    def __init__(
        self,
        name: str,
        processors: list[tuple[str, Processor]],
        batch_cfg: BatchConfig,
        metrics: AgentMetrics,
        members: Sequence[Destination],
    ) -> None:
        self.name = name
        self.batch_cfg = batch_cfg
        self.members = list(members)
        #: per member: the positions of the last batch handed to it, per segment
        self.handed: dict[str, dict[str, int]] = {m.name: {} for m in members}
        self._members_lock = threading.Lock()
        self.worker: BatchWorker[Envelope] = BatchWorker(
            self._export,
            name=f"meterkit-agent-feed:{name}",
            max_queue_size=max(10 * batch_cfg.max_measurements, 10_000),
            max_batch_size=batch_cfg.max_measurements,
            schedule_delay_millis=batch_cfg.timeout_millis,
            max_backoff_millis=5_000,
        )
        self.metrics = metrics
        self.prepare = Preparer(processors, metrics)
        # Frames read but not yet prepared, in payload bytes: a batch frame holds hundreds
        # of measurements, so the queue is bounded by bytes as well as by frames.
        self._queued_bytes = 0
        self._room = threading.Condition(threading.Lock())
        self.receivers: list[SpoolReceiver] = []
        self.started = False

    # -- reading -------------------------------------------------------------------------

    def acknowledged(self, key: str) -> int:
        """How far every member has acknowledged a segment (what may be retired)."""
        return min((m.checkpoint.get(key) for m in self.members), default=0)

    def tail(self, directory: Path, poll_interval: float, start: Callable[[str], int] | None = None) -> None:
        """Read a spool directory (once per directory); ``start``: where to begin in each
        segment (default: where every member has acknowledged it). Started at once if the
        feed runs."""
        if any(r.directory == Path(directory) for r in self.receivers):
            return
        receiver = SpoolReceiver(
            Path(directory),
            self.acknowledged,
            self._emit,
            poll_interval=poll_interval,
            on_corrupt=lambda _key, n: self.metrics.corrupt_bytes.add(n),
            on_abandoned=lambda _key, reason: self.metrics.segments_abandoned.add(1, {"reason": reason}),
            start=start,
        )
        self.receivers.append(receiver)
        if self.started:
            receiver.start()

    def start(self) -> None:
        self.started = True
        self.worker.start()
        for receiver in self.receivers:
            receiver.start()

    def stop_reading(self, timeout: float) -> None:
        for receiver in self.receivers:
            receiver.shutdown(max(1.0, timeout))

    def finish(self, timeout: float) -> bool:
        """Prepare and hand on what was read, within ``timeout``."""
        return self.worker.shutdown(timeout)

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

    # -- preparing and handing on --------------------------------------------------------

    def _export(self, batch: list[Envelope]) -> bool:
        """Prepare a batch and offer it to the members: preparing batch N+1 while batch N
        is on the wire keeps the agent busy while the backend works.

        The worker's batch is counted in frames, and a batch frame holds many measurements,
        so a batch is handed on once it holds ``max_measurements``. A frame is never cut in
        two: the checkpoint moves by whole frames, so a frame half delivered and journaled
        before a crash would be delivered and journaled again after it, and reconciliation
        would count its first half twice. A batch may so exceed ``max_measurements`` by less
        than one frame (the SDK's ``max_batch_size``); the exporters cut requests to their
        backends' limits whatever its size.

        Members whose checkpoints differ (after a restart) need different frames: each
        group of members needing the same ones gets a batch of its own."""
        if not batch:
            return True
        try:
            groups: dict[tuple[bool, ...], list[Destination]] = {}
            for member in list(self.members):
                handed = self._handed(member)
                need = tuple(env.end > handed(env.source) for env in batch)
                groups.setdefault(need, []).append(member)
            for need, members in groups.items():
                frames = [env for env, wanted in zip(batch, need, strict=True) if wanted]
                if frames and not self._prepare_and_offer(frames, members):
                    return False
            return True
        finally:
            self._release(sum(len(e.payload) for e in batch))

    def _handed(self, member: Destination) -> Callable[[str], int]:
        handed = self.handed.setdefault(member.name, {})
        return lambda key: max(handed.get(key, 0), member.checkpoint.get(key))

    def _prepare_and_offer(self, frames: list[Envelope], members: list[Destination]) -> bool:
        limit = self.batch_cfg.max_measurements
        p = Prepared()
        for envelope in frames:
            self.prepare.take(p, envelope)
            if len(p.records) >= limit:
                if not self._offer(self.prepare.finish(p), members):
                    return False
                p = Prepared()
        return not p.taken or self._offer(self.prepare.finish(p), members)

    def _offer(self, p: Prepared, members: list[Destination]) -> bool:
        """Hand ``p`` to each member. False if stopping ran out of time first (not
        committed: the spool replays it at the next start)."""
        for member in members:
            if member not in self.members:
                continue  # detached meanwhile
            # Alone, it waits as long as it must (only it is held up). Beside others, one
            # that is retrying a failed batch is detached as soon as its queue is full; one
            # that is only slow, after DETACH_SECONDS.
            alone = len(self.members) == 1
            wait = None if alone else 0.0 if member.sender.deliver.failing else DETACH_SECONDS
            if member.sender.offer(p, wait):
                handed = self.handed.setdefault(member.name, {})
                for key, end in p.positions.items():
                    if end > handed.get(key, 0):
                        handed[key] = end
            elif member.drain.out_of_time():
                return False
            else:
                self.detach(member, "it is retrying" if wait == 0.0 else f"it took no batch for {DETACH_SECONDS:.0f} s")
        return True

    def detach(self, member: Destination, why: str) -> None:
        """From now on ``member`` reads this feed's spools with its own feed, from just
        after what was handed to it."""
        with self._members_lock:
            if member not in self.members:
                return
            self.members.remove(member)
        handed = self._handed(member)
        for receiver in self.receivers:
            member.feed.tail(receiver.directory, receiver.poll_interval, start=handed)
        logger.warning(
            "meterkit agent: %s fell behind (%s); it reads the spool on its own from now on, the others go on",
            member.name,
            why,
        )
