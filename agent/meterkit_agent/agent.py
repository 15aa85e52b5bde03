"""The agent: a small facade that builds the pipeline from a configuration, and starts,
flushes and stops it.

Receivers read the spool(s) and hand frames to one delivery worker (the SDK's
:class:`BatchWorker`, the same batching engine as the SDK's flusher), which prepares each
batch (:mod:`.pipeline.prepare`) and hands it to the sender (:mod:`.pipeline.sender`):
delivered to every exporter with retries, refused records dead-lettered, the journal
appended and only then the checkpoint advanced. A crash anywhere replays from the
checkpoint; uids make the replay harmless. Fully acknowledged segments are retired.
With ``service.extensions: [balances]`` a keeper thread (:mod:`.balances`) beside the
pipeline rewrites the SDK's balance snapshot from the ledger.

A running agent holds an exclusive ``flock`` on ``<state_dir>/agent.lock`` (its pid
inside) from start to stop: two agents on one state directory would each advance the one
checkpoint and journal, so the second refuses to start. The kernel drops the lock when
the process dies however it dies, so a stale lock file never blocks a restart, and
``meterkit agent status`` tells a running agent from a stopped one by trying the lock.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from meterkit._batch import BatchWorker
from meterkit._spool import private_dir

from .audit.journal import Journal
from .balances import SNAPSHOT_NAME, BalancesKeeper, SpoolWatermark
from .component import Exporter, Processor, Receiver, catalog_at, factory, type_of
from .config import AgentConfig
from .exporters import EXPORTERS
from .exporters.exporterhelper import IngestExporter, RetryConfig
from .pipeline.checkpoint import Checkpoint
from .pipeline.commit import Committer
from .pipeline.deadletters import REPLAY_SPOOL, DeadLetters
from .pipeline.deliver import Deliverer
from .pipeline.drain import Drain
from .pipeline.prepare import Prepared, Preparer
from .pipeline.retire import Retirer
from .pipeline.sender import Sender
from .pipeline.telemetry import AgentMetrics
from .processors import PROCESSORS
from .processors.batch import BatchConfig
from .processors.validate import ValidateConfig, ValidateProcessor
from .receivers import RECEIVERS
from .receivers.spool import Envelope, SpoolReceiver

logger = logging.getLogger("meterkit.agent")
#: The one start-up line (what the agent reads, where it sends): ``agent run`` shows it
#: without ``--verbose``.
startup_logger = logging.getLogger("meterkit.agent.startup")

#: The lock a running agent holds in its state directory.
LOCK_NAME = "agent.lock"


class AgentRunning(Exception):
    """Another agent holds the state directory's lock."""


def hold_state_lock(state_dir: Path) -> IO[str]:
    """Take ``<state_dir>/agent.lock`` for this process, writing its pid there; keep the
    returned file open for as long as the lock is to be held. Raises :class:`AgentRunning`
    naming the holder when another process (or agent) has it."""
    handle = (Path(state_dir) / LOCK_NAME).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AgentRunning(
            f"another agent (pid {holder}) is running with the state directory {state_dir};"
            " stop it, or give this one its own --state-dir"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def running_pid(state_dir: Path) -> int | None:
    """The pid of the agent holding ``state_dir``'s lock, or None when none runs there."""
    try:
        fd = os.open(Path(state_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(config: AgentConfig) -> str:
    """What an agent with ``config`` reads and where it sends, without any secret: spool
    directories and listening endpoints; exporters by kind and host (a URL's host, a
    database's dialect and host or file, a file's path)."""
    reads = []
    for cid in config.pipeline.receivers:
        cfg = config.component("receivers", cid)
        where = getattr(cfg, "directory", None) or getattr(cfg, "endpoint", None)
        reads.append(f"{cid} {where}" if where is not None else cid)
    reads.append(f"replay {Path(config.service.state_dir) / REPLAY_SPOOL}")
    sends = [f"{cid} {_destination(config.component('exporters', cid))}" for cid in config.pipeline.exporters]
    state = config.service.state_dir
    return f"meterkit agent started: reads {', '.join(reads)}; sends to {', '.join(sends)}; state {state}"


def _destination(cfg: Any) -> str:
    for name in ("base_url", "url"):
        if hasattr(cfg, name):
            url = getattr(cfg, name)
            if not url:
                return "m3ter.com"  # the m3ter exporter's default hosts
            parts = urlsplit(str(url))
            return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    if hasattr(cfg, "db"):
        parts = urlsplit(str(cfg.db))
        return f"{parts.scheme}://{parts.hostname or ''}{parts.path if not parts.hostname else ''}"
    return str(getattr(cfg, "path", ""))


#: At most this many bytes of frames read and not yet prepared (and always at least one frame).
QUEUE_BYTES = 16 * 1024 * 1024


#: Container allocations between the cyclic collector's young collections (Python's default
#: is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a process that is the agent. The agent makes
    a dict per measurement and frees it by reference counting (records hold no cycles);
    by default a young collection runs every 700 allocations, walking the records still in
    flight, about 0.2 to 0.5 µs of CPU a measurement. Rarer young collections, and the
    objects made at start-up frozen out of the collector's way, keep that small; cycles
    are still collected."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT. Install it first thing, so a signal that arrives
    while the agent is still starting up drains it instead of killing it."""
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("meterkit agent: %s received, draining", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return done


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        pipe = config.pipeline
        self.state_dir = private_dir(config.service.state_dir)
        self.checkpoint = Checkpoint(self.state_dir)
        self.journal = Journal(self.state_dir)
        for entry in self.journal.tail_after(self.checkpoint.journal_seq):
            # Journal appended, checkpoint file not yet written when the agent stopped.
            self.checkpoint.advance(entry.get("positions") or {}, int(entry["seq"]), save=False)
        self.dead_letters = DeadLetters(self.state_dir)
        self.drain = Drain()

        self.batch_cfg = BatchConfig()
        self.processors: list[tuple[str, Processor]] = []
        for cid in pipe.processors:
            cfg = config.component("processors", cid)
            if isinstance(cfg, BatchConfig):
                self.batch_cfg = cfg
            elif (proc := _build(PROCESSORS, cid, cfg)) is not None:
                self.processors.append((cid, proc))
        self.exporters: list[Exporter] = []
        retry: dict[str, RetryConfig] = {}
        for cid in pipe.exporters:
            cfg = config.component("exporters", cid)
            exporter = _build(EXPORTERS, cid, cfg)
            if isinstance(exporter, IngestExporter):
                # One request never exceeds the batch processor's limits (m3ter's, by default).
                exporter.max_count, exporter.max_bytes = self.batch_cfg.max_measurements, self.batch_cfg.max_bytes
            if hasattr(exporter, "journal_head"):  # carried to the backend, which anchors the journal
                exporter.journal_head = self.journal.anchor
            self.exporters.append(exporter)
            retry[exporter.name] = getattr(cfg, "retry", RetryConfig())

        self.worker: BatchWorker[Envelope] = BatchWorker(
            self._export,
            name="meterkit-agent-delivery",
            max_queue_size=max(10 * self.batch_cfg.max_measurements, 10_000),
            max_batch_size=self.batch_cfg.max_measurements,
            schedule_delay_millis=self.batch_cfg.timeout_millis,
            max_backoff_millis=5_000,
        )
        self.metrics = AgentMetrics(self.state_dir, lambda: len(self.worker.queue), telemetry=config.service.telemetry)
        self.prepare = Preparer(self.processors, self.metrics)
        # Frames read but not yet prepared, in payload bytes: a batch frame holds hundreds
        # of measurements, so the queue is bounded by bytes as well as by frames.
        self._queued_bytes = 0
        self._room = threading.Condition(threading.Lock())
        # Every record the exporters get passed the validate processor, if it runs last.
        last = self.processors[-1][1] if self.processors else None
        if isinstance(last, ValidateProcessor):
            for exporter in self.exporters:
                if hasattr(exporter, "validated_token"):
                    exporter.validated_token = last.token

        # Receivers: spool tailers are the pipeline's queue; network receivers append to a spool.
        self.receivers: list[SpoolReceiver] = []
        self.http_servers: list[Receiver] = []
        self.catalog = catalog_at(
            next((c.catalog for c in config.processors.values() if isinstance(c, ValidateConfig) and c.catalog), None)
        )
        for cid in pipe.receivers:
            server = _build(RECEIVERS, cid, config.component("receivers", cid), self)
            if server is not None:
                self.http_servers.append(server)
        # `meterkit dlq replay` hands dead letters back through this spool.
        self.replay_dir = self.state_dir / REPLAY_SPOOL
        self.tail(self.replay_dir, 0.5)

        retire = Retirer(self.receivers, self.checkpoint, self.state_dir, config.service.retain_segments_hours)
        self.sender = Sender(
            Deliverer(self.exporters, retry, self.drain, self.metrics),
            Committer(self.journal, self.checkpoint, self.dead_letters, self.metrics),
            retire,
            self.drain,
        )
        self.balances = _balance_keeper(self)
        self._lock: IO[str] | None = None

    @property
    def sdk_losses(self) -> Counter[str]:
        """Losses the SDKs reported in their control records, by reason."""
        return self.prepare.sdk_losses

    def tail(self, directory: Path, poll_interval: float) -> None:
        """Read a spool directory into the pipeline (receivers call this; once per directory)."""
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

    def start(self, lock: IO[str] | None = None) -> None:
        """Start every thread, holding the state directory's lock (``lock``, if the caller
        took it already); raises :class:`AgentRunning` if another agent holds it."""
        self._lock = lock or hold_state_lock(self.state_dir)
        self.sender.start()
        self.worker.start()
        for receiver in self.receivers:
            receiver.start()
        for server in self.http_servers:
            server.start()
        if self.balances is not None:
            self.balances.start()
        startup_logger.info("%s", describe(self.config))

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading, deliver what was read within ``timeout``, checkpoint, close."""
        if timeout is None:
            timeout = self.config.service.drain_timeout_millis / 1000.0
        self.drain.begin(timeout)
        if self.balances is not None:
            self.balances.shutdown()
        # Network receivers first (their last writes land in a spool), then the tailers.
        for server in self.http_servers:
            server.shutdown(max(1.0, self.drain.left()))
        for receiver in self.receivers:
            receiver.shutdown(max(1.0, self.drain.left()))
        drained = self.worker.shutdown(timeout)
        drained = self.sender.stop() and drained
        self.checkpoint.save()  # what the journal holds since the last periodic save
        for exporter in self.exporters:
            exporter.shutdown()
        self.metrics.shutdown()
        self.dead_letters.close()
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None
        if not drained:
            logger.warning(
                "meterkit agent: stopped before everything read was acknowledged; it will be replayed on restart"
            )
        return drained

    def run_forever(self, done: threading.Event | None = None, lock: IO[str] | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``done`` is set), then drain. 0 if fully drained."""
        if done is None:
            done = stop_on_signals()
        tune_gc()
        self.start(lock)
        done.wait()
        return 0 if self.stop() else 1

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything read so far (receivers keep running)."""
        deadline = time.monotonic() + timeout
        if not self.worker.flush(timeout):
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


def _balance_keeper(agent: Agent) -> BalancesKeeper | None:
    """The balance keeper, if configured: it writes ``path``, or ``balances.json`` in each
    directory a spool receiver reads (where the SDKs writing there look for it), and takes
    ``as_of`` from every spool the agent tails."""
    cfg = agent.config.balances
    if cfg is None:
        return None
    pipe = agent.config.pipeline
    spools = [agent.config.component("receivers", r).directory for r in pipe.receivers if type_of(r) == "spool"]
    paths = [cfg.path] if cfg.path is not None else [Path(d) / SNAPSHOT_NAME for d in spools]
    refreshes = agent.metrics.provider.get_meter("meterkit.agent", "0.1.0").create_counter(
        "meterkit.agent.balance_refreshes", unit="{refresh}"
    )
    return BalancesKeeper(
        cfg,
        paths,
        SpoolWatermark(lambda: [r.directory for r in agent.receivers], agent.checkpoint.get),
        agent.state_dir,
        on_refresh=lambda outcome: refreshes.add(1, {"outcome": outcome}),
    )


def _build(registry: dict[str, str], cid: str, cfg: Any, *context: Any) -> Any:
    found = factory(registry, cid)
    assert found is not None, cid  # the configuration was validated against the same registry
    return found.create(cid, cfg, *context)
