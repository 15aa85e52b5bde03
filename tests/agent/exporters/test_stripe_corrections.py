"""Corrections through the Stripe exporter: a reversal cancels the original meter event
(a meter event adjustment, Stripe's documented request), a replacement is a meter event, a
backfill's batch is not sent, and a cancel refused because Stripe's 24-hour window has
closed dead-letters that reversal alone (``responses``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
from pydantic import SecretStr

from meterkit._corrections import replacement, replacement_uid, reversal, reversal_uid
from meterkit_agent.component import Misconfigured, RetryLater
from meterkit_agent.exporters.stripe import (
    CANCEL_WINDOW_CLOSED,
    StripeExporterConfig,
    StripeMeterConfig,
    StripeMeterEventsExporter,
    cancel_window_closed,
)
from tests.agent.exporters.helpers import FAST, event

EVENTS_URL = "http://stripe.test/v1/billing/meter_events"
ADJUSTMENTS_URL = "http://stripe.test/v1/billing/meter_event_adjustments"
ORIGINAL = event("identifier_123")
REVERSAL = reversal(ORIGINAL)
REPLACEMENT = replacement(ORIGINAL, {"measure.calls": 3})

#: What a refusal past the window is taken to look like: Stripe does not document it (see
#: stripe.cancel_window_closed), so these are the shapes the exporter matches on.
WINDOW_CLOSED = {
    "error": {
        "type": "invalid_request_error",
        "message": "Meter events can only be canceled within 24 hours of Stripe receiving them.",
    }
}


def stripe() -> StripeMeterEventsExporter:
    return StripeMeterEventsExporter(
        "stripe",
        StripeExporterConfig(
            api_key=SecretStr("sk_test_123"),
            base_url="http://stripe.test",
            meters={"api_calls": StripeMeterConfig(event_name="ai_search_api", value_field="measure.calls")},
            customers={"customer-1": "cus_NciAYcXfLnqBoz"},
            max_requests_per_second=1000,
            retry=FAST,
        ),
    )


def form_of(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def test_a_reversal_becomes_a_cancel_adjustment_and_a_replacement_a_meter_event(http: responses.RequestsMock) -> None:
    adjustments = http.post(ADJUSTMENTS_URL, json={"object": "billing.meter_event_adjustment", "status": "pending"})
    events = http.post(EVENTS_URL, json={"object": "billing.meter_event"})
    assert stripe().export([REVERSAL, REPLACEMENT]) == []
    assert adjustments.call_count == 1 and events.call_count == 1
    cancel = http.calls[0]
    assert cancel.request.url == ADJUSTMENTS_URL
    # the fields of Stripe's documented example request
    assert form_of(cancel) == {"event_name": "ai_search_api", "type": "cancel", "cancel[identifier]": "identifier_123"}
    assert cancel.request.headers["Idempotency-Key"] == reversal_uid("identifier_123")
    assert cancel.request.headers["Authorization"] == "Bearer sk_test_123"
    meter_event = http.calls[1]
    form = form_of(meter_event)
    assert form["identifier"] == replacement_uid("identifier_123")
    assert form["payload[value]"] == "3"
    assert form["event_name"] == "ai_search_api"
    assert meter_event.request.headers["Idempotency-Key"] == replacement_uid("identifier_123")


def test_a_backfilled_measurement_is_a_meter_event_without_its_batch(http: responses.RequestsMock) -> None:
    http.post(EVENTS_URL, json={})
    assert stripe().export([event("b1", batch="backfill-7")]) == []
    form = form_of(http.calls[0])
    assert set(form) == {"event_name", "payload[stripe_customer_id]", "payload[value]", "identifier", "timestamp"}
    assert "backfill-7" not in http.calls[0].request.body


def test_a_closed_cancel_window_dead_letters_that_reversal_alone(http: responses.RequestsMock) -> None:
    late = reversal(event("sent-two-days-ago"))

    def adjust(request: Any) -> tuple[int, dict[str, str], str]:
        identifier = parse_qs(request.body)["cancel[identifier]"][0]
        if identifier == "sent-two-days-ago":
            return 400, {}, json.dumps(WINDOW_CLOSED)
        return 200, {}, '{"object": "billing.meter_event_adjustment", "status": "pending"}'

    http.add_callback(responses.POST, ADJUSTMENTS_URL, callback=adjust)
    events = http.post(EVENTS_URL, json={})
    rejected = stripe().export([REVERSAL, late, REPLACEMENT, event("next")])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [(late["uid"], CANCEL_WINDOW_CLOSED)]
    assert rejected[0].measurement is late
    assert late["uid"] in rejected[0].detail and "sent-two-days-ago" in rejected[0].detail
    assert "HTTP 400" in rejected[0].detail  # and what Stripe said
    assert len(http.calls) == 4  # every other record was delivered
    assert [form_of(c)["identifier"] for c in events.calls] == [REPLACEMENT["uid"], "next"]


@pytest.mark.parametrize("replacement_first", [False, True])
def test_the_replacement_of_a_reversal_past_the_window_is_not_sent(
    replacement_first: bool, http: responses.RequestsMock
) -> None:
    """Stripe would count the original and the replacement: both dead-lettered, with the
    reversal's reason, whatever their order in the batch."""
    old = event("sent-two-days-ago")
    late, fixed = reversal(old), replacement(old, {"measure.calls": 1})
    http.post(ADJUSTMENTS_URL, status=400, json=WINDOW_CLOSED)
    events = http.post(EVENTS_URL, json={})
    exporter = stripe()
    batch = [fixed, event("next"), late] if replacement_first else [late, event("next"), fixed]
    rejected = exporter.export(batch)
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [
        (late["uid"], CANCEL_WINDOW_CLOSED),
        (fixed["uid"], CANCEL_WINDOW_CLOSED),
    ]
    assert "sent-two-days-ago" in rejected[1].detail and late["uid"] in rejected[1].detail
    assert fixed["uid"] in rejected[0].detail  # the reversal's dead letter names the replacement
    assert [form_of(c)["identifier"] for c in events.calls] == ["next"]
    # the replacement in a later batch of the same agent: held all the same
    [again] = exporter.export([fixed])
    assert again.reason == CANCEL_WINDOW_CLOSED and len(events.calls) == 1
    # an agent started since cannot know (the documented limit): it is sent
    assert stripe().export([fixed]) == [] and len(events.calls) == 2


