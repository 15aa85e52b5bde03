"""Bills: the issue's figures, m3ter's worked example, a plan change within a period,
credits that never take a bill below zero, tiers spanning the plan, calendar quarters and
years, and a usage source asked for whole ranges (a period's UNIQUE is not a sum of days)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit_agent.billing import Bill, BillingError, MeasurementsUsage, bill, instant_ms, plans_from_text
from tests.agent.billing.conftest import ISSUE_EXAMPLE, calls, plans_yaml


def ms(text: str) -> int:
    return instant_ms(text)


def month_of_calls(n: int, account: str = "acme", day: str = "2026-01-15") -> list[dict[str, Any]]:
    return [calls(account, f"{day}T{h:02d}:00:00Z", n // 24 + (1 if h < n % 24 else 0)) for h in range(24)]


def one_bill(
    text: str,
    measurements: list[dict[str, Any]],
    start: str = "2026-01-01",
    end: str = "2026-02-01",
    account: str = "acme",
) -> Bill:
    (only,) = bill(plans_from_text(text), account, ms(start), ms(end), MeasurementsUsage(measurements))
    return only


def kinds(b: Bill) -> list[tuple[str, str]]:
    return [(line.kind, str(line.amount)) for line in b.lines]


def test_the_issues_example_bills_135_graduated() -> None:
    b = one_bill(ISSUE_EXAMPLE, month_of_calls(1500))
    assert kinds(b) == [("standing_charge", "20.00"), ("usage", "115.00")]
    assert (b.subtotal, b.credits, b.total) == (Decimal("135.00"), Decimal("0.00"), Decimal("135.00"))
    usage = b.lines[1]
    assert (usage.quantity, usage.units, usage.aggregation) == (1500, 1500, "SUM(api_calls.calls)")
    assert [(band.units, band.unit_price, band.amount) for band in usage.bands] == [
        (100, Decimal("0"), 0),
        (900, Decimal("0.10"), 90),
        (500, Decimal("0.05"), 25),
    ]
    assert b.to_json()["total"] == "135.00"
    assert b.to_json()["from"] == "2026-01-01T00:00:00.000Z" and b.to_json()["to"] == "2026-02-01T00:00:00.000Z"


def test_the_issues_example_as_volume_is_trued_up_to_the_minimum_100() -> None:
    b = one_bill(ISSUE_EXAMPLE.replace("cumulative: true", "cumulative: false"), month_of_calls(1500))
    assert kinds(b) == [("standing_charge", "20.00"), ("usage", "75.00"), ("minimum_spend", "5.00")]
    assert b.total == Decimal("100.00")
    assert "minimum spend 100.00 on plan growth: true-up from 95.00" in b.lines[2].description
    json_lines = b.to_json()["lines"]
    assert json_lines[1]["bands"] == [
        {
            "lower_limit": "1000",
            "upper_limit": None,
            "units": "1500",
            "unit_price": "0.05",
            "fixed_price": "0",
            "amount": "75",
        }
    ]


def test_a_quiet_month_is_the_standing_charge_trued_up_to_the_minimum() -> None:
    b = one_bill(ISSUE_EXAMPLE, [])
    assert kinds(b) == [("standing_charge", "20.00"), ("usage", "0.00"), ("minimum_spend", "80.00")]
    assert b.lines[1].quantity == 0 and b.total == Decimal("100.00")


M3TER_WORKED_EXAMPLE = """\
currency: USD
plans:
  - code: cleanup
    bill_period: month
    standing_charge: "20"
    pricing:
      - aggregation: {meter: files, field: gb, function: SUM}
        description: Cumulative volume of files submitted
        bands: [{lower_limit: 0, unit_price: "0.15"}, {lower_limit: 500, unit_price: "0.10"}]
      - aggregation: {meter: files, function: COUNT}
        description: Files submitted
        bands: [{lower_limit: 0, unit_price: "0.50"}]
      - aggregation: {meter: files, field: seconds, function: MEAN}
        description: Average clean-up time per file
        cumulative: false
        bands:
          - {lower_limit: 0, unit_price: "0", fixed_price: "12"}
          - {lower_limit: 4, unit_price: "0", fixed_price: "25"}
          - {lower_limit: 6, unit_price: "0", fixed_price: "50"}
