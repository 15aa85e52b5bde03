"""Any language can send usage: the OTLP/HTTP logs receiver, with the real OpenTelemetry
log exporter as the client, and partial success for records that are not measurements.
Records are counted as sent: equal records in one request are distinct measurements, a
byte-identical resend adds nothing, and a record with neither time nor uid is refused."""

from __future__ import annotations

import gzip
import hashlib
import signal
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from fastapi.testclient import TestClient
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from meterkit import load_catalog
from meterkit._sinks import SpoolSink
from meterkit._spool import KIND_MEASUREMENT, iter_records
from meterkit_agent.receivers.otlp import OTLP_NAMESPACE, OtlpReceiverConfig, create_otlp_app, to_measurements
from tests.agent.conftest import (
    TOKEN,
    LedgerServer,
    Proc,
    free_port,
    start_agent,
    start_ledger,
    wait_for,
    write_agent_config,
)
from tests.conftest import CATALOG


def ledger_and_otlp_agent(tmp_path: Path) -> tuple[LedgerServer, int, Proc]:
    """A ledger, and an agent process delivering to it from an OTLP/HTTP receiver: (the
    ledger, the receiver's port, the agent)."""
    ledger = start_ledger(tmp_path / "ledger")
    port = free_port()
    receiver = f"  otlp: {{endpoint: '127.0.0.1:{port}'}}"
    config = write_agent_config(tmp_path, tmp_path / "spool", ledger.url, CATALOG, extra_receivers=receiver)
    config.write_text(config.read_text().replace("receivers: [spool, http]", "receivers: [spool, otlp]"))
    return ledger, port, start_agent(tmp_path, config)


