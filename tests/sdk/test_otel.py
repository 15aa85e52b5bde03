"""OpenTelemetry: trace links and baggage in measurements, and metering from spans of a
real Flask app instrumented with the standard OpenTelemetry instrumentation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider

import meterkit
from meterkit import ConfigError
from meterkit.otel import UsageSpanProcessor, load_rules
from meterkit.testing import capture_measurements
from tests.conftest import CATALOG


@pytest.fixture
def tracer() -> trace.Tracer:
    return TracerProvider().get_tracer("test")


def with_baggage(**entries: str) -> object:
    ctx = context.get_current()
    for key, value in entries.items():
        ctx = baggage.set_baggage(key.replace("__", "."), value, ctx)
    return context.attach(ctx)


def test_measurements_carry_the_active_span_ids(tracer: trace.Tracer) -> None:
    with capture_measurements() as captured:
        with tracer.start_as_current_span("request") as span:
            meterkit.record("m", account="a", measure={"n": 1})
            ids = span.get_span_context()
        meterkit.record("m", account="a", measure={"n": 2})  # no span: no ids
    inside, outside = captured.measurements
    assert inside["metadata"] == {"trace_id": format(ids.trace_id, "032x"), "span_id": format(ids.span_id, "016x")}
    assert "metadata" not in outside


def test_trace_ids_can_be_switched_off(tracer: trace.Tracer) -> None:
    with capture_measurements(otel_context=False) as captured, tracer.start_as_current_span("request"):
        meterkit.record("m", account="a", measure={"n": 1})
    assert "metadata" not in captured.measurements[0]


def test_with_a_catalog_ids_are_kept_only_where_the_meter_declares_them(tracer: trace.Tracer) -> None:
    # api_calls declares request_id but not trace_id/span_id: nothing is added, nothing rejected
    with capture_measurements(CATALOG) as captured, tracer.start_as_current_span("request"):
        meterkit.record("api_calls", account="a", measure={"calls": 1})
    assert captured.measurements[0].get("metadata") is None


def test_baggage_fills_account_and_fields_below_context_and_arguments() -> None:
    token = with_baggage(
        **{
            "meterkit.account": "from-gateway",
            "meterkit.who.user": "u-bag",
            "meterkit.where.region": "eu",
            "other": "ignored",
        }
    )
    try:
        with capture_measurements() as captured:
            meterkit.record("m", measure={"n": 1})
            with meterkit.context(account="from-context", who={"user": "u-ctx"}):
                meterkit.record("m", measure={"n": 2})
                meterkit.record("m", account="explicit", who={"user": "u-arg"}, measure={"n": 3})
    finally:
        context.detach(token)  # type: ignore[arg-type]
    one, two, three = captured.measurements
    assert (one["account"], one["who"], one["where"]) == ("from-gateway", {"user": "u-bag"}, {"region": "eu"})
    assert (two["account"], two["who"]) == ("from-context", {"user": "u-ctx"})
    assert (three["account"], three["who"]) == ("explicit", {"user": "u-arg"})


# -- metering from spans ------------------------------------------------------------------


@pytest.fixture
def flask_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, TracerProvider]]:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-account")
    from flask import Flask
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    app = Flask("shop")

    @app.route("/download/<name>")
    def download(name: str) -> str:
        return "x" * 10

    @app.route("/fail")
    def fail() -> str:
        raise RuntimeError("boom")

    provider = TracerProvider()
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    yield app, provider
    FlaskInstrumentor().uninstrument_app(app)


def test_an_instrumented_flask_app_is_metered_by_configuration_alone(flask_app: tuple[object, TracerProvider]) -> None:
    app, provider = flask_app
    with capture_measurements(CATALOG) as captured:
        provider.add_span_processor(UsageSpanProcessor.from_file(CATALOG))
        client = app.test_client()  # type: ignore[attr-defined]
        assert client.get("/download/a", headers={"X-Account": "acme"}).status_code == 200
        assert client.get("/download/b", headers={"X-Account": "acme"}).status_code == 200
        assert client.get("/download/c", headers={"X-Account": "globex"}).status_code == 200
        assert client.get("/fail", headers={"X-Account": "globex"}).status_code == 500
    calls = captured.measurements
    assert [(m["meter"], m["account"], m["what"]["endpoint"]) for m in calls] == [
        ("api_calls", "acme", "/download/<name>"),
        ("api_calls", "acme", "/download/<name>"),
        ("api_calls", "globex", "/download/<name>"),
        ("api_calls", "globex", "/fail"),
    ]
    assert [m["other"]["status"] for m in calls] == ["ok", "ok", "ok", "error"]
    assert all(m["measure"]["calls"] == 1 and m["measure"]["seconds"] >= 0 for m in calls)


def test_span_rules_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(
        "span_rules:\n  - meter: m\n    match: {kind: SERVERS}\n    fields: {endpoint: http.route}\n    errors: maybe\n"
    )
    with pytest.raises(ConfigError) as info:
        load_rules(bad)
    text = str(info.value)
    assert "span_rules[1].match.kind" in text and "span_rules[1].fields" in text and "span_rules[1].errors" in text