def test_other_cancel_refusals_follow_the_meter_event_rules(http: responses.RequestsMock) -> None:
    http.post(
        ADJUSTMENTS_URL,
        status=400,
        json={"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such meter event"}},
    )
    rejected = stripe().export([REVERSAL, reversal(event("x", meter="other"))])
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [
        (REVERSAL["uid"], "rejected_by_backend:resource_missing"),
        (reversal_uid("x"), "stripe:unmapped_meter"),
    ]
    assert len(http.calls) == 1  # the unmapped one never left

    http.replace(responses.POST, ADJUSTMENTS_URL, status=429, headers={"Retry-After": "3"})
    with pytest.raises(RetryLater) as info:
        stripe().export([REVERSAL])
    assert info.value.retry_after == 3.0

    http.replace(responses.POST, ADJUSTMENTS_URL, status=401, json={"error": {"type": "invalid_request_error"}})
    with pytest.raises(Misconfigured, match="meter_event_adjustments"):
        stripe().export([REVERSAL])


def answer(status: int, body: object) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return response


@pytest.mark.parametrize(
    ("status", "body", "closed"),
    [
        (400, WINDOW_CLOSED, True),
        (400, {"error": {"type": "invalid_request_error", "code": "out_of_window", "message": "x"}}, True),
        (400, {"error": {"type": "invalid_request_error", "message": "The cancellation window has passed."}}, True),
        (400, {"error": {"type": "invalid_request_error", "message": "Events older than 24-hour can't be"}}, True),
        (
            400,
            {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": "No such event"}},
            False,
        ),
        (400, {"error": {"type": "invalid_request_error", "code": "invalid_cancel_configuration"}}, False),
        (400, {"error": {"type": "api_error", "message": "within 24 hours"}}, False),
        (400, {"error": "24 hours"}, False),
        (400, ["24 hours"], False),
        (400, b"<html>24 hours</html>", False),
    ],
)
def test_what_counts_as_a_closed_cancel_window(status: int, body: object, closed: bool) -> None:
    assert cancel_window_closed(answer(status, body)) is closed
