"""End to end: application threads → spool → agent → ledger over HTTP, three processes on
this machine. ``run()`` returns the figures (``make bench`` prints them beside the rest);
``.venv/bin/python bench/e2e.py`` prints them as JSON.

What is measured, and how it is kept honest:

- **Throughput.** ``n`` measurements recorded by ``threads`` threads as fast as they go,
  timed from the first record until the ledger holds them all.
- **CPU per measurement, per process.** Each process's CPU time, all of its threads, over
  that phase (``/proc/<pid>/stat`` for the agent and the ledger, ``time.process_time`` for
  this process, which records and flushes).
- **None lost, none duplicated, sums exact.** The ledger's COUNT per account must equal
  what was recorded, and its SUM of ``seq`` (0, 1, 2, ... across the threads) must be
  exactly the sum of those integers.
- **Latency at half that rate, per measurement.** A second, paced phase at half the
  measured rate. Each measurement's latency is the time from its recording (its ``ts``, read
  back from the spool segments, which the agent is told to keep) to the acknowledgement of
  the batch that carried it (the ``at`` of the agent's journal entry for that batch, written
  after every exporter acknowledged it). Every measurement is counted, not a sample, and
  not the agent's own histogram.
- **Agent memory.** The agent's peak resident set (``VmHWM``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import requests
from procs import cpu_seconds, free_port, peak_rss_kib, wait_until

import meterkit
from meterkit._frames import batch_records
from meterkit._spool import KIND_BATCH, KIND_MEASUREMENT, read_segment
from meterkit._timefmt import wire_ts_ns
from meterkit_agent.audit.journal import expand_uids, read_entries

TOKEN = "bench-token"  # noqa: S105 - a local benchmark's made-up token


class _Stack:
    """A ledger and an agent as processes, the SDK in this process."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.spool = work / "spool"
        self.state = work / "agent"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cli = [sys.executable, "-m", "meterkit_agent.cli"]
        db = f"sqlite:///{work / 'ledger.db'}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        # The token in the environment: on the command line every user would see it in `ps`.
        env = {**os.environ, "METERKIT_LEDGER_TOKEN": TOKEN}
        self.ledger = subprocess.Popen([*cli, "ledger", "serve", "--db", db, "--port", str(port)], env=env, **quiet)  # type: ignore[call-overload]
        if not wait_until(self._up, 60):
            self.ledger.kill()
            raise RuntimeError("the ledger did not start")
        config = work / "agent.yaml"
        # Segments are kept once delivered (retain_segments_hours): the latency figure reads
        # each measurement's recording time back from them.
        config.write_text(
            f"receivers: {{spool: {{directory: {self.spool}, poll_interval_millis: 50}}}}\n"
            "processors: {validate: {}, batch: {max_measurements: 1000, timeout_millis: 200}}\n"
            f"exporters: {{m3ter: {{base_url: '{self.url}', org_id: bench, token: {TOKEN}}}}}\n"
            f"service: {{state_dir: {self.state}, retain_segments_hours: 1, pipelines: {{usage: "
            "{receivers: [spool], processors: [validate, batch], exporters: [m3ter]}}}\n"
        )
        self.agent = subprocess.Popen([*cli, "agent", "run", "--config", str(config)], **quiet)  # type: ignore[call-overload]
        meterkit.configure(spool_dir=self.spool)

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=1).ok
        except requests.RequestException:
            return False

    def _usage(self, account: str | None, **params: str) -> Decimal:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        accounts = {"account": account} if account is not None else {}
        rows = requests.get(
            f"{self.url}/organizations/bench/usage",
            params={"meter": "api_calls", **accounts, **params},
            headers=headers,
            timeout=120,
        ).json()["data"]
        return sum((Decimal(str(r["value"])) for r in rows), Decimal(0))

    def stored(self) -> int:
        """How many measurements the ledger holds in all, every account's (cheap enough to
        poll: the ledger counts from its hourly rollups)."""
        return int(self._usage(None, aggregation="COUNT"))

    def count(self, account: str) -> int:
        return int(self._usage(account, aggregation="COUNT"))

    def total(self, account: str) -> Decimal:
        return self._usage(account, field="seq")

    def cpu(self) -> dict[str, float]:
        return {
            "app": time.process_time(),
            "agent": cpu_seconds(self.agent.pid),
            "ledger": cpu_seconds(self.ledger.pid),
        }

    def close(self) -> None:
        meterkit.shutdown()
        for p in (self.agent, self.ledger):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def _record(account: str, n: int, threads: int, rate: float | None = None) -> float:
    """Record n measurements (``n`` a multiple of ``threads``), ``seq`` 0 to n-1, from
    ``threads`` threads, paced to ``rate`` a second in all if given. Returns the seconds taken."""
    per = n // threads
    start = time.perf_counter()

    def work(t: int) -> None:
        interval = threads / rate if rate else 0.0
        next_at = time.perf_counter()
        for i in range(per):
            meterkit.record("api_calls", account=account, measure={"calls": 1, "seq": t * per + i})
            if interval:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return time.perf_counter() - start