def test_the_otel_log_exporter_delivers_usage_through_the_agent(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    ledger, port, agent = ledger_and_otlp_agent(tmp_path)
    url = f"http://127.0.0.1:{port}/v1/logs"
    try:
        # A service written in any language: here, OpenTelemetry's own Python log pipeline.
        provider = LoggerProvider(
            resource=Resource.create({"service.name": "billing-demo", "meterkit.account": "acme"})
        )
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=url)))
        logger = provider.get_logger("usage")
        for i in range(40):
            logger.emit(
                body="download",
                attributes={
                    "meterkit.meter": "data_downloaded",
                    "meterkit.measure.bytes": 100 + i,
                    "meterkit.who.user": f"u{i % 3}",
                },
            )
        logger.emit(
            body="login",
            attributes={
                "meterkit.meter": "logins",
                "meterkit.account": "globex",
                "meterkit.measure.logins": 1,
                "meterkit.who.user": "g1",
                "meterkit.uid": "login-1",
            },
        )
        assert provider.force_flush()
        provider.shutdown()
        wait_for(lambda: ledger.count() == 41, timeout=30, what="OTLP-received delivery")
        data = ledger.get("/organizations/test-org/usage", meter="data_downloaded", field="bytes")["data"]
        assert data == [{"meter": "data_downloaded", "account": "acme", "value": sum(100 + i for i in range(40))}]
        assert ledger.get("/organizations/test-org/measurements/login-1")["account"] == "globex"

        # Partial success, protobuf: one measurement, one plain log line, one bad measurement.
        request = json_format.ParseDict(
            {
                "resourceLogs": [{"scopeLogs": [{"logRecords": [
                    {"timeUnixNano": "1767225600000000000", "attributes": [
                        {"key": "meterkit.meter", "value": {"stringValue": "logins"}},
                        {"key": "meterkit.account", "value": {"stringValue": "acme"}},
                        {"key": "meterkit.measure.logins", "value": {"intValue": "1"}}]},
                    {"body": {"stringValue": "just a log line"}},
                    {"timeUnixNano": "1767225600000000000", "attributes": [
                        {"key": "meterkit.meter", "value": {"stringValue": "logins"}},
                        {"key": "meterkit.account", "value": {"stringValue": "acme"}},
                        {"key": "meterkit.measure.nope", "value": {"intValue": "1"}}]},
                    {"attributes": [
                        {"key": "meterkit.meter", "value": {"stringValue": "logins"}},
                        {"key": "meterkit.account", "value": {"stringValue": "acme"}},
                        {"key": "meterkit.measure.logins", "value": {"intValue": "1"}}]},
                ]}]}]
            },
            ExportLogsServiceRequest(),
        )  # fmt: skip
        body = request.SerializeToString()
        r = requests.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=10)
        assert r.status_code == 200
        answer = ExportLogsServiceResponse.FromString(r.content)
        assert answer.partial_success.rejected_log_records == 3
        assert "record 2: no meterkit.meter attribute" in answer.partial_success.error_message
        assert "record 4: no time" in answer.partial_success.error_message  # and no uid: refused, counted
        assert "(missing_ts)" in answer.partial_success.error_message
        assert (
            "unknown_field" in answer.partial_success.error_message
            or "no data field 'nope'" in answer.partial_success.error_message
        )
        # The exporter retrying the same request cannot double count: the uid is derived from the record.
        requests.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=10)

        # JSON encoding, with OTLP/JSON's hex trace ids.
        doc = {"resourceLogs": [{"resource": {"attributes": [{"key": "meterkit.account", "value": {"stringValue": "initech"}}]},
               "scopeLogs": [{"logRecords": [{"timeUnixNano": "1767225600000000000", "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                   "attributes": [{"key": "meterkit.meter", "value": {"stringValue": "logins"}}, {"key": "meterkit.measure.logins", "value": {"intValue": "2"}}]}]}]}]}  # fmt: skip
        r = requests.post(url, json=doc, timeout=10)
        assert r.status_code == 200 and "rejectedLogRecords" not in r.text
        wait_for(lambda: ledger.count() == 43, timeout=30, what="the protobuf and JSON ones")
        logins = ledger.get("/organizations/test-org/usage", meter="logins", field="logins")["data"]
        assert {(d["account"], d["value"]) for d in logins} == {("acme", 1), ("globex", 1), ("initech", 2)}
        assert (
            requests.post(
                url, data=b"\x00garbage", headers={"Content-Type": "application/x-protobuf"}, timeout=10
            ).status_code
            == 400
        )
    finally:
        agent.kill(signal.SIGTERM)
        ledger.proc.kill()


# -- records are counted as sent -------------------------------------------------------------

T = 1767225600000000000  # 2026-01-01T00:00:00Z


def kv(attrs: dict[str, Any]) -> list[KeyValue]:
    return [
        KeyValue(key=k, value=AnyValue(string_value=v) if isinstance(v, str) else AnyValue(int_value=v))
        for k, v in attrs.items()
    ]


def log(attrs: dict[str, Any] | None = None, time_ns: int = T, observed_ns: int = 0) -> LogRecord:
    base = {"meterkit.meter": "data_downloaded", "meterkit.account": "acme", "meterkit.measure.bytes": 500}
    return LogRecord(
        time_unix_nano=time_ns,
        observed_time_unix_nano=observed_ns,
        body=AnyValue(string_value="download"),
        attributes=kv({**base, **(attrs or {})}),
    )


def request(*groups: tuple[dict[str, Any], list[LogRecord]]) -> ExportLogsServiceRequest:
    """A request of (resource attributes, records) groups, one scope each."""
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(resource=Resource(attributes=kv(res)), scope_logs=[ScopeLogs(log_records=records)])
            for res, records in groups
        ]
    )


def uids(req: ExportLogsServiceRequest) -> list[str | None]:
    return [m["uid"] if m else None for _, m in to_measurements(req)]


def test_equal_records_in_one_request_are_distinct_and_a_resend_derives_the_same_uids() -> None:
    body = request(({}, [log(), log(), log({"meterkit.measure.bytes": 7}), log()])).SerializeToString()
    first = uids(ExportLogsServiceRequest.FromString(body))
    assert len(set(first)) == 4  # three equal records, three measurements
    assert uids(ExportLogsServiceRequest.FromString(body)) == first  # the exporter's retry: the same uids


def test_a_record_keeps_its_uid_wherever_a_resend_places_it() -> None:
    """The occurrence counts equal records, not positions: a Collector that re-batches a
    retry moves records without changing what they are."""
    a, b = log({"meterkit.who.user": "ann"}), log({"meterkit.who.user": "bob"})
    ua, ub = uids(request(({}, [a, b])))
    assert uids(request(({}, [b, log({"meterkit.measure.bytes": 1}), a]))) == [
        ub,
        uids(request(({}, [log({"meterkit.measure.bytes": 1})])))[0],
        ua,
    ]
    # and the n-th equal record is the n-th, wherever the others are
    assert uids(request(({}, [a, b, a])))[2] == uids(request(({}, [a, a])))[1] != ua


def test_the_first_occurrence_keeps_the_uid_earlier_versions_derived() -> None:
    """An exporter's retry that spans an agent upgrade still adds nothing."""
    record, resource = log(), {"meterkit.account": "acme"}
    resource_key = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(record.SerializeToString(deterministic=True) + resource_key).hexdigest()
    assert uids(request((resource, [record, record]))) == [
        str(uuid.uuid5(OTLP_NAMESPACE, digest)),  # the 0.x derivation, unchanged
        str(uuid.uuid5(OTLP_NAMESPACE, digest + "#1")),
    ]


def test_equal_records_under_different_resources_are_told_apart_only_by_what_they_say() -> None:
    r = log({"meterkit.account": "acme"})
    # Resources that differ only outside meterkit.* say the same thing: equal records, counted as two.
    same = uids(request(({"service.name": "a"}, [r]), ({"service.name": "b"}, [r])))
    assert len(set(same)) == 2
    # A record's own uid is its identity: records that share one are one measurement.
    assert len(set(uids(request(({}, [log({"meterkit.uid": "u-1"}), log({"meterkit.uid": "u-1"})]))))) == 1


def test_protobuf_and_json_spellings_of_a_request_derive_the_same_uids() -> None:
    req = request(({"meterkit.account": "acme"}, [log(), log()]))
    as_json = json_format.ParseDict(json_format.MessageToDict(req), ExportLogsServiceRequest())
    assert uids(as_json) == uids(req)


def test_time_falls_back_to_observed_time_and_a_uid_without_time_is_stamped_on_receipt() -> None:
    (_, observed), (_, with_uid), (_, neither) = to_measurements(
        request(({}, [log(time_ns=0, observed_ns=T), log({"meterkit.uid": "u-9"}, time_ns=0), log(time_ns=0)]))
    )
    assert observed is not None and observed["ts"] == "2026-01-01T00:00:00.000Z"
    assert with_uid is not None and with_uid["uid"] == "u-9" and with_uid["ts"] > "2026-01-01"
    assert neither is not None and "ts" not in neither and "uid" not in neither  # refused: see below


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    spool = tmp_path / "spool"
    sink = SpoolSink(
        spool, "t", max_segment_bytes=1 << 20, max_segment_age_seconds=60, max_spool_bytes=1 << 30, fsync=False
    )
    yield TestClient(create_otlp_app(OtlpReceiverConfig(), sink, load_catalog(CATALOG))), spool
    sink.close()


def spooled(spool: Path) -> list[dict[str, Any]]:
    return [frame.json() for _, frame in iter_records(spool) if frame.kind == KIND_MEASUREMENT]


def post_logs(client: TestClient, req: ExportLogsServiceRequest) -> ExportLogsServiceResponse:
    r = client.post("/v1/logs", content=req.SerializeToString(), headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200, r.text
    return ExportLogsServiceResponse.FromString(r.content)


def test_two_equal_records_are_two_measurements_and_the_same_request_posted_twice_still_two(
    receiver: tuple[TestClient, Path],
) -> None:
    client, spool = receiver
    req = request(({"meterkit.account": "acme"}, [log(), log()]))
    assert not post_logs(client, req).HasField("partial_success")
    assert not post_logs(client, req).HasField("partial_success")
    written = spooled(spool)
    assert len(written) == 4  # the spool is at-least-once; the uids make the resend harmless
    assert len({m["uid"] for m in written}) == 2
    assert sum(m["measure"]["bytes"] for m in {m["uid"]: m for m in written}.values()) == 1000


def test_a_record_with_neither_time_nor_uid_is_refused_and_counted(receiver: tuple[TestClient, Path]) -> None:
    client, spool = receiver
    answer = post_logs(client, request(({}, [log(), log(time_ns=0), log(time_ns=0), log({"meterkit.uid": "u"}, 0)])))
    assert answer.partial_success.rejected_log_records == 2
    message = answer.partial_success.error_message
    assert message.startswith(
        "record 2: no time (time_unix_nano and observed_time_unix_nano are 0) and no meterkit.uid"
    )
    assert "(missing_ts)" in message and "record 3:" in message
    assert [m.get("uid") for m in spooled(spool)][1] == "u"  # a uid alone is enough: stamped on receipt
    assert len(spooled(spool)) == 2


class LostAnswers:
    """Forwards each POST to a receiver, then answers the first ``lose`` of them 503 with
    ``Retry-After: 0``, as if the receiver's answer had been lost on its way back: the
    sender retries a request that was already stored."""

    def __init__(self, target: str, lose: int = 1) -> None:
        self.bodies: list[bytes] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.bodies.append(body)
                keep = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "content-encoding")}
                r = requests.post(target + self.path, data=body, headers=keep, timeout=10)
                status, content = (503, b"") if len(proxy.bodies) <= lose else (r.status_code, r.content)
                self.send_response(status)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Type", r.headers.get("content-type", "application/x-protobuf"))
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_otel_exporter_counts_equal_records_as_sent_and_its_retry_adds_nothing(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    ledger, port, agent = ledger_and_otlp_agent(tmp_path)
    proxy = LostAnswers(f"http://127.0.0.1:{port}")
    try:
        exporter = OTLPLogExporter(endpoint=f"{proxy.url}/v1/logs", compression=Compression.Gzip)
        provider = LoggerProvider()
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
        logger = provider.get_logger("usage")
        download = {"meterkit.meter": "data_downloaded", "meterkit.account": "acme", "meterkit.measure.bytes": 500}
        for _ in range(2):  # the same download twice in one clock tick: two downloads
            logger.emit(timestamp=T, observed_timestamp=T, body="download", attributes=download)
        logger.emit(
            timestamp=T, observed_timestamp=T, body="download", attributes={**download, "meterkit.measure.bytes": 7}
        )
        assert provider.force_flush()
        provider.shutdown()

        # One request, sent twice, byte for byte (gzip): the first answer was "lost".
        assert len(proxy.bodies) == 2 and proxy.bodies[0] == proxy.bodies[1]
        sent = ExportLogsServiceRequest.FromString(gzip.decompress(proxy.bodies[0]))
        records = sent.resource_logs[0].scope_logs[0].log_records
        assert len(records) == 3 and records[0] == records[1]

        # A last measurement behind them in the receiver's spool: once it is delivered, so is all before it.
        after = request(({}, [log({"meterkit.uid": "after", "meterkit.measure.bytes": 1})]))
        r = requests.post(
            f"http://127.0.0.1:{port}/v1/logs",
            data=after.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert r.status_code == 200
        stored = f"{ledger.url}/organizations/test-org/measurements/after"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: requests.get(stored, headers=auth, timeout=5).status_code == 200, what="delivery")
        assert ledger.count() == 4  # 500, 500 and 7, once each despite the retry; and the last one
        data = ledger.get("/organizations/test-org/usage", meter="data_downloaded", field="bytes")["data"]
        assert data == [{"meter": "data_downloaded", "account": "acme", "value": 1008}]
    finally:
        proxy.close()
        agent.kill(signal.SIGTERM)
        ledger.proc.kill()
