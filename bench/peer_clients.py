"""The client side of the peer table: one workload per peer, run in a fresh process of its own
(``python bench/peer_clients.py '<json spec>'`` prints one JSON line), so that the process's
CPU time is the client's alone: the calling thread plus every background thread the client
starts (flusher, consumer, batch exporter), and nothing of the receiver's.

Every workload does the same thing in its library's own idiom: a warm-up of
:data:`WARMUP` events (imports, code paths, connections) that is not timed, then ``n`` events
in a tight loop, each built as an application builds it (a fresh dict of properties), then
whatever the library offers to hand everything over (flush, shutdown, a last submit). Timed:

- ``hot_wall_s``: the loop alone, wall clock: what the calling code waits for;
- ``caller_cpu_s``: the loop alone, the calling thread's CPU (``time.thread_time``);
- ``process_cpu_s``: from the loop's start until the hand-over returned, the whole process's
  CPU (``time.process_time``: every thread, including background threads that have ended).

``t0`` (epoch seconds, loop start) and ``t_flushed`` (hand-over returned) let the parent
compute delivered per second from the receiver's own count.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

WARMUP = 2_000
Spec = dict[str, Any]


class Clock:
    """Start, end of the hot loop, end of the hand-over."""

    def start(self) -> None:
        gc.collect()
        self.cpu0, self.thread0 = time.process_time(), time.thread_time()
        self.t0, self.wall0 = time.time(), time.perf_counter()

    def hot_done(self) -> None:
        self.hot_wall_s = time.perf_counter() - self.wall0
        self.caller_cpu_s = time.thread_time() - self.thread0

    def flushed(self) -> dict[str, float]:
        return {
            "hot_wall_s": self.hot_wall_s,
            "caller_cpu_s": self.caller_cpu_s,
            "process_cpu_s": time.process_time() - self.cpu0,
            "t0": self.t0,
            "t_flushed": time.time(),
        }


def meterkit_peer(spec: Spec, clock: Clock) -> dict[str, Any]:
    import meterkit

    settings: dict[str, Any] = {"max_queue_size": spec["n"]} if spec["sized"] else {}
    with tempfile.TemporaryDirectory() as warm:  # warm-up into a spool no agent reads
        meterkit.configure(catalog=spec["catalog"], spool_dir=warm, **settings)
        for _ in range(WARMUP):
            meterkit.record("api_calls", account="warmup", measure={"calls": 1})
        meterkit.shutdown(60)
    client = meterkit.configure(catalog=spec["catalog"], spool_dir=spec["spool"], **settings)
    record, account, n = meterkit.record, spec["account"], spec["n"]
    clock.start()
    for _ in range(n):
        record("api_calls", account=account, measure={"calls": 1})
    clock.hot_done()
    meterkit.shutdown(600)
    return {"sent": n, "lost_by_client": client.stats()["lost"]}


def otel_counter_peer(spec: Spec, clock: Clock) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import Counter, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader

    # Delta temporality, so the receiver may add what each export carries.
    exporter = OTLPMetricExporter(
        endpoint=f"{spec['url']}/v1/metrics", preferred_temporality={Counter: AggregationTemporality.DELTA}
    )
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter)])
    counter = provider.get_meter("bench").create_counter("api_calls")
    for _ in range(WARMUP):
        counter.add(1, {"account": "warmup"})
    attributes, n = {"account": spec["account"]}, spec["n"]
    clock.start()
    for _ in range(n):
        counter.add(1, attributes)
    clock.hot_done()
    provider.shutdown()  # collects and exports the last delta
    return {"sent": n}


def otel_logs_peer(spec: Spec, clock: Clock) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # it logs every dropped record
    provider = LoggerProvider()
    processor = BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=f"{spec['url']}/v1/logs"), max_queue_size=spec["n"] if spec["sized"] else None
    )
    provider.add_log_record_processor(processor)
    logger = provider.get_logger("bench")
    for _ in range(WARMUP):
        logger.emit(body="api_calls", attributes={"account": "warmup", "calls": 1})
    provider.force_flush()
    account, n = spec["account"], spec["n"]
    clock.start()
    for _ in range(n):
        logger.emit(body="api_calls", attributes={"account": account, "calls": 1})
    clock.hot_done()
    provider.force_flush()  # exports everything queued, then stops the worker
    provider.shutdown()
    return {"sent": n}


def segment_peer(spec: Spec, clock: Clock) -> dict[str, Any]:
    from segment.analytics import Client

    logging.getLogger("segment").setLevel(logging.CRITICAL)  # it logs every dropped event
    options: dict[str, Any] = {"max_queue_size": spec["n"]} if spec["sized"] else {}
    client = Client("bench-write-key", host=spec["url"], **options)
    for _ in range(WARMUP):
        client.track(user_id="warmup", event="api_calls", properties={"calls": 1})
    client.flush()
    account, n = spec["account"], spec["n"]
    clock.start()
    for _ in range(n):
        client.track(user_id=account, event="api_calls", properties={"calls": 1})
    clock.hot_done()
    client.shutdown()  # flush (waits until the queue is uploaded), then stop the consumer
    return {"sent": n}


def _m3ter_client(spec: Spec, requests: dict[str, int]) -> Any:
    """The official client with client credentials, as m3ter documents for a service user:
    it exchanges them at /oauth/token for a bearer token. ``requests`` counts what it sends
    by kind (token exchanges, measurement submissions)."""
    import httpx
    import m3ter

    def count(request: httpx.Request) -> None:
        kind = "token" if request.url.path.endswith("/oauth/token") else "submit"
        requests[kind] = requests.get(kind, 0) + 1

    return m3ter.M3ter(
        base_url=spec["url"],
        api_key=spec["client_id"],
        api_secret=spec["client_secret"],
        org_id=spec["org"],
        http_client=httpx.Client(event_hooks={"request": [count]}),
    )


def _m3ter_measurement(account: str) -> dict[str, Any]:
    """What an application hands the m3ter client: it must give each event a uid and a time."""
    return {
        "uid": str(uuid.uuid4()),
        "meter": "api_calls",
        "account": account,
        "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "measure": {"calls": 1},
    }


def m3ter_each_peer(spec: Spec, clock: Clock) -> dict[str, Any]:
    """One synchronous ``usage.submit`` per event: the call returns when the backend stored it."""
    requests: dict[str, int] = {}
    client = _m3ter_client(spec, requests)
    for _ in range(20):  # connection, token exchange
        client.usage.submit(org_id="warmup", measurements=[_m3ter_measurement("warmup")])
    requests.clear()
    submit, account, n = client.usage.submit, spec["account"], spec["n"]
    clock.start()
    for _ in range(n):
        submit(measurements=[_m3ter_measurement(account)])
    clock.hot_done()
    return {"sent": n, "requests": requests}


def m3ter_batched_peer(spec: Spec, clock: Clock) -> dict[str, Any]:
    """The application buffers events and calls ``usage.submit`` with 1,000 at a time, the most
    m3ter's ingest API takes in one request (``submit_all`` chunks the same way); the caller
    waits for each submit, so its time is in the hot path."""
    requests: dict[str, int] = {}
    client = _m3ter_client(spec, requests)
    client.usage.submit(org_id="warmup", measurements=[_m3ter_measurement("warmup") for _ in range(1000)])
    requests.clear()
    submit, account, n, batch = client.usage.submit, spec["account"], spec["n"], spec.get("batch", 1000)
    buffer: list[dict[str, Any]] = []
    clock.start()
    for _ in range(n):
        buffer.append(_m3ter_measurement(account))
        if len(buffer) == batch:
            submit(measurements=buffer)
            buffer = []
    if buffer:
        submit(measurements=buffer)
    clock.hot_done()
    return {"sent": n, "requests": requests}


PEERS: dict[str, Callable[[Spec, Clock], dict[str, Any]]] = {
    "meterkit": meterkit_peer,
    "otel_counter": otel_counter_peer,
    "otel_logs": otel_logs_peer,
    "segment": segment_peer,
    "m3ter_each": m3ter_each_peer,
    "m3ter_batched": m3ter_batched_peer,
}


def main(spec: Spec) -> dict[str, Any]:
    clock = Clock()
    result = PEERS[spec["peer"]](spec, clock)
    return result | clock.flushed()


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
