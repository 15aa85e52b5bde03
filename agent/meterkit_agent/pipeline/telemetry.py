"""The agent's own health, through the OpenTelemetry metrics API.

Instruments (all prefixed ``meterkit.agent.``): ``received``, ``delivered``, ``retried``,
``rejected``, ``dead_lettered`` (with attributes ``reason`` and ``stage``), ``quarantined``
(control records with a wrong shape), ``sdk_lost`` (losses the SDKs reported in their
control records, by ``reason``), ``corrupt_bytes``, ``queue_depth`` (observable),
``paused`` (observable: 1 per exporter paused for a wrong URL or credentials, with
``exporter`` and ``status``), ``delivery_latency`` (histogram, one observation per
delivered batch: seconds from the recording of its oldest measurement to its
acknowledgement, so every measurement of the batch waited at most that long),
``segments_abandoned`` (spool segments given up on because their writer is gone, by
``reason``).

Every instrument is updated once per batch (a count added, one latency observed), never
once per measurement: an OpenTelemetry ``record`` or ``add`` costs about 5 µs here, as
much as the agent's whole budget for a measurement.
A periodic reader writes a snapshot to ``<state_dir>/status.json`` (mode 0600) for
``meterkit agent status``; any other OpenTelemetry exporter can be added to the same provider.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View


class StatusFileExporter(MetricExporter):
    """Writes the latest cumulative values to a JSON file, atomically."""

    def __init__(self, path: Path) -> None:
        super().__init__(preferred_temporality={})
        self.path = path

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        snapshot: dict[str, Any] = {"at": time.time(), "pid": os.getpid(), "metrics": {}}
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = []
                    for p in metric.data.data_points:
                        attrs = dict(p.attributes or {})
                        if hasattr(p, "value"):
                            points.append({"attributes": attrs, "value": p.value})
                        elif isinstance(p, HistogramDataPoint):
                            points.append(
                                {
                                    "attributes": attrs,
                                    "count": p.count,
                                    "sum": p.sum,
                                    "max": p.max,
                                    "buckets": list(p.bucket_counts),
                                    "bounds": list(p.explicit_bounds),
                                }
                            )
                    snapshot["metrics"][metric.name] = points
        tmp = self.path.with_suffix(".tmp")
        # Owner only (0600), whatever the umask or a tmp file an older agent left more open:
        # the status names exporters, accounts' losses and paths (DESIGN.md §7).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, orjson.dumps(snapshot))
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def telemetry_readers(telemetry: Any) -> list[Any]:
    """Metric readers for ``service.telemetry.metrics``: OTLP/HTTP and a Prometheus endpoint."""
    readers: list[Any] = []
    metrics = telemetry.metrics if telemetry is not None else None
    if metrics is not None and metrics.otlp is not None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        headers = {k: v.get_secret_value() for k, v in metrics.otlp.headers.items()}
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=metrics.otlp.endpoint, headers=headers),
                export_interval_millis=metrics.otlp.interval_millis,
            )
        )
    if metrics is not None and metrics.prometheus is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, _, port = metrics.prometheus.endpoint.rpartition(":")
        start_http_server(int(port), addr=host)
        readers.append(PrometheusMetricReader())
    return readers


class AgentMetrics:
    def __init__(
        self, state_dir: Path, queue_depth: Callable[[], int], interval_millis: int = 1000, telemetry: Any = None
    ) -> None:
        self.reader = PeriodicExportingMetricReader(
            StatusFileExporter(state_dir / "status.json"),
            export_interval_millis=interval_millis,
        )
        latency_view = View(
            instrument_name="meterkit.agent.delivery_latency",
            aggregation=ExplicitBucketHistogramAggregation(
                [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300]
            ),
        )
        self.provider = MeterProvider(metric_readers=[self.reader, *telemetry_readers(telemetry)], views=[latency_view])
        meter = self.provider.get_meter("meterkit.agent", "0.1.0")
        self.received = meter.create_counter("meterkit.agent.received", unit="{measurement}")
        self.delivered = meter.create_counter("meterkit.agent.delivered", unit="{measurement}")
        self.retried = meter.create_counter("meterkit.agent.retried", unit="{request}")
        self.rejected = meter.create_counter("meterkit.agent.rejected", unit="{measurement}")
        self.dead_lettered = meter.create_counter("meterkit.agent.dead_lettered", unit="{measurement}")
        self.sdk_lost = meter.create_counter("meterkit.agent.sdk_lost", unit="{measurement}")
        self.corrupt_bytes = meter.create_counter("meterkit.agent.corrupt_bytes", unit="By")
        # Segments given up on because their writer is gone, by ``reason`` (receivers/spool.py).
        self.segments_abandoned = meter.create_counter("meterkit.agent.segments_abandoned", unit="{segment}")
        self.quarantined = meter.create_counter("meterkit.agent.quarantined", unit="{record}")
        self.latency = meter.create_histogram("meterkit.agent.delivery_latency", unit="s")

        def observe(_options: CallbackOptions) -> Sequence[Observation]:
            return [Observation(queue_depth())]

        meter.create_observable_gauge("meterkit.agent.queue_depth", callbacks=[observe], unit="{frame}")
        self._paused: Callable[[], dict[str, int]] = dict

        def observe_paused(_options: CallbackOptions) -> Sequence[Observation]:
            return [Observation(1, {"exporter": name, "status": status}) for name, status in self._paused().items()]

        meter.create_observable_gauge("meterkit.agent.paused", callbacks=[observe_paused], unit="{exporter}")

    def observe_paused(self, paused: Callable[[], dict[str, int]]) -> None:
        """Report the exporters paused for a wrong URL or credentials (exporter -> HTTP status)."""
        self._paused = paused

    def shutdown(self) -> None:
        self.provider.shutdown()


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = orjson.loads((state_dir / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data
