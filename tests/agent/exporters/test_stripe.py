"""The Stripe meter-events exporter: request shapes from Stripe's documented example,
idempotency, pacing and refusals (``responses``)."""

from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import parse_qs

import pytest
import responses
from pydantic import SecretStr

import meterkit_agent.exporters.stripe as stripe_module
from meterkit._timefmt import iso_ms
from meterkit_agent.component import RetryLater
from meterkit_agent.exporters.stripe import StripeExporterConfig, StripeMeterConfig, StripeMeterEventsExporter
from tests.agent.exporters.helpers import FAST, NOW, event

m = event


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


def test_stripe_meter_event_shape_and_idempotency(http: responses.RequestsMock) -> None:
    http.post(ST_URL, json={"object": "billing.meter_event"})
    assert stripe().export([m("identifier_123")]) == []
    call = http.calls[0]
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


def test_stripe_rate_limit_answers_are_retried_with_retry_after(http: responses.RequestsMock) -> None:
    http.post(ST_URL, status=429, headers={"Retry-After": "2"})
    with pytest.raises(RetryLater) as info:
        stripe().export([m("a")])
    assert info.value.retry_after == 2.0


def test_stripe_refusals_and_unmappable_measurements_are_dead_lettered(http: responses.RequestsMock) -> None:
    http.post(ST_URL, status=400, json={"error": {"type": "invalid_request_error", "code": "resource_missing"}})
    old = iso_ms(int((time.time() - 40 * 86_400) * 1e9))
    rejected = stripe().export([m("x"), m("y", meter="other"), m("z", measure={"seconds": 1}), m("w", ts=old)])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [
        ("x", "rejected_by_backend:resource_missing"),
        ("y", "stripe:unmapped_meter"),
        ("z", "stripe:no_value"),
        ("w", "stripe:too_old"),
    ]
    assert len(http.calls) == 1  # the unmappable ones never left


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


def test_stripe_requests_are_paced_under_the_rate_limit(
    monkeypatch: pytest.MonkeyPatch, http: responses.RequestsMock
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(stripe_module, "time", clock)
    http.post(ST_URL, json={})
    stripe(rate=50).export([m(str(i)) for i in range(11)])
    assert clock.slept == pytest.approx(10 / 50)  # 11 requests, 10 gaps of 1/50 s
