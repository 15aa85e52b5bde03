"""The agent's own telemetry through OpenTelemetry exporters: a Prometheus scrape endpoint
and OTLP/HTTP metrics to a collector (here a counting sink on 127.0.0.1)."""

from __future__ import annotations

import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

import meterkit
from meterkit_agent.lease import Lease
from meterkit_agent.pipeline.fence import Fence
from meterkit_agent.pipeline.telemetry import AgentMetrics
from tests.agent.conftest import free_port, start_agent, start_ledger, wait_for, write_agent_config
from tests.sdk.helpers import spooled


class MetricsSink:
    def __init__(self) -> None:
        self.names: set[str] = set()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                req = ExportMetricsServiceRequest.FromString(body)
                for rm in req.resource_metrics:
                    for sm in rm.scope_metrics:
                        sink.names.update(m.name for m in sm.metrics)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_agent_metrics_on_prometheus_and_otlp(tmp_path: Path) -> None:
    ledger = start_ledger(tmp_path / "ledger")
    sink = MetricsSink()
    prom = free_port()
    spool = tmp_path / "spool"
    config = write_agent_config(tmp_path, spool, ledger.url)
    config.write_text(
        config.read_text().replace(
            "service:\n",
            f"service:\n  telemetry:\n    metrics:\n      prometheus: {{endpoint: '127.0.0.1:{prom}'}}\n"
            f"      otlp: {{endpoint: '{sink.url}', interval_millis: 200}}\n",
        )
    )
    client = meterkit.Client(spool_dir=spool)
    for i in range(50):
        client.record("m", account="a", measure={"n": i})
    client.shutdown(5)
    assert len(spooled(spool)) == 50
    agent = start_agent(tmp_path, config)
    try:
        wait_for(lambda: ledger.count() == 50, what="delivery")

        def scraped() -> str:
            try:
                return requests.get(f"http://127.0.0.1:{prom}/metrics", timeout=2).text
            except requests.RequestException:
                return ""

        wait_for(lambda: "meterkit_agent_delivered" in scraped(), what="prometheus metrics")
        text = scraped()
        delivered = [
            line
            for line in text.splitlines()
            if line.startswith("meterkit_agent_delivered") and not line.startswith("#")
        ]
        assert delivered and float(delivered[0].split()[-1]) == 50
        assert "meterkit_agent_delivery_latency" in text
        wait_for(
            lambda: {"meterkit.agent.delivered", "meterkit.agent.received", "meterkit.agent.queue_depth"} <= sink.names,
            what="OTLP metrics",
        )
    finally:
        agent.kill(signal.SIGTERM)
        ledger.proc.kill()
        sink.server.shutdown()


def test_the_status_file_is_left_to_the_agent_that_took_the_lease_over(tmp_path: Path) -> None:
    """A leader that lost its lease (to a standby, here in this process) writes no more
    status: the file is the new leader's."""
    state = tmp_path / "state"
    fence = Fence()
    fence.lease = Lease.acquire(state, standby=False)
    metrics = AgentMetrics(state, lambda: 0, interval_millis=60_000, writable=fence.holds)
    status = state / "status.json"
    try:
        metrics.delivered.add(3)
        assert metrics.reader.force_flush() and status.exists()
        status.unlink()
        taken: list[Lease | None] = []
        standby = threading.Thread(target=lambda: taken.append(Lease.acquire(state, standby=True)))
        standby.start()
        fence.lease.release()
        standby.join(10)
        assert taken and taken[0] is not None and not fence.holds()
        metrics.delivered.add(1)
        assert metrics.reader.force_flush()
        assert not status.exists()
        taken[0].release()
    finally:
        metrics.shutdown()
