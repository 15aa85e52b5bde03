"""Redundancy (issue 16): what a second destination costs, how fast a standby takes over,
and whether a destination that is down delays a healthy one. Real agent processes deliver
to sinks on 127.0.0.1 (bench/redundancy_sink.py, processes of their own), which speak
m3ter's measurements API, decode every request, count measurements and distinct uids, and
note arrival times.

- **A second destination** (``second_destination``). One spool of ``n`` measurements,
  written beforehand, is moved into the spool of an agent that is already up and idle;
  the agent has one exporter, or two (one pipeline, two m3ter exporters to two sinks).
  Measured: the agent process's CPU (``/proc/<pid>/stat``, all threads) from the move until
  every sink holds every uid and the agent is idle again, per measurement; runs alternate.
  *The serialisation a destination needs* is measured apart, in this process on one thread
  over the same records: what one destination does to put a measurement in a request
  (``orjson`` with sorted keys, as the pipeline encodes it, the request body's join, and
  gzip level 1, as :class:`IngestExporter` sends it). The target: the agent's extra CPU
  with two destinations is at most that (the median, over the runs, of two minus one,
  each pair run back to back). Beside it, what a second destination of a shared pipeline
  still does on its own is measured alone (``own_work_us``): its commit, and its HTTP
  requests through the exporters' transport; the reading, parsing, validation and
  serialisation are shared (``pipeline/feed.py``, ``IngestExporter.requests_for``), so
  these are what the extra is made of. The sinks only count during a run (they decode
  everything once it is over): on two cores, a sink parsing every measurement as it
  arrives takes the cores from the agent it measures.
- **Take-over** (``takeover``). Two ``agent run --standby`` on one state directory while
  this process records at a steady rate; the leader is SIGKILLed or SIGSTOPped. Measured
  from the signal: until the next lease epoch exists (:func:`read_lease`), and until the
  sink receives the first request carrying that epoch (``X-Meterkit-Lease-Epoch``).
- **A destination down** (``latency_with_other_down``). Destination A's latency, recording
  time (each measurement's ``ts``) to arrival at its sink, for every measurement of a
  paced phase: A alone; A with B healthy; A with B answering 503 throughout a minute.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from procs import cpu_seconds, wait_until
from redundancy_sink import Sink

import meterkit
from meterkit._frames import batch_records
from meterkit._spool import KIND_BATCH, read_segment

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"  # noqa: S105 - a local benchmark's made-up token
#: How long a paused leader stays paused if the new leader has not delivered yet.
STALL_S = 5.0
BATCH = "batch: {max_measurements: 1000, timeout_millis: 100}"


class Agent:
    """An ``agent run`` process with the given sinks as its exporters (one pipeline)."""

    def __init__(self, work: Path, spool: Path, sinks: list[Sink], standby: bool = False, name: str = "a") -> None:
        self.state = work / "state"
        spool.mkdir(parents=True, exist_ok=True)
        config = work / "agent.yaml"
        if not config.exists():
            exporters = ", ".join(
                f"m3ter/{i}: {{base_url: '{s.url}', org_id: bench, token: {TOKEN}}}" for i, s in enumerate(sinks)
            )
            ids = ", ".join(f"m3ter/{i}" for i in range(len(sinks)))
            config.write_text(
                f"receivers: {{spool: {{directory: {spool}, poll_interval_millis: 50}}}}\n"
                f"processors: {{validate: {{}}, {BATCH}}}\n"
                f"exporters: {{{exporters}}}\n"
                f"service: {{state_dir: {self.state}, pipelines: {{usage: "
                f"{{receivers: [spool], processors: [validate, batch], exporters: [{ids}]}}}}}}\n"
            )
        cli = [sys.executable, "-m", "meterkit_agent.cli", "agent", "run", "--config", str(config)]
        self.log = work / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*cli, *(["--standby"] if standby else [])], stdout=out, stderr=out)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def idle(self, timeout: float = 60) -> bool:
        """Wait until the agent's CPU grows by under 10% of a core over a quarter second."""

        def quiet() -> bool:
            before = self.cpu()
            time.sleep(0.25)
            return self.cpu() - before < 0.025

        return wait_until(quiet, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _template(spool: Path, n: int) -> None:
    client = meterkit.Client(spool_dir=spool)
    for i in range(n):
        client.record("api_calls", account="bench", measure={"calls": 1, "seq": i})
    client.shutdown(60)


def serialisation_us(spool: Path, runs: int = 3) -> float:
    """One destination's encoding of a measurement into a request (median of ``runs``, µs)."""
    from meterkit_agent.exporters.exporterhelper import request_body

    records = [
        m
        for p in sorted(spool.glob("*.mks"))
        for f in read_segment(p).frames
        if f.kind == KIND_BATCH
        for m in batch_records(f.payload)
    ]
    timings = []
    for _ in range(runs):
        start = time.process_time()
        for i in range(0, len(records), 1000):
            batch = records[i : i + 1000]
            encoded = [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in batch]
            gzip.compress(request_body(list(zip(batch, encoded, strict=True))), compresslevel=1)
        timings.append((time.process_time() - start) / len(records) * 1e6)
    return round(statistics.median(timings), 2)


def own_work_us(spool: Path, work: Path, runs: int = 3) -> dict[str, float]:
    """What a second destination of a shared pipeline still does on its own, each measured
    alone on this thread (median of ``runs``, µs per measurement): its commit (dead letters,
    journal entry with the batch's summary already made, checkpoint) and its requests (an
    m3ter exporter sending each batch, cut as the agent cuts it, with the request bodies the
    first destination's exporter made: :meth:`IngestExporter.requests_for`)."""
    from meterkit_agent.audit.journal import Journal
    from meterkit_agent.exporters.m3ter import M3terExporter, M3terExporterConfig
    from meterkit_agent.pipeline.checkpoint import Checkpoint
    from meterkit_agent.pipeline.commit import Committer
    from meterkit_agent.pipeline.deadletters import DeadLetters
    from meterkit_agent.pipeline.prepare import Prepared, Preparer
    from meterkit_agent.pipeline.telemetry import AgentMetrics
    from meterkit_agent.receivers.spool import Envelope

    metrics = AgentMetrics(work, lambda: 0)
    preparer, batches, p = Preparer([], metrics), [], Prepared()
    for path in sorted(spool.glob("*.mks")):
        for f in read_segment(path).frames:
            preparer.take(p, Envelope(str(path), "w", None, f.offset + 9 + len(f.payload), f.kind, f.payload, 0))
            if len(p.records) >= 1000:
                batches.append(preparer.finish(p))
                p = Prepared()
    if p.taken:
        batches.append(preparer.finish(p))
    n = sum(len(b.records) for b in batches)
    answer = [{"exporter": "m3ter", "status": "acknowledged", "refused": 0, "answer": ""}]
    sink = Sink(latency=False)
    exporters = [
        M3terExporter(f"m3ter/{i}", M3terExporterConfig(base_url=sink.url, org_id="bench", token=TOKEN))
        for i in range(2)
    ]
    commit, http = [], []
    try:
        first = Committer(Journal(work / "first"), Checkpoint(work / "first"), DeadLetters(work / "first"), metrics)
        for b in batches:  # the first destination: its requests make the bodies, its commit the summary
            exporters[0].export(b.records)
            first(b, [], answer)
        for r in range(runs):
            state = work / f"second-{r}"
            committer = Committer(Journal(state), Checkpoint(state), DeadLetters(state), metrics)
            start = time.process_time()
            for b in batches:
                committer(b, [], answer)
            commit.append((time.process_time() - start) / n * 1e6)
            start = time.process_time()
            for b in batches:
                exporters[1].export(b.records)
            http.append((time.process_time() - start) / n * 1e6)
    finally:
        for exporter in exporters:
            exporter.shutdown()
        sink.close()
        metrics.shutdown()
    return {"commit_us": round(statistics.median(commit), 2), "http_us": round(statistics.median(http), 2)}


def _one_delivery(work: Path, template: Path, destinations: int, n: int) -> dict[str, Any]:
    """One agent with ``destinations`` sinks delivers the template's ``n`` measurements."""
    spool = work / "spool"
    spool.mkdir(parents=True)
    sinks = [Sink(latency=False) for _ in range(destinations)]
    agent = Agent(work, spool, sinks)
    try:
        if not agent.idle():
            raise RuntimeError("the agent did not settle")
        cpu0, start = agent.cpu(), time.perf_counter()
        for segment in sorted(template.glob("*.mks")):
            shutil.copy2(segment, work / segment.name)
            os.rename(work / segment.name, spool / segment.name)  # whole, at once
        done = wait_until(lambda: all(s.quick()["arrived"] >= n for s in sinks), 300)
        wall = time.perf_counter() - start
        agent.idle()
        cpu = agent.cpu() - cpu0
        got = [s.stats() for s in sinks]
    finally:
        agent.stop()
        for s in sinks:
            s.close()
    return {
        "cpu_us": cpu / n * 1e6,
        "wall_s": wall,
        "exact": done and all(g["unique"] == n and g["seq_sum"] == n * (n - 1) // 2 for g in got),
        "resent": sum(g["count"] - g["unique"] for g in got),
    }


def second_destination(n: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template"
        _template(template, n)
        encode = serialisation_us(template)
        own = own_work_us(template, Path(tmp) / "own")
        rows: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
        for r in range(runs):  # each pair back to back, in turns first: the machine drifts
            for d in (1, 2) if r % 2 == 0 else (2, 1):
                rows[d].append(_one_delivery(Path(tmp) / f"run{r}-{d}", template, d, n))
    cpu = {d: sorted(row["cpu_us"] for row in rows[d]) for d in rows}
    med = {d: statistics.median(cpu[d]) for d in cpu}
    extras = sorted(two["cpu_us"] - one["cpu_us"] for one, two in zip(rows[1], rows[2], strict=True))
    extra = statistics.median(extras)
    return {
        "n": n,
        "runs": runs,
        "rows": {
            f"{d} destination{'s' if d > 1 else ''}": {
                "agent_cpu_us_median": round(med[d], 2),
                "agent_cpu_us_min": round(cpu[d][0], 2),
                "agent_cpu_us_max": round(cpu[d][-1], 2),
                "wall_s_median": round(statistics.median(row["wall_s"] for row in rows[d]), 2),
            }
            for d in rows
        },
        "extra_cpu_us": round(extra, 2),
        "extra_cpu_us_min": round(extras[0], 2),
        "extra_cpu_us_max": round(extras[-1], 2),
        "two_x_one": round(med[2] / med[1], 2),
        "serialisation_us": encode,
        "own_commit_us": own["commit_us"],
        "own_http_us": own["http_us"],
        "extra_x_serialisation": round(extra / encode, 2),
        "exact": all(row["exact"] for d in rows for row in rows[d]),
        "resent": sum(row["resent"] for d in rows for row in rows[d]),
    }


class Producer:
    """Records ``rate`` measurements a second (``seq`` 0, 1, ...) until stopped."""

    def __init__(self, spool: Path, rate: int) -> None:
        self.client = meterkit.Client(spool_dir=spool)
        self.rate, self.sent, self._stop = rate, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            for _ in range(50):
                self.client.record("api_calls", account="bench", measure={"calls": 1, "seq": self.sent})
                self.sent += 1
            delay = start + self.sent / self.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        self.client.shutdown(60)
        return self.sent


def _leader(state: Path) -> tuple[int, int]:
    from meterkit_agent.lease import read_lease

    info = read_lease(state)
    return (info.epoch, info.pid) if info is not None and info.alive else (0, 0)


def _take_over(work: Path, agents: list[Agent], sink: Sink, how: signal.Signals) -> dict[str, float]:
    """Signal the leader; seconds until the next epoch, and until its first delivery."""
    state = agents[0].state
    if not wait_until(lambda: _leader(state)[1] in {a.proc.pid for a in agents}, 60):
        raise RuntimeError("no agent leads")
    epoch, pid = _leader(state)
    leader = next(a for a in agents if a.proc.pid == pid)
    other = next(a for a in agents if a is not leader)
    ready = f"lease epoch {epoch} of "
    if not wait_until(lambda: ready in other.log.read_text(errors="replace"), 60):
        raise RuntimeError("the standby never stood by")
    if not wait_until(lambda: str(epoch) in sink.quick()["first_by_epoch"], 60):
        raise RuntimeError(f"epoch {epoch} never delivered")
    start = time.time()
    leader.proc.send_signal(how)
    if not wait_until(lambda: _leader(state)[0] > epoch, 30):
        raise RuntimeError(f"no take-over after {how.name}")
    lease_s = time.time() - start
    delivered = lambda: str(epoch + 1) in sink.quick()["first_by_epoch"]  # noqa: E731
    # A leader paused inside a commit holds the commit lock, which the new leader takes once
    # before it reads state (meterkit_agent.lease): after STALL_S the paused one is woken.
    stalled = not wait_until(delivered, 30 if how == signal.SIGKILL else STALL_S)
    if how == signal.SIGSTOP:
        leader.proc.send_signal(signal.SIGCONT)  # it finds itself fenced and stands by again
    if stalled and not wait_until(delivered, 30):
        raise RuntimeError(f"epoch {epoch + 1} never delivered")
    first_s = sink.quick()["first_by_epoch"][str(epoch + 1)] - start
    if how == signal.SIGKILL:
        leader.proc.wait()
        agents[agents.index(leader)] = Agent(work, work / "spool", [sink], standby=True, name=f"r{epoch}")
    return {"lease_s": lease_s, "first_delivery_s": first_s, "stalled": float(stalled)}


def takeover(rounds: int, rate: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sink = Sink(latency=False)
        producer = Producer(work / "spool", rate)
        agents = [Agent(work, work / "spool", [sink], standby=True, name=name) for name in ("a", "b")]
        times: dict[str, list[dict[str, float]]] = {"SIGKILL": [], "SIGSTOP": []}
        try:
            for _ in range(rounds):
                for how in (signal.SIGKILL, signal.SIGSTOP):
                    times[how.name].append(_take_over(work, agents, sink, how))
        finally:
            sent = producer.stop()
        try:
            wait_until(lambda: sink.stats()["unique"] >= sent, 120)
            got = sink.stats()
        finally:
            for agent in agents:
                agent.stop()
            sink.close()
    figures: dict[str, Any] = {}
    for name, found in times.items():
        for key in ("lease_s", "first_delivery_s"):
            values = sorted(t[key] for t in found)
            figures[f"{name.lower()}_{key}"] = {
                "min": round(values[0], 3),
                "median": round(statistics.median(values), 3),
                "max": round(values[-1], 3),
            }
    figures["sigstop_rounds_stalled_on_commit_lock"] = int(sum(t["stalled"] for t in times["SIGSTOP"]))
    return {
        "rounds_each": rounds,
        "stall_s": STALL_S,
        "rate_per_s": rate,
        "times": figures,
        "recorded": sent,
        "lost": sent - got["unique"],
        "resent": got["count"] - got["unique"],
        "sum_matches": got["seq_sum"] == sent * (sent - 1) // 2 and got["unique"] == sent,
    }


def _latency_phase(work: Path, other: int | None, seconds: float, rate: int) -> dict[str, Any]:
    """A's latency over a paced phase, with no B, or B answering ``other``."""
    sinks = [Sink()] + ([Sink(other)] if other is not None else [])
    spool = work / "spool"
    agent = Agent(work, spool, sinks)
    try:
        if not agent.idle():
            raise RuntimeError("the agent did not settle")
        producer = Producer(spool, rate)
        time.sleep(seconds)
        sent = producer.stop()
        wait_until(lambda: sinks[0].stats()["unique"] >= sent, 120)
        a = sinks[0].stats()
        b = sinks[1].stats() if other is not None else None
    finally:
        agent.stop()
        for s in sinks:
            s.close()
    found = {**a["latency"], "recorded": sent, "a_lost": sent - a["unique"]}
    if b is not None:
        found["b_requests"], found["b_stored"] = b["requests"], b["unique"]
    return found


def latency_with_other_down(seconds: float, outage: float, rate: int) -> dict[str, Any]:
    """A alone and beside a healthy B for ``seconds``; beside B answering 503 for ``outage``
    (the issue asks for a minute)."""
    with tempfile.TemporaryDirectory() as tmp:
        phases = {"a_alone": (None, seconds), "b_healthy": (200, seconds), "b_503": (503, outage)}
        rows = {name: _latency_phase(Path(tmp) / name, other, length, rate) for name, (other, length) in phases.items()}
    return {
        "seconds": seconds,
        "outage_seconds": outage,
        "rate_per_s": rate,
        "rows": rows,
        "p99_503_x_alone": round(rows["b_503"]["p99_s"] / max(rows["a_alone"]["p99_s"], 0.001), 2),
        "p99_503_x_healthy": round(rows["b_503"]["p99_s"] / max(rows["b_healthy"]["p99_s"], 0.001), 2),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """The redundancy figures (see the module docstring)."""
    return {
        "second_destination": second_destination(30_000 if quick else 200_000, 2 if quick else 5),
        "takeover": takeover(2 if quick else 5, 2_000),
        "latency_with_other_down": latency_with_other_down(4 if quick else 15, 4 if quick else 60, 5_000),
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