def _recorded_at(folders: list[Path], account: str) -> dict[str, int]:
    """uid → recording time (ns) of the account's measurements, from the spool segments."""
    found: dict[str, int] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.mks")) if folder.is_dir() else ():
            for frame in read_segment(path).frames:
                if frame.kind == KIND_BATCH:
                    records = batch_records(frame.payload)
                elif frame.kind == KIND_MEASUREMENT:
                    records = [orjson.loads(frame.payload)]
                else:
                    continue
                for m in records:
                    if m.get("account") == account:
                        found[m["uid"]] = wire_ts_ns(m["ts"])
    return found


def _acknowledged_at(journal: Path) -> Iterator[tuple[str, int]]:
    """(uid, when the batch that carried it was journaled, ns) for every delivered uid."""
    for _, entry in read_entries(journal):
        if isinstance(entry, dict) and entry.get("type") == "delivery":
            at = wire_ts_ns(entry["at"])
            for source in entry.get("sources", []):
                for uid in expand_uids(source.get("uids")):
                    yield uid, at


def _latency(stack: _Stack, account: str) -> dict[str, Any]:
    recorded = _recorded_at([stack.spool, stack.state / "retained"], account)
    journal = stack.state / "journal.jsonl"
    waits = sorted((at - recorded[uid]) / 1e9 for uid, at in _acknowledged_at(journal) if uid in recorded)
    if not waits:
        return {"count": 0}

    def quantile(q: float) -> float:
        return round(waits[min(len(waits) - 1, int(q * len(waits)))], 3)

    return {
        "count": len(waits),
        "of_recorded": len(recorded),
        "p50_s": quantile(0.5),
        "p99_s": quantile(0.99),
        "max_s": round(waits[-1], 3),
        "mean_s": round(sum(waits) / len(waits), 3),
    }


def run(quick: bool = False, n: int | None = None, threads: int = 4) -> dict[str, Any]:
    """The end-to-end figures (see the module docstring)."""
    n = (n or (40_000 if quick else 200_000)) // threads * threads
    with tempfile.TemporaryDirectory() as tmp:
        stack = _Stack(Path(tmp))
        try:
            cpu0 = stack.cpu()
            start = time.perf_counter()
            recorded_s = _record("full", n, threads)
            delivered = wait_until(lambda: stack.stored() >= n, 600)
            elapsed = time.perf_counter() - start
            cpu = {k: v - cpu0[k] for k, v in stack.cpu().items()}
            count, total = stack.count("full"), stack.total("full")
            rate = n / elapsed

            half = max(1000, int(rate / 2))
            m = min(n // 2, half * 10) // threads * threads  # about ten seconds at half the rate
            _record("half", m, threads, rate=half)
            wait_until(lambda: stack.stored() >= n + m, 300)
            half_count, half_total = stack.count("half"), stack.total("half")
            meterkit.flush(60)
            latency = _latency(stack, "half")
            result = {
                "n": n,
                "threads": threads,
                "recorded_s": round(recorded_s, 2),
                "delivered_s": round(elapsed, 2),
                "throughput_per_s": round(rate),
                "delivered_all": delivered,
                "lost": max(0, n - count) + max(0, m - half_count),
                "duplicated": max(0, count - n) + max(0, half_count - m),
                "sum_matches": total == sum(range(n)) and half_total == sum(range(m)),
                "app_cpu_us_per_measurement": round(cpu["app"] / n * 1e6, 1),
                "agent_cpu_us_per_measurement": round(cpu["agent"] / n * 1e6, 1),
                "ledger_cpu_us_per_measurement": round(cpu["ledger"] / n * 1e6, 1),
                "agent_peak_rss_mib": round(peak_rss_kib(stack.agent.pid) / 1024, 1),
                "half_rate_per_s": half,
                "latency_at_half_rate": latency,
            }
        finally:
            stack.close()
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
