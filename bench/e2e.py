"""End-to-end benchmark: application threads → spool → agent → ledger over HTTP, and the
same burst through the Segment client and OpenTelemetry's OTLP log exporter into a
counting sink. Run by ``make bench`` (bench/run.py); prints and returns its figures."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

import meterkit

TOKEN = "bench-token"  # noqa: S105 - a local benchmark's made-up token


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _Stack:
    """A ledger and an agent as processes, the SDK in this process."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.spool = work / "spool"
        port = _port()
        self.url = f"http://127.0.0.1:{port}"
        cli = [sys.executable, "-m", "meterkit_agent.cli"]
        db = f"sqlite:///{work / 'ledger.db'}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        self.ledger = subprocess.Popen(
            [*cli, "ledger", "serve", "--db", db, "--port", str(port), "--token", TOKEN], **quiet
        )  # type: ignore[call-overload]
        _wait(self._up, 30)
        config = work / "agent.yaml"
        config.write_text(
            f"receivers: {{spool: {{directory: {self.spool}, poll_interval_millis: 50}}}}\n"
            "processors: {validate: {}, batch: {max_measurements: 1000, timeout_millis: 200}}\n"
            f"exporters: {{m3ter: {{base_url: '{self.url}', org_id: bench, token: {TOKEN}}}}}\n"
            f"service: {{state_dir: {work / 'agent'}, pipelines: {{usage: "
            "{receivers: [spool], processors: [validate, batch], exporters: [m3ter]}}}\n"
        )
        self.agent = subprocess.Popen([*cli, "agent", "run", "--config", str(config)], **quiet)  # type: ignore[call-overload]
        self.client = meterkit.configure(spool_dir=self.spool)

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=1).ok
        except requests.RequestException:
            return False

    def count(self) -> int:
        return int(requests.get(f"{self.url}/health", timeout=10).json()["measurements"])

    def total(self, account: str) -> tuple[int, float]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        base = f"{self.url}/organizations/bench/usage"
        n = requests.get(
            base,
            params={"meter": "api_calls", "account": account, "aggregation": "COUNT"},
            headers=headers,
            timeout=120,
        ).json()["data"]
        s = requests.get(
            base, params={"meter": "api_calls", "account": account, "field": "seq"}, headers=headers, timeout=120
        ).json()["data"]
        return (n[0]["value"] if n else 0), (s[0]["value"] if s else 0.0)

    def histogram(self) -> dict[str, Any]:
        status = json.loads((self.work / "agent" / "status.json").read_text())
        [point] = status["metrics"]["meterkit.agent.delivery_latency"]
        return dict(point)

    def close(self) -> None:
        meterkit.shutdown()
        for p in (self.agent, self.ledger):
            p.send_signal(signal.SIGTERM)
            p.wait(60)


