"""The WSGI middleware and ``instrument_flask``, through Flask's own test client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
import pytest
from werkzeug.test import Client

import meterkit
from meterkit.integrations.wsgi import MeterkitWSGIMiddleware, instrument_flask
from meterkit.testing import Captured

from .conftest import by_meter

REFUSED = meterkit.Decision(False, 0, 0.25, "rate limited", False, "test")


def flask_app() -> Any:
    app = flask.Flask(__name__)
    instrument_flask(app, "api_calls", account="X-Account", measure={"calls": 1}, outcome="outcome", status="status")

    @app.before_request
    def before() -> None:
        meterkit.record("downloads", measure={"bytes": 1})  # hooks run inside the scope too

    @app.get("/ok")
    def ok() -> str:
        return "ok"

    @app.get("/missing")
    def missing() -> Any:
        flask.abort(404)

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("boom")

    @app.get("/limited")
    def limited() -> str:
        raise meterkit.LimitExceeded(REFUSED)

    return app


def test_flask_requests_are_metered_in_one_line(captured: Captured) -> None:
    client = flask_app().test_client()
    statuses = [client.get(p, headers={"X-Account": "acme"}).status_code for p in ("/ok", "/missing", "/crash")]
    assert statuses == [200, 404, 500]
    answer = client.get("/limited", headers={"X-Account": "acme"})
    assert (answer.status_code, answer.headers["Retry-After"], answer.json) == (
        429,
        "1",
        {"detail": "limit exceeded", "retry_after": 1},
    )
    calls = by_meter(captured, "api_calls")
    assert [(m["account"], m["other"]) for m in calls] == [
        ("acme", {"outcome": "ok", "status": "200"}),
        ("acme", {"outcome": "client_error", "status": "404"}),
        ("acme", {"outcome": "error", "status": "500"}),  # the exception, not the 500 Flask made of it
        ("acme", {"outcome": "limited", "status": "429"}),
    ]
    assert {m["account"] for m in by_meter(captured, "downloads")} == {"acme"}


def test_instrument_flask_refuses_what_is_not_a_flask_app() -> None:
    with pytest.raises(TypeError, match="needs a Flask app"):
        instrument_flask(object(), "api_calls")


def late_start(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A generator application: ``start_response`` runs when the body is first iterated."""
    meterkit.record("downloads", measure={"bytes": 7})
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    yield b"later"


def test_a_generator_app_is_metered_with_its_status(captured: Captured) -> None:
    app = MeterkitWSGIMiddleware(
        late_start, "api_calls", account=lambda environ: environ["QUERY_STRING"], outcome="outcome"
    )
    client = Client(app)
    answer = client.get("/?globex")
    assert (answer.status_code, answer.data) == (503, b"later")
    assert [(m["account"], m["other"]) for m in by_meter(captured, "api_calls")] == [
        ("globex", {"outcome": "server_error"})
    ]
    assert [m["account"] for m in by_meter(captured, "downloads")] == ["globex"]


def test_the_limit_option_answers_429_and_records_nothing(captured: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    from meterkit import _allow

    monkeypatch.setattr(_allow, "allow", lambda *args: REFUSED)
    app = MeterkitWSGIMiddleware(late_start, "api_calls", account="X-Account", limit=True)
    client = Client(app)
    answer = client.get("/", headers={"X-Account": "acme"})
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "1")
    assert captured.measurements == []
