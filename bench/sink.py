"""A counting receiver for the peers that do not deliver to the ledger: Segment's batch API
(``POST /v1/batch``, JSON) and OTLP/HTTP (``POST /v1/logs`` and ``/v1/metrics``, protobuf).

It runs as a process of its own (``python bench/sink.py`` prints its port, then serves until
stdin closes), so its CPU is never counted in the process of the client being measured, as a
real collector or analytics endpoint would not be. It decodes every request in full, as a real
receiver must, and counts events per kind and per account (Segment's ``userId``, the
``account`` attribute of an OTLP log record or data point), noting when each count last grew:
``GET /count`` answers ``{"<kind>/<account>": [count, last_change_epoch_s]}``. For metrics the
count is the sum of the data points' values: a counter delivers a total, not events.
"""

from __future__ import annotations

import gzip
import json
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue


class Counts:
    """Events received, by ``kind/account``, with the time each count last grew."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[float]] = {}

    def add(self, kind: str, by_account: dict[str, int]) -> None:
        now = time.time()
        with self._lock:
            for account, n in by_account.items():
                entry = self._counts.setdefault(f"{kind}/{account}", [0, 0.0])
                entry[0] += n
                entry[1] = now

    def snapshot(self) -> dict[str, list[float]]:
        with self._lock:
            return {key: list(value) for key, value in self._counts.items()}


def _account(attributes: Iterable[KeyValue]) -> str:
    for kv in attributes:
        if kv.key == "account":
            return str(kv.value.string_value)
    return ""


def segment_batch(body: bytes) -> dict[str, int]:
    counted: dict[str, int] = {}
    for event in json.loads(body).get("batch", []):
        account = str(event.get("userId", ""))
        counted[account] = counted.get(account, 0) + 1
    return counted


def otlp_logs(body: bytes) -> dict[str, int]:
    counted: dict[str, int] = {}
    request = ExportLogsServiceRequest.FromString(body)
    for resource in request.resource_logs:
        for scope in resource.scope_logs:
            for record in scope.log_records:
                account = _account(record.attributes)
                counted[account] = counted.get(account, 0) + 1
    return counted


def otlp_metric_sums(body: bytes) -> dict[str, int]:
    counted: dict[str, int] = {}
    request = ExportMetricsServiceRequest.FromString(body)
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.sum.data_points:
                    account = _account(point.attributes)
                    counted[account] = counted.get(account, 0) + int(point.as_int)
    return counted


DECODERS = {"/v1/batch": ("segment", segment_batch), "/v1/logs": ("otlp_logs", otlp_logs)}
DECODERS["/v1/metrics"] = ("otlp_metric_sum", otlp_metric_sums)


def serve() -> ThreadingHTTPServer:
    counts = Counts()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm on, the body would
        # wait for the client's delayed ACK (40 ms on Linux) and the sink would set the pace.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200, json.dumps(counts.snapshot()).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            found = DECODERS.get(self.path.split("?")[0])
            if found is None:
                self._answer(404, b'{"error": "unknown path"}')
                return
            kind, decode = found
            counts.add(kind, decode(body))
            if kind == "segment":
                self._answer(200, b'{"success": true}')
            else:  # an empty Export*ServiceResponse: full success
                self._answer(200, b"", "application/x-protobuf")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    httpd = serve()
    print(httpd.server_address[1], flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin (or exits)
    httpd.shutdown()
