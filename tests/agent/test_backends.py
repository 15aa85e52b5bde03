"""OpenMeter and Stripe exporters: request shapes from the backends' documented examples,
retries and idempotency (``responses``)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
from pydantic import SecretStr

from meterkit._timefmt import iso_ms
from meterkit_agent.backends import OpenMeterExporter, StripeMeterEventsExporter
from meterkit_agent.config import OpenMeterExporterConfig, RetryConfig, StripeExporterConfig, StripeMeterConfig
from meterkit_agent.delivery import RetryLater

FAST = RetryConfig(initial_interval_millis=1, max_interval_millis=2, request_timeout_millis=1000)
NOW = iso_ms(time.time_ns())


def m(uid: str, **extra: Any) -> dict[str, Any]:
    base = {
        "uid": uid,
        "meter": "api_calls",
        "account": "customer-1",
        "ts": NOW,
        "measure": {"calls": 1, "seconds": 0.25},
        "what": {"route": "/hello"},
    }
    return {**base, **extra}


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


@responses.activate
def test_openmeter_cloudevents_batch_shape() -> None:
    responses.post(OM_URL, status=204)
    assert openmeter().export([m("00001"), m("00002")]) == []
    call = responses.calls[0]
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


@responses.activate
def test_openmeter_retries_and_isolates() -> None:
    responses.post(OM_URL, status=503)
    with pytest.raises(RetryLater):
        openmeter().export([m("1")])

    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        ids = [e["id"] for e in json.loads(json_body_raw(request))]
        return (400, {}, '{"title": "invalid event"}') if "bad" in ids else (204, {}, "")

    responses.add_callback(responses.POST, OM_URL, callback=callback)
    rejected = openmeter().export([m("1"), m("bad"), m("3")])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [("bad", "rejected_by_backend:http_400")]
    assert rejected[0].measurement["meter"] == "api_calls"  # the measurement, not the CloudEvent


def json_body_raw(request: Any) -> bytes:
    import gzip

    return gzip.decompress(request.body) if request.headers.get("Content-Encoding") == "gzip" else request.body


ST_URL = "http://stripe.test/v1/billing/meter_events"


def stripe(rate: float = 1000) -> StripeMeterEventsExporter:
    return StripeMeterEventsExporter(
        "stripe",
        StripeExporterConfig(
            api_key=SecretStr("sk_test_123"),
            base_url="http://stripe.test",
            meters={"api_calls": StripeMeterConfig(event_name="ai_search_api", value_field="measure.calls")},
            customers={"customer-1": "cus_NciAYcXfLnqBoz"},
            max_requests_per_second=rate,
            retry=FAST,
        ),
    )


@responses.activate
def test_stripe_meter_event_shape_and_idempotency() -> None:
    responses.post(ST_URL, json={"object": "billing.meter_event"})
    assert stripe().export([m("identifier_123")]) == []
    call = responses.calls[0]
    form = {k: v[0] for k, v in parse_qs(call.request.body).items()}
    # the fields of Stripe's documented example request
    assert form == {
        "event_name": "ai_search_api",
        "payload[stripe_customer_id]": "cus_NciAYcXfLnqBoz",
        "payload[value]": "1",
        "identifier": "identifier_123",
        "timestamp": str(int(datetime.fromisoformat(NOW.replace("Z", "+00:00")).timestamp())),
    }
    assert call.request.headers["Authorization"] == "Bearer sk_test_123"
    assert call.request.headers["Idempotency-Key"] == "identifier_123"


@responses.activate
def test_stripe_rate_limit_answers_are_retried_with_retry_after() -> None:
    responses.post(ST_URL, status=429, headers={"Retry-After": "2"})
    with pytest.raises(RetryLater) as info:
        stripe().export([m("a")])
    assert info.value.retry_after == 2.0


@responses.activate
def test_stripe_refusals_and_unmappable_measurements_are_dead_lettered() -> None:
    responses.post(ST_URL, status=400, json={"error": {"type": "invalid_request_error", "code": "resource_missing"}})
    old = iso_ms(int((time.time() - 40 * 86_400) * 1e9))
    rejected = stripe().export([m("x"), m("y", meter="other"), m("z", measure={"seconds": 1}), m("w", ts=old)])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [
        ("x", "rejected_by_backend:resource_missing"),
        ("y", "stripe:unmapped_meter"),
        ("z", "stripe:no_value"),
        ("w", "stripe:too_old"),
    ]
    assert len(responses.calls) == 1  # the unmappable ones never left


class FakeClock:
    """Stands in for the time module inside the exporter: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds

    def time(self) -> float:
        return time.time()


@responses.activate
def test_stripe_requests_are_paced_under_the_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import meterkit_agent.backends as backends

    clock = FakeClock()
    monkeypatch.setattr(backends, "time", clock)
    responses.post(ST_URL, json={})
    stripe(rate=50).export([m(str(i)) for i in range(11)])
    assert clock.slept == pytest.approx(10 / 50)  # 11 requests, 10 gaps of 1/50 s
