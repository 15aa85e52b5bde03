"""Any language can send usage: the OTLP/HTTP logs receiver, with the real OpenTelemetry
log exporter as the client, and partial success for records that are not measurements."""

from __future__ import annotations

import signal
from pathlib import Path

import requests
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse

from tests.agent.conftest import free_port, start_agent, start_ledger, wait_for, write_agent_config
from tests.conftest import CATALOG


def test_the_otel_log_exporter_delivers_usage_through_the_agent(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    ledger = start_ledger(tmp_path / "ledger")
    port = free_port()
    receiver = f"  otlp: {{endpoint: '127.0.0.1:{port}'}}"
    config = write_agent_config(tmp_path, tmp_path / "spool", ledger.url, CATALOG, extra_receivers=receiver)
    config.write_text(config.read_text().replace("receivers: [spool, http]", "receivers: [spool, otlp]"))
    agent = start_agent(tmp_path, config)
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
                    {"attributes": [
                        {"key": "meterkit.meter", "value": {"stringValue": "logins"}},
                        {"key": "meterkit.account", "value": {"stringValue": "acme"}},
                        {"key": "meterkit.measure.nope", "value": {"intValue": "1"}}]},
                ]}]}]
            },
            ExportLogsServiceRequest(),
        )  # fmt: skip
        body = request.SerializeToString()
        r = requests.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=10)
        assert r.status_code == 200
        answer = ExportLogsServiceResponse.FromString(r.content)
        assert answer.partial_success.rejected_log_records == 2
        assert "no meterkit.meter attribute" in answer.partial_success.error_message
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
