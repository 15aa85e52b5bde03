"""Scopes behave like Baggage: with a catalog, a field that comes from ``meterkit.context``
or OpenTelemetry Baggage fills only the meters that declare it; a field passed to
``record``/``meter`` itself that the meter lacks is still an error (strict, or the agent's
validation in production), and the rejected-measurements file keeps the field that was the
reason. Ends with the quick start's own pattern in a real FastAPI app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import baggage, context

import meterkit
from meterkit import MeasurementError
from meterkit.testing import capture_measurements
from tests.conftest import CATALOG
from tests.sdk.helpers import agent_verdict, losses, spooled


def rejected_entries(spool: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for f in (spool / "rejected").glob("*.jsonl") for line in f.read_bytes().splitlines()]


@pytest.fixture
def user_in_baggage() -> Iterator[None]:
    ctx = baggage.set_baggage("meterkit.account", "acme")
    token = context.attach(baggage.set_baggage("meterkit.who.user", "u-bag", ctx))
    yield
    context.detach(token)


# -- a field the caller passed is checked -----------------------------------------------


def test_strict_mode_raises_for_an_explicit_field_the_meter_lacks() -> None:
    with capture_measurements(CATALOG) as captured:
        with pytest.raises(MeasurementError) as info:
            meterkit.record("api_calls", account="acme", measure={"calls": 1}, who={"user": "u42"})
        assert (info.value.reason, info.value.field) == ("unknown_field", "who.user")
        with (
            pytest.raises(MeasurementError) as info,
            meterkit.meter("api_calls", account="acme", measure={"calls": 1}) as m,
        ):
            m.who["user"] = "u42"
        assert info.value.field == "who.user"
    assert captured.measurements == []


def test_production_drops_an_explicit_string_field_the_meter_lacks_and_counts_it(spool: Path) -> None:
    """Only what the catalog declares leaves the application: an undeclared string is
    dropped (counted), the measurement and its numbers kept."""
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    with meterkit.context(account="acme", where={"region": "eu"}):
        meterkit.record("api_calls", measure={"calls": 1}, who={"user": "u42"})
    assert meterkit.flush(5)
    stats = meterkit.stats()
    assert meterkit.shutdown(5)
    (written,) = spooled(spool)
    assert "who" not in written and written["account"] == "acme"  # the scope's account
    assert "where" not in written  # api_calls does not declare region: the scope's field is left out
    assert written["measure"] == {"calls": 1}
    assert agent_verdict(written, meterkit.load_catalog(CATALOG)) is None
    assert stats["privacy"] == {"dropped:undeclared_field": 1} and losses(spool) == {}


def test_production_refuses_a_bad_account_from_the_scope_and_keeps_it_in_the_rejected_file(spool: Path) -> None:
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    with meterkit.context(account="acme ", who={"user": "u42"}):
        meterkit.record("data_downloaded", measure={"bytes": 10})
    assert meterkit.shutdown(5)
    assert spooled(spool) == []
    assert losses(spool) == {"rejected:surrounding_whitespace": 1}
    (entry,) = rejected_entries(spool)
    assert (entry["reason"], entry["field"]) == ("surrounding_whitespace", "account")
    assert entry["record"]["account"] == "acme "  # the scope's account, as checked
    assert entry["record"]["who"] == {"user": "u42"}  # with what it inherited


# -- a field the scope or Baggage gave fills the meters that declare it ------------------


def test_a_context_field_fills_only_the_meters_that_declare_it() -> None:
    with capture_measurements(CATALOG) as captured, meterkit.context(account="acme", who={"user": "u42"}):
        meterkit.record("api_calls", measure={"calls": 1})  # declares no user: left out
        meterkit.record("data_downloaded", measure={"bytes": 10})  # declares who.user: filled
        with meterkit.meter("api_calls", measure={"calls": 1}):
            pass
    calls, download, block = captured.measurements
    assert "who" not in calls and "who" not in block
    assert (calls["account"], block["account"]) == ("acme", "acme")
    assert download["who"] == {"user": "u42"}


def test_a_context_field_is_placed_in_the_category_the_catalog_declares() -> None:
    # like Baggage: the catalog, not the scope, says where a code belongs
    with capture_measurements(CATALOG) as captured, meterkit.context(account="acme", other={"region": "eu"}):
        meterkit.record("data_downloaded", measure={"bytes": 10})
    assert captured.measurements[0]["where"] == {"region": "eu"}


def test_production_mode_accepts_every_measurement_under_a_context_field(spool: Path) -> None:
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    with meterkit.context(account="acme", who={"user": "u42"}):
        for _ in range(5):
            meterkit.record("api_calls", measure={"calls": 1})
            meterkit.record("data_downloaded", measure={"bytes": 10})
    assert meterkit.shutdown(5)
    assert meterkit.stats()["lost"] == {} and losses(spool) == {}
    by_meter = {m["meter"]: m for m in spooled(spool)}
    assert len(spooled(spool)) == 10
    assert "who" not in by_meter["api_calls"] and by_meter["data_downloaded"]["who"] == {"user": "u42"}


def test_an_explicit_value_wins_over_the_context_and_is_still_checked() -> None:
    with capture_measurements(CATALOG) as captured, meterkit.context(account="acme", who={"user": "ctx"}):
        meterkit.record("data_downloaded", measure={"bytes": 1}, who={"user": "arg"})
    assert captured.measurements[0]["who"] == {"user": "arg"}


def test_without_a_catalog_context_fields_are_kept_on_every_meter() -> None:
    with capture_measurements() as captured, meterkit.context(account="acme", who={"user": "u42"}):
        meterkit.record("api_calls", measure={"calls": 1})
    assert captured.measurements[0]["who"] == {"user": "u42"}


def test_a_baggage_field_fills_only_the_meters_that_declare_it(user_in_baggage: None) -> None:
    with capture_measurements(CATALOG) as captured:
        meterkit.record("api_calls", measure={"calls": 1})
        meterkit.record("data_downloaded", measure={"bytes": 10})
    calls, download = captured.measurements
    assert calls["account"] == "acme" and "who" not in calls
    assert download["who"] == {"user": "u-bag"}


def test_the_context_wins_over_baggage_for_a_declared_field(user_in_baggage: None) -> None:
    with capture_measurements(CATALOG) as captured, meterkit.context(who={"user": "u-ctx"}):
        meterkit.record("data_downloaded", measure={"bytes": 10})
    assert captured.measurements[0]["who"] == {"user": "u-ctx"}


def test_an_inherited_field_that_is_the_reason_reaches_the_agent_in_the_measurement(spool: Path) -> None:
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    with meterkit.context(account="acme", who={"user": 4.5}):  # declared, but not a string
        meterkit.record("data_downloaded", measure={"bytes": 10})
    assert meterkit.shutdown(5)
    (written,) = spooled(spool)
    assert written["who"] == {"user": 4.5}
    assert agent_verdict(written, meterkit.load_catalog(CATALOG)) == ("wrong_type", "who.user")


def test_the_rejected_file_keeps_an_inherited_field_that_was_the_reason(spool: Path) -> None:
    with capture_measurements(CATALOG, mode="production") as captured, meterkit.context(who={"user": 4.5}):
        meterkit.record("data_downloaded", account="acme", measure={"bytes": 10})
    (entry,) = captured.rejected
    assert (entry["reason"], entry["field"]) == ("wrong_type", "who.user")
    assert entry["record"]["who"] == {"user": 4.5}


# -- the quick start's own pattern, in a real FastAPI app --------------------------------


def test_quick_start_pattern_in_a_fastapi_app_keeps_every_measurement(spool: Path) -> None:
    from fastapi import FastAPI, Request
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.middleware("http")
    async def billed_account(request: Request, call_next: Any) -> Any:
        who = {"user": request.headers["x-user"]}
        async with meterkit.context(account=request.headers["x-account"], who=who):
            return await call_next(request)

    @app.get("/download/{name}")
    @meterkit.meter("api_calls", measure={"calls": 1}, duration="seconds", outcome="status")
    async def download(name: str) -> dict[str, str]:
        meterkit.record("data_downloaded", measure={"bytes": 4_194_304}, where={"region": "eu"})
        with meterkit.meter("session_duration", duration="seconds"):
            pass
        return {"name": name}

    meterkit.configure(catalog=CATALOG, spool_dir=spool)  # production mode, as in the issue
    with TestClient(app) as client:
        for i in range(20):
            response = client.get(f"/download/f{i}", headers={"x-account": f"acct{i % 2}", "x-user": f"u{i}"})
            assert response.status_code == 200
    assert meterkit.shutdown(5)
    stats = meterkit.stats()
    assert stats["lost"] == {} and losses(spool) == {}
    assert not (spool / "rejected").exists()
    records = spooled(spool)
    assert sorted({m["meter"] for m in records}) == ["api_calls", "data_downloaded", "session_duration"]
    assert len(records) == 60
    for m in records:
        assert m["account"] in ("acct0", "acct1")
        if m["meter"] == "api_calls":
            assert "who" not in m and m["other"] == {"status": "ok"}
        else:  # both declare who.user: the middleware's scope filled it
            assert m["who"]["user"].startswith("u")
