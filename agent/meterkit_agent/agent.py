"""The agent: receivers → processors → exporters, with the spool as its queue.

One delivery worker (the SDK's :class:`BatchWorker`, the same batching engine) takes frames
in the order the receivers read them, runs the processors, hands the batch to every
exporter (retrying transient failures with exponential backoff and jitter, honouring
``Retry-After``), stores refused measurements in the dead-letter store, and only then
advances the checkpoint. A crash anywhere replays from the checkpoint; uids make the
replay harmless. Fully acknowledged segments are retired.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import tenacity

from meterkit._batch import BatchWorker
from meterkit._guard import background_error
from meterkit._model import tally
from meterkit._spool import KIND_MEASUREMENT, private_dir
from meterkit._timefmt import wire_ts_ns

from .audit import Journal, compress_uids, uid_digest
from .config import AgentConfig, BatchConfig, HttpReceiverConfig, OtlpReceiverConfig, RetryConfig, SpoolReceiverConfig
from .delivery import Rejected, RetryLater, idempotency_key
from .exporters import Exporter, IngestExporter, build_exporter
from .metrics import AgentMetrics
from .processors import Processor, ValidateProcessor, build_processor
from .receivers import Envelope, Receiver, SpoolReceiver
from .state import REPLAY_SPOOL, Checkpoint, DeadLetters

logger = logging.getLogger("meterkit.agent")


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


@dataclass
class _Prepared:
    """A batch parsed and processed, waiting for the sender to deliver and commit it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    trusted: list[bool] = field(default_factory=list)  # per record: validated by its writer as we would
    rejected: list[Rejected] = field(default_factory=list)
    broken: list[tuple[Any, str, str]] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    sources: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # segment -> (writer, uids)
    journal: list[dict[str, Any]] = field(default_factory=list)


