"""The OpenMeter exporter: CloudEvents batches from OpenMeter's documented example,
retries and isolation (``responses``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses
from pydantic import SecretStr

from meterkit_agent.component import RetryLater
from meterkit_agent.exporters.openmeter import OpenMeterExporter, OpenMeterExporterConfig
from tests.agent.exporters.helpers import FAST, NOW, event

m = event


OM_URL = "http://openmeter.test/api/v1/events"


def openmeter() -> OpenMeterExporter:
    return OpenMeterExporter(
        "openmeter",
        OpenMeterExporterConfig(
            base_url="http://openmeter.test",
            token=SecretStr("om-token"),
            source="service-0",
            types={"api_calls": "request"},
            retry=FAST,
        ),
    )


def test_openmeter_cloudevents_batch_shape(http: responses.RequestsMock) -> None:
    http.post(OM_URL, status=204)
    assert openmeter().export([m("00001"), m("00002")]) == []
    call = http.calls[0]
    assert call.request.headers["Content-Type"] == "application/cloudevents-batch+json"
    assert call.request.headers["Authorization"] == "Bearer om-token"
    events = json.loads(json_body(call))
    assert events[0] == {
        # the shape of OpenMeter's documented example event
        "specversion": "1.0",
        "id": "00001",
        "source": "service-0",
        "type": "request",
        "subject": "customer-1",
        "time": NOW,
        "data": {"calls": 1, "seconds": 0.25, "route": "/hello"},
    }


def json_body(call: Any) -> bytes:
    import gzip

    body = call.request.body
    return gzip.decompress(body) if call.request.headers.get("Content-Encoding") == "gzip" else body


def test_openmeter_retries_and_isolates(http: responses.RequestsMock) -> None:
    http.post(OM_URL, status=503)
    with pytest.raises(RetryLater):
        openmeter().export([m("1")])

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        ids = [e["id"] for e in json.loads(json_body_raw(request))]
        return (400, {}, '{"title": "invalid event"}') if "bad" in ids else (204, {}, "")

    http.add_callback(responses.POST, OM_URL, callback=callback)
    rejected = openmeter().export([m("1"), m("bad"), m("3")])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [("bad", "rejected_by_backend:http_400")]
    assert rejected[0].measurement["meter"] == "api_calls"  # the measurement, not the CloudEvent


def json_body_raw(request: Any) -> bytes:
    import gzip

    return gzip.decompress(request.body) if request.headers.get("Content-Encoding") == "gzip" else request.body