accounts:
  acme: [{plan: cleanup, from: "2026-01-01"}]
"""


def test_m3ters_worked_example_with_several_pricing_lines() -> None:
    """m3ter's cloud storage and file clean-up example (https://m3ter.com/docs/guides/
    getting-started/metering-for-production-worked-examples/worked-example-1-cloud-storage-and-file-cleanup):
    0.15 USD/GB to 500 GB then 0.10, 0.50 USD a file, 12/25/50 USD by average clean-up time
    (up to 4 s, up to 6 s, above), and a 20 USD standing charge."""
    files = [
        {
            "uid": f"f{i}",
            "meter": "files",
            "account": "acme",
            "ts": f"2026-01-{i + 1:02d}T10:00:00Z",
            "measure": {"gb": gb, "seconds": s},
        }
        for i, (gb, s) in enumerate([(300, 4), (250.5, 5), (149.5, 6)])
    ]
    b = one_bill(M3TER_WORKED_EXAMPLE, files)
    assert kinds(b) == [("standing_charge", "20.00"), ("usage", "95.00"), ("usage", "1.50"), ("usage", "25.00")]
    assert b.total == Decimal("141.50")  # 20 + (500 x 0.15 + 200 x 0.10) + 3 x 0.50 + 25 (mean 5 s)
    assert b.lines[1].description == "Cumulative volume of files submitted"
    assert b.lines[3].quantity == 5


PLAN_CHANGE = """\
currency: USD
plans:
  - code: growth
    bill_period: month
    standing_charge: "31.00"
    minimum_spend: "124.00"
    pricing:
      - aggregation: {meter: api_calls, field: calls, function: SUM}
        bands: [{lower_limit: 0, unit_price: "0.10"}]
  - code: scale
    bill_period: month
    standing_charge: "62.00"
    pricing:
      - aggregation: {meter: api_calls, field: calls, function: SUM}
        bands: [{lower_limit: 0, unit_price: "0"}, {lower_limit: 100, unit_price: "0.01"}]
accounts:
  acme:
    - {plan: growth, from: "2026-01-01", to: "2026-01-11"}
    - {plan: scale, from: "2026-01-11"}