class _Wait:
    """Exponential backoff with jitter, but never sooner than the server's Retry-After."""

    def __init__(self, retry: RetryConfig) -> None:
        self._backoff = tenacity.wait_exponential_jitter(
            initial=retry.initial_interval_millis / 1000.0, max=retry.max_interval_millis / 1000.0
        )

    def __call__(self, state: tenacity.RetryCallState) -> float:
        wait = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryLater) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait


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
        self._stopping = threading.Event()
        self._drain_deadline = float("inf")
        self.sdk_losses: Counter[str] = Counter()

        batch_cfg = BatchConfig()
        self.processors: list[Processor] = []
        for cid in pipe.processors:
            cfg = config.component("processors", cid)
            if isinstance(cfg, BatchConfig):
                batch_cfg = cfg
            else:
                proc = build_processor(cid, cfg)
                if proc is not None:
                    self.processors.append(proc)
        self.batch_cfg = batch_cfg
        # Frames validated by their writer under our rules and catalog skip a second check.
        # Trust needs a validate processor that runs first: later processors change records.
        first = self.processors[0] if self.processors else None
        self._validated_token = first.token if isinstance(first, ValidateProcessor) else None
        self.exporters: list[Exporter] = []
        self._retry_cfg: dict[str, RetryConfig] = {}
        for cid in pipe.exporters:
            cfg = config.component("exporters", cid)
            exporter = build_exporter(cid, cfg)
            if isinstance(exporter, IngestExporter):
                # One request never exceeds the batch processor's limits (m3ter's, by default).
                exporter.max_count, exporter.max_bytes = batch_cfg.max_measurements, batch_cfg.max_bytes
            self.exporters.append(exporter)
            self._retry_cfg[exporter.name] = getattr(cfg, "retry", RetryConfig())

        self.worker: BatchWorker[Envelope] = BatchWorker(
            self._export,
            name="meterkit-agent-delivery",
            max_queue_size=max(10 * batch_cfg.max_measurements, 10_000),
            max_batch_size=batch_cfg.max_measurements,
            schedule_delay_millis=batch_cfg.timeout_millis,
            max_backoff_millis=5_000,
        )
        self.metrics = AgentMetrics(self.state_dir, lambda: len(self.worker.queue), telemetry=config.service.telemetry)
        self._inflight: queue.Queue[_Prepared | None] = queue.Queue(maxsize=2)
        self._abandoning = False
        self._sender = threading.Thread(target=self._send_loop, name="meterkit-agent-sender", daemon=True)

        self.receivers: list[SpoolReceiver] = []  # spool tailers: the pipeline's queue
        self.http_servers: list[Receiver] = []  # network receivers: they append to a spool
        for cid in pipe.receivers:
            cfg = config.component("receivers", cid)
            if isinstance(cfg, SpoolReceiverConfig):
                self._add_spool(cfg.directory, cfg.poll_interval_millis / 1000.0)
            elif isinstance(cfg, HttpReceiverConfig):  # http, and otlp (a subclass)
                from .http_receiver import HttpReceiver

                spool = self.state_dir / "http-spool" / cid.replace("/", "_")
                self.http_servers.append(
                    HttpReceiver(cfg, spool, self.config, otlp=isinstance(cfg, OtlpReceiverConfig))
                )
                self._add_spool(spool, 0.05)
        # `meterkit dlq replay` hands dead letters back through this spool.
        self.replay_dir = self.state_dir / REPLAY_SPOOL
        self._add_spool(self.replay_dir, 0.5)

    def _add_spool(self, directory: Path, poll: float) -> None:
        if any(r.directory == Path(directory) for r in self.receivers):
            return
        self.receivers.append(
            SpoolReceiver(
                Path(directory),
                self.checkpoint,
                self._emit,
                poll_interval=poll,
                on_corrupt=lambda _key, n: self.metrics.corrupt_bytes.add(n),
            )
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._sender.start()
        self.worker.start()
        for receiver in self.receivers:
            receiver.start()
        for server in self.http_servers:
            server.start()
        logger.info(
            "meterkit agent started: %d receiver(s), exporters %s",
            len(self.receivers),
            [e.name for e in self.exporters],
        )

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading, deliver what was read within ``timeout``, checkpoint, close."""
        if timeout is None:
            timeout = self.config.service.drain_timeout_millis / 1000.0
        self._drain_deadline = time.monotonic() + timeout
        self._stopping.set()
        # Network receivers first (their last writes land in a spool), then the tailers.
        for server in self.http_servers:
            server.shutdown(max(1.0, self._drain_deadline - time.monotonic()))
        for receiver in self.receivers:
            receiver.shutdown(max(1.0, self._drain_deadline - time.monotonic()))
        drained = self.worker.shutdown(timeout)
        left = max(0.0, self._drain_deadline - time.monotonic())
        try:
            self._inflight.put(None, timeout=left + 1.0)
        except queue.Full:
            drained = False
        self._sender.join(left + 2.0)
        drained = drained and not self._abandoning and not self._sender.is_alive()
        for exporter in self.exporters:
            exporter.shutdown()
        self.metrics.shutdown()
        self.dead_letters.close()
        if not drained:
            logger.warning(
                "meterkit agent: stopped before everything read was acknowledged; it will be replayed on restart"
            )
        return drained

    def run_forever(self, done: threading.Event | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``done`` is set), then drain. 0 if fully drained."""
        if done is None:
            done = stop_on_signals()
        self.start()
        done.wait()
        return 0 if self.stop() else 1

    def flush(self, timeout: float = 30.0) -> bool:
        """Deliver everything read so far (receivers keep running)."""
        deadline = time.monotonic() + timeout
        if not self.worker.flush(timeout):
            return False
        with self._inflight.all_tasks_done:
            while self._inflight.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0 or not self._inflight.all_tasks_done.wait(left):
                    return False
        return True

    # -- the pipeline --------------------------------------------------------------------

    def _emit(self, envelope: Envelope) -> bool:
        return self.worker.put(envelope, 0.5)

    def _export(self, batch: list[Envelope]) -> bool:
        """The delivery worker's step: parse and process a batch, then hand it to the
        sender. Preparing batch N+1 while batch N is on the wire keeps the agent busy
        while the backend works; the sender commits strictly in order."""
        if not batch:
            return True
        prepared = self._prepare(batch)
        while True:
            try:
                self._inflight.put(prepared, timeout=0.5)
                return True
            except queue.Full:
                if self._stopping.is_set() and time.monotonic() >= self._drain_deadline:
                    return False  # not handed over, not committed: replayed on the next start

    def _prepare(self, batch: list[Envelope]) -> _Prepared:
        p = _Prepared()
        for env in batch:
            p.positions[env.source] = max(p.positions.get(env.source, 0), env.end)
            try:
                body = orjson.loads(env.payload)
            except orjson.JSONDecodeError as exc:
                p.broken.append((env.payload.decode("utf-8", "replace"), "invalid:not_json", str(exc)))
                continue
            if env.kind == KIND_MEASUREMENT:
                p.records.append(body)
                p.trusted.append(env.validated is not None and env.validated == self._validated_token)
                if isinstance(body, dict) and isinstance(body.get("uid"), str):
                    p.sources.setdefault(env.source, (env.writer, []))[1].append(body["uid"])
            else:
                self._control(body)
                if isinstance(body, dict) and body.get("type") in ("tally", "losses"):
                    p.journal.append(
                        {**body, "type": f"sdk_{body['type']}", "source": env.source, "writer": env.writer}
                    )
        self.metrics.received.add(len(p.records))
        for process in self.processors:
            if isinstance(process, ValidateProcessor):
                p.records, refused = process(p.records, p.trusted)
            else:
                p.records, refused = process(p.records)
            p.rejected.extend(refused)
        return p

    def _send_loop(self) -> None:
        """The sender thread: commit prepared batches in order; retire idle segments."""
        while True:
            try:
                item = self._inflight.get(timeout=0.5)
            except queue.Empty:
                try:
                    self._retire()  # a segment sealed after its last batch was acknowledged
                except Exception as exc:
                    background_error("segment retirement", exc)
                continue
            try:
                if item is None:
                    return
                while not self._abandoning:
                    try:
                        if self._commit(item):
                            break
                    except Exception as exc:
                        background_error("delivery", exc)
                    if self._stopping.is_set() and time.monotonic() >= self._drain_deadline:
                        # Out of time. This batch and every later one stay uncommitted (the
                        # checkpoint must never pass a batch that was not acknowledged); the
                        # spool replays them on the next start.
                        self._abandoning = True
                    else:
                        self._stopping.wait(1.0)
            finally:
                self._inflight.task_done()

    def _commit(self, p: _Prepared) -> bool:
        rejected = list(p.rejected)
        records = p.records
        answers: list[dict[str, Any]] = []
        for exporter in self.exporters:
            try:
                refused = self._with_retries(exporter, records)
            except RetryLater:
                return False  # stopping, or a long outage: the sender waits and tries again
            rejected.extend(refused)
            answers.append(
                {
                    "exporter": exporter.name,
                    "status": "acknowledged",
                    "refused": len(refused),
                    "answer": getattr(exporter, "last_answer", ""),
                }
            )
        refused_ids = {id(r.measurement) for r in rejected}
        delivered = [m for m in records if id(m) not in refused_ids]
        journal = list(p.journal)
        positions, sources, broken = p.positions, p.sources, p.broken

        # Dead letters are stored, then the journal entry (which carries the checkpoint
        # positions) is appended and fsynced, then the checkpoint file follows. A crash
        # before the journal append replays the batch; after it, the journal says where
        # to resume.
        self.dead_letters.add("agent", [(r.measurement, r.reason, r.detail) for r in rejected] + broken)
        if rejected or broken:
            journal.append(self._dead_letter_entry(rejected, broken))
        delivered_uids = {m["uid"] for m in delivered}
        journal.append(
            {
                "type": "delivery",
                "batch": uuid.uuid4().hex,
                "idempotency_key": idempotency_key(delivered_uids),
                "uid_digest": uid_digest(delivered_uids),
                "count": len(delivered),
                "totals": tally(delivered),
                "sources": [
                    {"segment": seg, "writer": writer, "uids": compress_uids(u for u in uids if u in delivered_uids)}
                    for seg, (writer, uids) in sources.items()
                ],
                "exporters": answers,
                "positions": positions,
            }
        )
        self.journal.append(journal)
        self.checkpoint.advance(positions, self.journal.seq)
        for r in rejected:
            self.metrics.dead_lettered.add(1, {"reason": r.reason})
            if r.reason.startswith("rejected_by_backend"):
                self.metrics.rejected.add(1)
        self.metrics.delivered.add(len(delivered))
        now = time.time_ns()
        for m in delivered:
            with contextlib.suppress(KeyError, ValueError):
                self.metrics.latency.record(max(0.0, (now - wire_ts_ns(m["ts"])) / 1e9))
        self._retire()
        return True

    @staticmethod
    def _dead_letter_entry(rejected: list[Rejected], broken: list[tuple[Any, str, str]]) -> dict[str, Any]:
        reasons = Counter(r.reason for r in rejected) + Counter(reason for _, reason, _ in broken)
        measurements = [r.measurement for r in rejected if isinstance(r.measurement, dict)]
        uids = [m["uid"] for m in measurements if isinstance(m.get("uid"), str)]
        return {
            "type": "dead_letter",
            "count": len(rejected) + len(broken),
            "reasons": dict(reasons),
            "totals": tally(measurements),
            "uids": compress_uids(uids),
        }

    def _with_retries(self, exporter: Exporter, records: list[dict[str, Any]]) -> list[Rejected]:
        retry = self._retry_cfg.get(exporter.name, RetryConfig())

        def stop(state: tenacity.RetryCallState) -> bool:
            # Keep trying while running (the spool holds everything); give up only to let a
            # shutdown finish within its deadline, or to let the worker back off after a
            # long outage and pick up where it was.
            if self._stopping.is_set() and time.monotonic() >= self._drain_deadline:
                return True
            return (state.seconds_since_start or 0.0) > 120

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.metrics.retried.add(1)
            exc = state.outcome.exception() if state.outcome else None
            logger.warning("meterkit agent: %s: %s; retrying in %.1f s", exporter.name, exc, state.upcoming_sleep)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetryLater),
            wait=_Wait(retry),
            stop=stop,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(exporter.export, records)

    def _sleep(self, seconds: float) -> None:
        """Back off, but never past the drain deadline once stopping."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stopping.is_set():
                end = min(end, self._drain_deadline)
                time.sleep(max(0.0, min(left, 0.05)))
            else:
                self._stopping.wait(left)

    def _control(self, body: Any) -> None:
        if isinstance(body, dict) and body.get("type") == "losses":
            for e in body.get("entries", []):
                reason = str(e.get("reason"))
                count = int(e.get("count", 0))
                self.sdk_losses[reason] += count
                self.metrics.sdk_lost.add(count, {"reason": reason})

    def _retire(self) -> None:
        retention = self.config.service.retain_segments_hours
        for receiver in self.receivers:
            for seg in receiver.retirable():
                try:
                    if retention > 0:
                        target = private_dir(self.state_dir / "retained")
                        shutil.move(str(seg.path), target / seg.path.name)
                    else:
                        seg.path.unlink(missing_ok=True)
                except OSError as exc:
                    background_error("segment retirement", exc)
                    continue
                receiver.forget(seg)
                self.checkpoint.forget(seg.key)
        if retention > 0:
            self._purge_retained(retention)

    def _purge_retained(self, hours: float) -> None:
        folder = self.state_dir / "retained"
        cutoff = time.time() - hours * 3600
        for path in folder.glob("*.mks"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue
