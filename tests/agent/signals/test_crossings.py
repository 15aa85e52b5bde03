"""Which thresholds a change of usage crosses: percents of a cap, price bands, spend
levels; once per threshold per period, through the outbox."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from meterkit_agent.billing.model import Aggregation, Band, PricingLine
from meterkit_agent.billing.periods import instant_ms
from meterkit_agent.signals import (
    Cap,
    SpendLevels,
    Where,
    band_events,
    cap_events,
    list_notifications,
    reached_percents,
    record,
    spend_events,
)
from tests.agent.signals.conftest import write

JAN = (instant_ms("2026-01-01"), instant_ms("2026-02-01"))
FEB = (instant_ms("2026-02-01"), instant_ms("2026-03-01"))
NOW = instant_ms("2026-01-15")
CAP = Cap("api_calls", Decimal(1000), mode="hard", grace_percent=Decimal(5), thresholds=(Decimal(80), Decimal(100)))


def jan(account: str = "acme") -> Where:
    return Where("org1", account, JAN, NOW)


def percents(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.threshold for e in events]


@pytest.mark.parametrize(
    ("before", "after", "crossed"),
    [
        (0, 799, []),
        (0, 800, ["80"]),  # reached at the level itself
        (799, 800, ["80"]),
        (800, 999, []),  # already past 80, not yet 100
        (799, 1000, ["80", "100"]),  # one jump past two thresholds: two events
        (0, 5000, ["80", "100"]),
        (1000, 1200, []),
        (900, 700, []),  # a correction down crosses nothing
    ],
)
def test_a_change_crosses_the_percents_between_its_before_and_after(
    before: int, after: int, crossed: list[str]
) -> None:
    assert percents(cap_events(jan(), CAP, before, after)) == crossed


def test_cap_event_says_what_a_receiver_needs() -> None:
    (at_100,) = cap_events(jan(), CAP, 990, 1050)
    assert at_100.kind == "cap_threshold" and at_100.meter == "api_calls" and at_100.period == JAN
    assert at_100.data == {
        "cap": "1000",
        "percent": "100",
        "level": "1000",
        "usage": "1050",
        "mode": "hard",
        "grace_percent": "5",
        "limit": "1050",
        "exhausted": True,  # a hard cap refuses from its limit (cap plus grace)
    }
    (soft,) = cap_events(jan(), Cap("bytes", Decimal(10), field="n", mode="soft"), 0, 9)
    assert soft.measure == "n" and soft.data["exhausted"] is False


def test_percents_are_compared_exactly() -> None:
    cap = Cap("m", Decimal("0.3"), thresholds=(Decimal("33.3"),))
    # 33.3 % of 0.3 is 0.0999 exactly; binary floats would say 0.09989999999999999
    assert percents(cap_events(jan(), cap, 0, Decimal("0.0999"))) == ["33.3"]
    assert percents(cap_events(jan(), cap, 0, Decimal("0.09989999"))) == []
    assert reached_percents(cap, Decimal("0.0999")) == [Decimal("33.3")]


def test_each_threshold_is_recorded_once_per_period_and_a_new_period_starts_afresh(engine: sa.Engine) -> None:
    steps = [(0, 500), (500, 850), (850, 820), (820, 900), (900, 1001), (0, 1001), (1001, 2000)]
    recorded = []
    for before, after in steps:
        with write(engine) as conn, conn.begin():
            recorded += record(conn, cap_events(jan(), CAP, before, after))
    assert percents(recorded) == ["80", "100"]  # (0, 1001) re-asked: nothing new

    feb = Where("org1", "acme", FEB, instant_ms("2026-02-03"))
    with write(engine) as conn, conn.begin():
        again = record(conn, cap_events(feb, CAP, 0, 850))
    assert percents(again) == ["80"]
    assert {e.id for e in again}.isdisjoint(e.id for e in recorded)

    with engine.connect() as conn:
        listed = list_notifications(conn, "org1", account="acme")
    assert [(n["threshold"], n["period"]["start"]) for n in listed] == [
        ("80", "2026-01-01T00:00:00.000Z"),
        ("100", "2026-01-01T00:00:00.000Z"),
        ("80", "2026-02-01T00:00:00.000Z"),
    ]


def test_accounts_and_organisations_each_get_their_own_events(engine: sa.Engine) -> None:
    with write(engine) as conn, conn.begin():
        a = record(conn, cap_events(jan("acme"), CAP, 0, 900))
        b = record(conn, cap_events(jan("globex"), CAP, 0, 900))
        c = record(conn, cap_events(Where("org2", "acme", JAN, NOW), CAP, 0, 900))
    assert len(a) == len(b) == len(c) == 1
    with engine.connect() as conn:
        assert sorted(n["account"] for n in list_notifications(conn, "org1")) == ["acme", "globex"]
        assert [n["org"] for n in list_notifications(conn, "org2")] == ["org2"]


TIERED = PricingLine(
    Aggregation("api_calls", "calls", "SUM"),
    (Band(Decimal(0), Decimal(0)), Band(Decimal(100), Decimal("0.10")), Band(Decimal(1000), Decimal("0.05"))),
)


@pytest.mark.parametrize(
    ("before", "after", "entered"),
    [
        (0, 50, []),  # the first band is reached by any usage: not announced
        (0, 100, []),  # 100 is the first band's last unit: (0, 100]
        (100, 101, ["100"]),
        (99, 5000, ["100", "1000"]),  # two bands in one jump
        (1000, 1001, ["1000"]),
        (1500, 1600, []),
    ],
)
def test_entering_a_new_price_band(before: int, after: int, entered: list[str]) -> None:
    events = band_events(jan(), TIERED, before, after)
    assert [e.threshold for e in events] == entered
    assert all(e.kind == "band_entered" and e.measure == "SUM(api_calls.calls)" for e in events)


def test_bands_see_units_after_quantity_per_unit_and_rounding() -> None:
    per_ten = PricingLine(
        Aggregation("api_calls", "calls", "SUM"),
        (Band(Decimal(0), Decimal(0)), Band(Decimal(10), Decimal(1))),
        quantity_per_unit=Decimal(10),
        rounding="UP",
    )
    # 91 calls are 10 units rounded up (not above 10); 101 are 11 units, in the band above 10
    assert band_events(jan(), per_ten, 0, 91) == []
    (event,) = band_events(jan(), per_ten, 91, 101)
    assert event.data["units"] == "11" and event.data["quantity"] == "101" and event.data["band"] == 1


def test_spend_levels() -> None:
    spend = SpendLevels((Decimal("100.00"), Decimal(500)), currency="USD")
    assert [e.threshold for e in spend_events(jan(), spend, Decimal("99.99"), Decimal("600"))] == ["100", "500"]
    assert spend_events(jan(), spend, Decimal("100.00"), Decimal("499.99")) == []
    (event,) = spend_events(jan(), spend, 0, Decimal("100.00"))
    assert event.meter == "" and event.kind == "spend_threshold" and event.data["currency"] == "USD"


def test_nonsense_caps_are_refused() -> None:
    with pytest.raises(ValueError, match="above zero"):
        Cap("m", Decimal(0))
    with pytest.raises(ValueError, match="percents above zero"):
        Cap("m", Decimal(10), thresholds=(Decimal(0),))
    with pytest.raises(ValueError, match="spend levels"):
        SpendLevels((Decimal(-1),))
