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
``reason``), ``lost`` (measurements a destination never got because the spool retired
them first, by ``reason``). Every update of an agent's destinations carries
``destination`` (the exporter's id), so one destination's figures never hide another's.

Every instrument is updated once per batch (a count added, one latency observed), never
once per measurement: an OpenTelemetry ``record`` or ``add`` costs about 5 µs here, as
much as the agent's whole budget for a measurement.
A periodic reader writes a snapshot to ``<state_dir>/status.json`` (mode 0600) for
``meterkit agent status``; any other OpenTelemetry exporter can be added to the same provider.
"""

from __future__ import annotations

import copy
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
    """Writes the latest cumulative values to a JSON file, atomically, while ``writable()``
    (an agent that lost its lease to another leaves the new leader's file alone)."""

    def __init__(self, path: Path, writable: Callable[[], bool] = lambda: True) -> None:
        super().__init__(preferred_temporality={})
        self.path = path
        self.writable = writable

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if not self.writable():
            return MetricExportResult.SUCCESS
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


class _Bound:
    """An instrument with the attributes of one destination added to every update: a
    destination's counts stay apart in the one provider, and each call site reads as if
    the instrument were its own."""

    __slots__ = ("_attributes", "_instrument")

    def __init__(self, instrument: Any, attributes: dict[str, str]) -> None:
        self._instrument = instrument
        self._attributes = attributes

    def add(self, amount: float, attributes: dict[str, Any] | None = None) -> None:
        self._instrument.add(amount, {**self._attributes, **attributes} if attributes else self._attributes)

    def record(self, amount: float, attributes: dict[str, Any] | None = None) -> None:
        self._instrument.record(amount, {**self._attributes, **attributes} if attributes else self._attributes)


#: The instruments a destination updates (the names of :class:`AgentMetrics`' attributes).
_COUNTERS = {
    "received": "{measurement}",
    "delivered": "{measurement}",
    "retried": "{request}",
    "rejected": "{measurement}",
    "dead_lettered": "{measurement}",
    "sdk_lost": "{measurement}",
    "corrupt_bytes": "By",
    # Segments given up on because their writer is gone, by ``reason`` (receivers/spool.py).
    "segments_abandoned": "{segment}",
    "quarantined": "{record}",
    # Measurements a destination never got because the spool retired them first
    # (``service.spool_retention_hours``), by ``reason``.
    "lost": "{measurement}",
}


class AgentMetrics:
    """The agent's instruments in one provider. :meth:`for_destination` gives a view whose
    updates carry ``destination=<exporter id>``, so each destination's counts, queue and
    pauses are told apart in ``status.json`` and in any other metrics backend."""

    received: _Bound
    delivered: _Bound
    retried: _Bound
    rejected: _Bound
    dead_lettered: _Bound
    sdk_lost: _Bound
    corrupt_bytes: _Bound
    segments_abandoned: _Bound
    quarantined: _Bound
    lost: _Bound
    latency: _Bound

    def __init__(
        self,
        state_dir: Path,
        queue_depth: Callable[[], int],
        interval_millis: int = 1000,
        telemetry: Any = None,
        writable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.reader = PeriodicExportingMetricReader(
            StatusFileExporter(state_dir / "status.json", writable),
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
        self._instruments: dict[str, Any] = {
            name: meter.create_counter(f"meterkit.agent.{name}", unit=unit) for name, unit in _COUNTERS.items()
        }
        self._instruments["latency"] = meter.create_histogram("meterkit.agent.delivery_latency", unit="s")
        self._attributes: dict[str, str] = {}
        self._bind()
        # Shared by every view: each destination adds its queue and its paused exporters.
        #: each queue's depth and the attributes it is observed under, by those attributes
        self._queues: dict[str, tuple[Callable[[], int], dict[str, str]]] = {"": (queue_depth, {})}
        self._paused: list[Callable[[], dict[str, int]]] = []

        def observe(_options: CallbackOptions) -> Sequence[Observation]:
            return [Observation(depth(), attributes) for depth, attributes in list(self._queues.values())]

        meter.create_observable_gauge("meterkit.agent.queue_depth", callbacks=[observe], unit="{frame}")

        def observe_paused(_options: CallbackOptions) -> Sequence[Observation]:
            return [
                Observation(1, {"exporter": name, "status": status})
                for paused in list(self._paused)
                for name, status in paused().items()
            ]

        meter.create_observable_gauge("meterkit.agent.paused", callbacks=[observe_paused], unit="{exporter}")

    def _bind(self) -> None:
        for name, instrument in self._instruments.items():
            setattr(self, name, _Bound(instrument, self._attributes))

    def for_destination(self, name: str, queue_depth: Callable[[], int]) -> AgentMetrics:
        """A view of these instruments whose every update says ``destination=name``, with
        ``queue_depth`` observed as that destination's queue."""
        return self._view({"destination": name}, queue_depth)

    def for_feed(self, name: str, queue_depth: Callable[[], int]) -> AgentMetrics:
        """A view for a pipeline's shared feed (:mod:`.feed`): ``feed=name``."""
        return self._view({"feed": name}, queue_depth)

    def _view(self, attributes: dict[str, str], queue_depth: Callable[[], int]) -> AgentMetrics:
        view = copy.copy(self)
        view._attributes = attributes
        view._bind()
        self._queues.pop("", None)  # the agent-wide queue is the destinations' queues now
        self._queues[",".join(f"{k}={v}" for k, v in attributes.items())] = (queue_depth, attributes)
        return view

    def observe_paused(self, paused: Callable[[], dict[str, int]]) -> None:
        """Report the exporters paused for a wrong URL or credentials (exporter -> HTTP status)."""
        self._paused.append(paused)

    def shutdown(self) -> None:
        self.provider.shutdown()


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = orjson.loads((state_dir / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return data