def _latency(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Quantiles of the measurements delivered between two cumulative histogram snapshots."""
    point = {
        "count": after["count"] - before["count"],
        "sum": after["sum"] - before["sum"],
        "bounds": after["bounds"],
        "buckets": [a - b for a, b in zip(after["buckets"], before["buckets"], strict=True)],
        "max": after["max"],
    }
    return {
        "p50_s_at_most": _quantile(point, 0.5),
        "p99_s_at_most": _quantile(point, 0.99),
        "mean_s": round(point["sum"] / max(point["count"], 1), 3),
        "count": point["count"],
    }


def _quantile(point: dict[str, Any], q: float) -> float:
    """Upper bound of the histogram bucket holding quantile ``q``."""
    target, seen = q * point["count"], 0
    for bound, n in zip([*point["bounds"], float("inf")], point["buckets"], strict=True):
        seen += n
        if seen >= target:
            return bound if bound != float("inf") else point["max"]
    return point["max"]


def _record(account: str, n: int, threads: int, rate: float | None = None) -> float:
    """Record n measurements from ``threads`` threads; returns the seconds taken."""
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


def run_meterkit(n: int = 200_000, threads: int = 4) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        stack = _Stack(Path(tmp))
        try:
            cpu0 = _proc_cpu_seconds(stack.agent.pid)
            start = time.perf_counter()
            recorded_s = _record("full", n, threads)
            delivered = _wait(lambda: stack.count() >= n, 600)
            elapsed = time.perf_counter() - start
            agent_cpu = _proc_cpu_seconds(stack.agent.pid) - cpu0
            count, total = stack.total("full")
            rate = n / elapsed
            # Latency at half the sustained rate, measured by the agent (record ts → ack).
            half = max(1000, int(rate / 2))
            m = min(n // 2, half * 10) // threads * threads  # each thread records m / threads
            time.sleep(1.5)  # the status file is rewritten every second
            before = stack.histogram()
            _record("half", m, threads, rate=half)
            _wait(lambda: stack.count() >= n + m, 300)
            time.sleep(1.5)
            lat = _latency(before, stack.histogram())
            half_count, half_total = stack.total("half")
            result = {
                "n": n,
                "threads": threads,
                "recorded_s": round(recorded_s, 2),
                "delivered_s": round(elapsed, 2),
                "throughput_per_s": round(rate),
                "agent_cpu_s": round(agent_cpu, 2),
                "agent_cpu_us_per_measurement": round(agent_cpu / n * 1e6, 1),
                "agent_peak_rss_mib": round(_proc_hwm_mib(stack.agent.pid), 1),
                "delivered_all": delivered,
                "lost": n - count + (m - half_count),
                "duplicated": max(0, count - n) + max(0, half_count - m),
                "sum_matches": total == sum(range(n // threads * threads))
                and half_total == sum(range(m // threads * threads)),
                "half_rate_per_s": half,
                "latency_at_half_rate": lat,
            }
        finally:
            stack.close()
    return result


# -- peers: the same burst through analytics and telemetry pipelines ------------------------


class _Sink:
    """Counts events posted to it: Segment batches (JSON) and OTLP logs (protobuf)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                n = 0
                if self.path.startswith("/v1/logs"):
                    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

                    req = ExportLogsServiceRequest.FromString(body)
                    n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
                else:
                    n = len(json.loads(body).get("batch", []))
                with sink.lock:
                    sink.count += n
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def run_segment(n: int) -> dict[str, Any]:
    import logging

    from segment.analytics import Client

    logging.getLogger("segment").setLevel(logging.CRITICAL)  # it logs every dropped event
    sink = _Sink()
    client = Client("bench-write-key", host=sink.url, upload_size=100)
    for i in range(n):
        client.track(user_id="acme", event="api_calls", properties={"seq": i})
    client.flush()
    client.join()
    _wait(lambda: sink.count >= n, 5)
    sink.close()
    return {"sent": n, "delivered": sink.count, "lost": n - sink.count}


def run_otel_logs(n: int) -> dict[str, Any]:
    import logging

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # it logs every dropped batch
    sink = _Sink()
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{sink.url}/v1/logs")))
    logger = provider.get_logger("bench")
    for i in range(n):
        logger.emit(body="api_calls", attributes={"account": "acme", "seq": i})
    provider.force_flush()
    provider.shutdown()
    _wait(lambda: sink.count >= n, 5)
    sink.close()
    return {"sent": n, "delivered": sink.count, "lost": n - sink.count}


def run_meterkit_burst(n: int) -> dict[str, Any]:
    """The same burst through meterkit, delivered by the agent to the ledger."""
    with tempfile.TemporaryDirectory() as tmp:
        stack = _Stack(Path(tmp))
        try:
            for i in range(n):
                meterkit.record("api_calls", account="burst", measure={"calls": 1, "seq": i})
            meterkit.flush(60)
            _wait(lambda: stack.count() >= n, 120)
            count, _ = stack.total("burst")
        finally:
            stack.close()
    return {"sent": n, "delivered": count, "lost": n - count}


if __name__ == "__main__":
    print(
        json.dumps(
            {"meterkit": run_meterkit(), "segment": run_segment(50_000), "otel": run_otel_logs(50_000)}, indent=2
        )
    )
