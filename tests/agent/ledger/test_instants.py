"""Periods are instants: every ISO 8601 spelling of one instant selects the same rows,
periods are half-open, and what is not a time is refused naming the parameter, on SQLite
and PostgreSQL alike."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit_agent.instants import (
    InstantError,
    boundary_ms,
    civil_from_days,
    days_from_civil,
    iso,
    month_start_ms,
    parse_instant,
)
from meterkit_agent.ledger import Ledger, QueryError, UsageQuery
from tests.agent.ledger.conftest import AUTH, fresh_org, measurement

MIDNIGHT_NS = 1_793_491_200 * 10**9  # 2026-11-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-11-01", MIDNIGHT_NS),  # a date: midnight UTC at its start
        ("2026-11-01T00:00:00Z", MIDNIGHT_NS),
        ("2026-11-01T00:00:00.000Z", MIDNIGHT_NS),
        ("2026-11-01t00:00:00z", MIDNIGHT_NS),
        ("2026-11-01 00:00:00Z", MIDNIGHT_NS),
        ("2026-11-01T00:00Z", MIDNIGHT_NS),
        ("2026-11-01T01:00:00+01:00", MIDNIGHT_NS),
        ("2026-11-01T01:00:00+0100", MIDNIGHT_NS),
        ("2026-11-01T01:00+01", MIDNIGHT_NS),
        ("2026-10-31T19:00:00-05:00", MIDNIGHT_NS),
        ("2026-11-01T05:30:00+05:30", MIDNIGHT_NS),
        ("2026-11-01T00:00:00-00:00", MIDNIGHT_NS),
        ("  2026-11-01T00:00:00Z ", MIDNIGHT_NS),
        ("2026-11-01T00:00:00.000000001Z", MIDNIGHT_NS + 1),
        ("2026-11-01T00:00:00,5Z", MIDNIGHT_NS + 500_000_000),
        ("2024-02-29T12:00:00Z", 1_709_208_000 * 10**9),
        ("0001-01-01T00:00:00Z", -62_135_596_800 * 10**9),
    ],
)
def test_accepted_spellings(text: str, ns: int) -> None:
    assert parse_instant(text, "from") == ns


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("yesterday", "is not an ISO 8601 date-time"),
        ("2026-13-45", "is not a date that exists"),
        ("2026-02-29", "is not a date that exists"),
        ("2026-11-01T00:00:00", "has no offset"),
        ("20261101T000000Z", "is not an ISO 8601"),
        ("2026-W44-7", "is not an ISO 8601"),
        ("2026-305", "is not an ISO 8601"),
        ("2026-11-01T24:00:00Z", "out of range"),
        ("2026-11-01T23:59:60Z", "out of range"),
        ("2026-11-01T00:00:00+24:00", "out of range"),
        ("2026-11-01T00:00:00.0000000001Z", "is not an ISO 8601"),
        ("2026-11-01T01:00:00 01:00", "send it as %2B"),
        ("２０２６-11-01", "is not an ISO 8601"),
        ("", "is not an ISO 8601"),
        ("2026-11-01T00:00:00Z" * 5, "is not an ISO 8601"),
    ],
)
def test_refused_spellings_name_the_parameter(text: str, why: str) -> None:
    with pytest.raises(InstantError, match=r"^to: ") as caught:
        parse_instant(text, "to")
    assert why in str(caught.value)


def test_a_boundary_between_milliseconds_rounds_up() -> None:
    """Stored instants are whole milliseconds: t >= b exactly when t >= ceil(b)."""
    assert boundary_ms("2026-11-01T00:00:00Z", "from") == MIDNIGHT_NS // 10**6
    assert boundary_ms("2026-11-01T00:00:00.0000001Z", "from") == MIDNIGHT_NS // 10**6 + 1
    assert boundary_ms("2026-11-01T00:00:00.001Z", "from") == MIDNIGHT_NS // 10**6 + 1
    assert boundary_ms("1969-12-31T23:59:59.9995Z", "from") == 0


spellable = st.integers(min_value=-62_135_596_800 * 10**9 + 86_400 * 10**9, max_value=253_402_214_400 * 10**9)
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)


def spell(ns: int, offset_minutes: int, form: int, separator: str) -> str:
    """One ISO 8601 spelling of ``ns``: local time at the offset, the offset in one of
    its forms, a fraction only as long as it must be."""
    local = datetime(1970, 1, 1) + timedelta(microseconds=ns // 1000, minutes=offset_minutes)
    fraction = f"{local.microsecond:06d}{ns % 1000:03d}".rstrip("0")
    text = f"{local.year:04d}-{local:%m-%d}{separator}{local:%H:%M:%S}" + (f".{fraction}" if fraction else "")
    if offset_minutes == 0 and form == 0:
        return text + "Z"
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    if form == 3 and minutes == 0:
        return text + f"{sign}{hours:02d}"
    if form == 2:
        return text + f"{sign}{hours:02d}{minutes:02d}"
    return text + f"{sign}{hours:02d}:{minutes:02d}"


@settings(max_examples=300, deadline=None)
@given(ns=spellable, offset=offsets, form=st.integers(0, 3), separator=st.sampled_from("Tt "))
def test_every_spelling_of_an_instant_is_that_instant(ns: int, offset: int, form: int, separator: str) -> None:
    assert parse_instant(spell(ns, offset, form, separator), "from") == ns


@given(days=st.integers(min_value=-719_162, max_value=2_932_896))
def test_calendar_arithmetic_agrees_with_datetime(days: int) -> None:
    date = datetime(1970, 1, 1) + timedelta(days=days)
    assert civil_from_days(days) == (date.year, date.month, date.day)
    assert days_from_civil(date.year, date.month, date.day) == days
    start = month_start_ms(days * 86_400_000 + 12_345)
    assert iso(start) == f"{date.year:04d}-{date.month:02d}-01T00:00:00.000Z"


# -- the cases, on both databases -----------------------------------------------------


def usage(api: TestClient, org: str, **params: Any) -> Any:
    return api.get(
        f"/organizations/{org}/usage", params={"meter": "downloads", "field": "bytes", **params}, headers=AUTH
    )


def test_a_measurement_at_the_boundary_is_in_the_period_it_starts(
    shared_ledger: Ledger, shared_api: TestClient
) -> None:
    org = fresh_org()
    shared_ledger.ingest(
        org,
        [
            measurement("edge", "2026-11-01T00:00:00.000Z", measure={"bytes": 1}),
            measurement("before", "2026-10-31T23:59:59.999Z", measure={"bytes": 10}),
            measurement("end", "2026-12-01T00:00:00.000Z", measure={"bytes": 100}),
        ],
    )
    spellings = [
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
        ("2026-11-01", "2026-12-01"),
        ("2026-11-01T01:00:00+01:00", "2026-11-30T19:00:00-05:00"),
        ("2026-10-31T23:00:00.000-01:00", "2026-12-01T00:00:00.000Z"),
    ]
    for start, end in spellings:
        r = usage(shared_api, org, **{"from": start, "to": end})
        assert r.status_code == 200, r.text
        assert r.json()["data"] == [{"meter": "downloads", "account": "acme", "value": 1}], (start, end)
    # Half-open: the next period starts exactly where this one ended.
    r = usage(shared_api, org, **{"from": "2026-12-01T00:00:00Z"})
    assert r.json()["data"][0]["value"] == 100
    assert sorted(shared_ledger.uids(org, start="2026-11-01T01:00:00+01:00", end="2026-12-01")) == ["edge"]
    assert [m["uid"] for m in shared_ledger.rows(org, end="2026-11-01")] == ["before"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"from": "yesterday"}, "from: 'yesterday' is not an ISO 8601 date-time"),
        ({"from": "2026-13-45"}, "from: '2026-13-45' is not a date that exists"),
        ({"to": "2026-11-01T00:00:00"}, "to: '2026-11-01T00:00:00' has no offset"),
        ({"from": "2026-11-02", "to": "2026-11-01"}, "empty period"),
    ],
)
def test_what_is_not_a_time_is_a_400_naming_it(
    shared_ledger: Ledger, shared_api: TestClient, params: dict[str, str], named: str
) -> None:
    org = fresh_org()
    shared_ledger.ingest(org, [measurement("u", "2026-11-01T00:00:00.000Z", measure={"bytes": 1})])
    r = usage(shared_api, org, **params)
    assert r.status_code == 400 and named in r.json()["message"], r.text
    r = shared_api.get(f"/organizations/{org}/uids", params=params, headers=AUTH)
    assert r.status_code == 400 and named in r.json()["message"]
    with pytest.raises(QueryError, match=named.split(":")[0]):
        shared_ledger.usage(
            org, UsageQuery(meter="downloads", target="bytes", start=params.get("from"), end=params.get("to"))
        )
    with pytest.raises(QueryError):
        shared_ledger.rows(org, start=params.get("from"), end=params.get("to"))


def test_buckets_are_utc_hours_days_and_calendar_months(shared_ledger: Ledger) -> None:
    org = fresh_org()
    times = [
        "2026-01-31T23:59:59.999Z",
        "2026-02-01T00:00:00.000Z",
        "2026-02-28T23:00:00.000Z",
        "2026-03-01T00:00:00.000Z",
    ]
    shared_ledger.ingest(org, [measurement(f"u{i}", ts, measure={"bytes": 1}) for i, ts in enumerate(times)])
    monthly = shared_ledger.usage(org, UsageQuery(meter="downloads", target="bytes", bucket="month"))
    assert [(r["bucket"], r["value"]) for r in monthly] == [
        ("2026-01-01T00:00:00.000Z", 1),
        ("2026-02-01T00:00:00.000Z", 2),
        ("2026-03-01T00:00:00.000Z", 1),
    ]
    daily = shared_ledger.usage(
        org, UsageQuery(meter="downloads", target="bytes", bucket="day", start="2026-02-01T00:00:00+00:00")
    )
    assert [r["bucket"] for r in daily] == [
        "2026-02-01T00:00:00.000Z",
        "2026-02-28T00:00:00.000Z",
        "2026-03-01T00:00:00.000Z",
    ]