"""


def test_a_plan_change_mid_period_bills_each_part_on_its_own_plan() -> None:
    usage = [
        calls("acme", "2026-01-05T12:00:00Z", 200),
        calls("acme", "2026-01-11T00:00:00Z", 300),
        calls("acme", "2026-01-10T23:59:59.999Z", 1),
    ]
    b = one_bill(PLAN_CHANGE, usage)
    growth_standing, growth_usage, growth_true_up, scale_standing, scale_usage = b.lines
    assert (growth_standing.start_ms, growth_standing.end_ms) == (ms("2026-01-01"), ms("2026-01-11"))
    assert growth_standing.amount == Decimal("10.00") and "pro-rated 10 of 31 days" in growth_standing.description
    assert (growth_usage.quantity, growth_usage.amount) == (201, Decimal("20.10"))
    assert (growth_true_up.kind, growth_true_up.amount) == ("minimum_spend", Decimal("9.90"))  # 124 x 10/31 - 30.10
    assert (scale_standing.kind, scale_standing.amount) == ("standing_charge", Decimal("42.00"))  # 62 x 21/31
    assert (scale_usage.quantity, scale_usage.amount) == (300, Decimal("2.00"))  # bands not pro-rated: 200 x 0.01
    assert (scale_usage.start_ms, scale_usage.end_ms) == (ms("2026-01-11"), ms("2026-02-01"))
    assert b.total == Decimal("84.00")


def test_a_change_to_a_plan_billed_quarterly_ends_one_calendar_and_starts_another() -> None:
    text = PLAN_CHANGE.replace("  - code: scale\n    bill_period: month", "  - code: scale\n    bill_period: quarter")
    bills = bill(plans_from_text(text), "acme", ms("2026-01-01"), ms("2026-04-01"), MeasurementsUsage([]))
    assert [(b.bill_period, b.start_ms, b.end_ms) for b in bills] == [
        ("month", ms("2026-01-01"), ms("2026-02-01")),
        ("quarter", ms("2026-01-01"), ms("2026-04-01")),
    ]
    assert [line.plan for line in bills[0].lines] == ["growth"] * 3
    assert bills[1].lines[0].amount == Decimal("55.11")  # 62.00 x 80 of 90 days = 55.111...


def test_credits_lower_a_bill_but_never_below_zero() -> None:
    credits = """
  acme:
    - {amount: "30.00", period: "2026-01-01", reason: goodwill}
    - {amount: "30.00", period: "2026-01-01", reason: outage}
    - {amount: "7.50", period: "2026-02-01"}"""
    text = plans_yaml(standing='"50.00"', credits=credits)
    jan, feb = bill(plans_from_text(text), "acme", ms("2026-01-01"), ms("2026-03-01"), MeasurementsUsage([]))
    assert kinds(jan) == [("standing_charge", "50.00"), ("usage", "0.00"), ("credit", "-30.00"), ("credit", "-20.00")]
    assert (jan.subtotal, jan.credits, jan.total, jan.unapplied_credit) == (
        Decimal("50.00"),
        Decimal("50.00"),
        Decimal("0.00"),
        Decimal("10.00"),
    )
    assert "30.00 given, 20.00 applied" in jan.lines[3].description
    assert (feb.total, feb.unapplied_credit) == (Decimal("42.50"), Decimal("0.00"))


def test_tiers_spanning_the_plan_count_usage_since_the_plan_was_attached() -> None:
    bands = '[{lower_limit: 0, unit_price: "0"}, {lower_limit: 100, unit_price: "0.10"}, {lower_limit: 1000, unit_price: "0.05"}]'
    text = plans_yaml(bands=bands, accounts='\n  acme: [{plan: p, from: "2025-12-15"}]')
    usage = [calls("acme", f"2026-{m:02d}-10T00:00:00Z", 600) for m in (1, 2, 3)] + [
        calls("acme", "2025-12-20T00:00:00Z", 50)
    ]
    plain = bill(plans_from_text(text), "acme", ms("2026-01-01"), ms("2026-04-01"), MeasurementsUsage(usage))
    assert [b.total for b in plain] == [Decimal("50.00")] * 3
    spanning = text.replace("        bands:", "        tiers_span_plan: true\n        bands:")
    bills = bill(plans_from_text(spanning), "acme", ms("2025-12-01"), ms("2026-04-01"), MeasurementsUsage(usage))
    # units since 2025-12-15: 50 | 650 | 1250 | 1850
    assert [b.total for b in bills] == [Decimal("0.00"), Decimal("55.00"), Decimal("47.50"), Decimal("30.00")]
    feb = bills[2].lines[0]
    assert (feb.quantity, feb.units, feb.units_before) == (600, 600, 650)
    assert [(band.lower_limit, band.units) for band in feb.bands] == [(100, 350), (1000, 250)]
    assert bills[2].to_json()["lines"][0]["units_before"] == "650"


class CountingUsage(MeasurementsUsage):
    def __init__(self, measurements: list[dict[str, Any]]) -> None:
        super().__init__(measurements)
        self.asked: list[tuple[str, int, int]] = []

    def quantity(
        self, meter: str, field: str | None, function: str, account: str, start_ms: int, end_ms: int
    ) -> Decimal | int | None:
        self.asked.append((function, start_ms, end_ms))
        return super().quantity(meter, field, function, account, start_ms, end_ms)


def test_unique_users_are_counted_over_the_whole_period_not_summed_by_day() -> None:
    pricing = """
      - aggregation: {meter: api_calls, field: user, function: UNIQUE}
        bands: [{lower_limit: 0, unit_price: "3.00"}]
      - aggregation: {meter: api_calls, field: calls, function: MAX}
        bands: [{lower_limit: 0, unit_price: "1.00"}]"""
    usage = CountingUsage(
        [
            calls("acme", f"2026-01-{day:02d}T09:00:00Z", day, user=user)
            for day in range(1, 21)
            for user in ("ann", "bob")
        ]
    )
    b = bill(plans_from_text(plans_yaml(pricing=pricing)), "acme", ms("2026-01-01"), ms("2026-02-01"), usage)[0]
    assert [line.quantity for line in b.lines] == [2, 20]  # 2 users, not 40 user-days
    assert b.total == Decimal("26.00")
    assert usage.asked == [("UNIQUE", ms("2026-01-01"), ms("2026-02-01")), ("MAX", ms("2026-01-01"), ms("2026-02-01"))]


def test_bills_cover_whole_calendar_periods_of_the_plan_in_utc() -> None:
    usage = MeasurementsUsage([calls("acme", "2026-03-31T23:30:00-01:00", 5)])  # 2026-04-01T00:30Z
    quarterly = plans_from_text(plans_yaml(bill_period="quarter", standing='"9.00"'))
    bills = bill(quarterly, "acme", ms("2026-02-10"), ms("2026-04-02"), usage)
    assert [(b.start_ms, b.end_ms, b.total) for b in bills] == [
        (ms("2026-01-01"), ms("2026-04-01"), Decimal("9.00")),
        (ms("2026-04-01"), ms("2026-07-01"), Decimal("14.00")),
    ]
    yearly = plans_from_text(plans_yaml(bill_period="year", accounts='\n  acme: [{plan: p, from: "2026-07-01"}]'))
    (only,) = bill(yearly, "acme", ms("2025-01-01"), ms("2027-01-01"), usage)
    assert (only.start_ms, only.end_ms, only.lines[0].start_ms) == (
        ms("2026-01-01"),
        ms("2027-01-01"),
        ms("2026-07-01"),
    )


def test_no_bill_before_a_plan_starts_or_after_it_ends() -> None:
    text = plans_yaml(accounts='\n  acme: [{plan: p, from: "2026-02-01", to: "2026-03-01"}]')
    bills = bill(plans_from_text(text), "acme", ms("2025-11-01"), ms("2026-06-01"), MeasurementsUsage([]))
    assert [b.start_ms for b in bills] == [ms("2026-02-01")]


def test_amounts_round_per_line_to_the_currencys_minor_unit() -> None:
    pricing = """
      - aggregation: {meter: api_calls, field: calls, function: SUM}
        bands: [{lower_limit: 0, unit_price: "0.5"}]
      - aggregation: {meter: api_calls, field: calls, function: COUNT}
        bands: [{lower_limit: 0, unit_price: "0.5"}]"""
    b = one_bill(plans_yaml(currency="JPY", pricing=pricing), [calls("acme", "2026-01-02T00:00:00Z", 3)])
    assert kinds(b) == [("usage", "2"), ("usage", "1")]  # 1.5 yen and 0.5 yen, each rounded half up
    assert b.total == Decimal("3")


def test_an_unknown_account_an_empty_range_and_a_negative_quantity_are_named() -> None:
    plans = plans_from_text(ISSUE_EXAMPLE)
    with pytest.raises(BillingError, match="account 'nobody' is not in") as caught:
        bill(plans, "nobody", ms("2026-01-01"), ms("2026-02-01"), MeasurementsUsage([]))
    assert caught.value.reason == "unknown_account"
    with pytest.raises(BillingError) as caught:
        bill(plans, "acme", ms("2026-02-01"), ms("2026-01-01"), MeasurementsUsage([]))
    assert caught.value.reason == "empty_range"
    with pytest.raises(BillingError, match=r"account 'acme', plan 'growth', pricing\[0\] \(SUM\(api_calls.calls\)\)"):
        bill(
            plans,
            "acme",
            ms("2026-01-01"),
            ms("2026-02-01"),
            MeasurementsUsage([calls("acme", "2026-01-03T00:00:00Z", -5)]),
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 28), st.integers(0, 900)), max_size=8),
    st.lists(st.integers(1, 20_000), max_size=3),
    st.booleans(),
)
def test_every_bill_adds_up_and_never_goes_below_zero(
    days: list[tuple[int, int]], credit_cents: list[int], cumulative: bool
) -> None:
    credits = "".join(f'\n    - {{amount: "{c / 100:.2f}", period: "2026-02-01"}}' for c in credit_cents)
    text = ISSUE_EXAMPLE.replace("cumulative: true", f"cumulative: {str(cumulative).lower()}")
    text += f"credits:\n  acme:{credits}\n" if credits else ""
    usage = MeasurementsUsage(
        [calls("acme", f"2026-02-{d:02d}T08:00:00Z", n, uid=f"u{i}") for i, (d, n) in enumerate(days)]
    )
    (b,) = bill(plans_from_text(text), "acme", ms("2026-02-01"), ms("2026-03-01"), usage)
    charges = [line.amount for line in b.lines if line.kind != "credit"]
    assert b.subtotal == sum(charges) >= Decimal("100.00")  # the minimum spend
    assert b.credits == -sum(line.amount for line in b.lines if line.kind == "credit")
    assert b.total == b.subtotal - b.credits >= 0
    assert b.credits + b.unapplied_credit == sum(Decimal(c).scaleb(-2) for c in credit_cents)
    assert all(line.amount.as_tuple().exponent == -2 for line in b.lines)


def test_the_in_memory_usage_answers_each_aggregation_exactly() -> None:
    rows = [
        calls("acme", "2026-01-05T00:00:00Z", 0.1, uid="b"),
        calls("acme", "2026-01-05T00:00:00Z", 0.2, uid="a"),  # same instant, smaller uid
        calls("acme", "2026-01-03T00:00:00Z", 7, uid="c"),
        calls("acme", "2026-02-01T00:00:00Z", 1000, uid="d"),  # the next period
        calls("beta", "2026-01-04T00:00:00Z", 1000, uid="e"),  # another account
    ]
    usage = MeasurementsUsage(rows)
    jan = (ms("2026-01-01"), ms("2026-02-01"))
    answers = {
        f: usage.quantity("api_calls", "calls", f, "acme", *jan)
        for f in ("SUM", "COUNT", "MAX", "MIN", "MEAN", "LATEST", "UNIQUE")
    }
    assert answers == {
        "SUM": Decimal("7.3"),
        "COUNT": 3,
        "MAX": 7,
        "MIN": Decimal("0.1"),
        "MEAN": Decimal("2.4" + "3" * 58),  # 7.3 / 3 to 60 significant digits
        "LATEST": Decimal("0.1"),
        "UNIQUE": 3,
    }
    assert usage.quantity("api_calls", "calls", "MAX", "acme", ms("2026-03-01"), ms("2026-04-01")) is None
    assert usage.quantity("api_calls", "calls", "SUM", "acme", ms("2026-03-01"), ms("2026-04-01")) == 0


def test_a_period_with_no_measurement_for_a_max_prices_nothing() -> None:
    pricing = """
      - aggregation: {meter: api_calls, field: calls, function: MAX}
        bands: [{lower_limit: 0, unit_price: "1.00", fixed_price: "3.00"}]"""
    b = one_bill(plans_yaml(pricing=pricing), [])
    assert (b.lines[0].quantity, b.lines[0].units, b.total) == (None, 0, Decimal("0.00"))
    assert b.to_json()["lines"][0]["quantity"] is None
