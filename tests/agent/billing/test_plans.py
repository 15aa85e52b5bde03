"""plans.yaml: the issue's example loads as written; every problem is named in one pass
with file, line, plan or account, field and reason; numbers are read from their text and
times as instants; a meter catalog catches aggregations of fields that do not exist."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterkit import catalog_from_dict
from meterkit_agent.billing import Attachment, Band, PlansError, load_plans, plans_from_text
from meterkit_agent.billing.periods import instant_ms
from meterkit_agent.instants import boundary_ms
from tests.agent.billing.conftest import ISSUE_EXAMPLE, JAN, plans_yaml

FEB = instant_ms("2026-02-01")


def problems_of(text: str, **kwargs: object) -> list[tuple[str, int | None, str | None, str | None, str | None]]:
    with pytest.raises(PlansError) as caught:
        plans_from_text(text, "plans.yaml", **kwargs)  # type: ignore[arg-type]
    assert all(p.file == "plans.yaml" for p in caught.value.problems)
    return [(p.reason, p.line, p.plan or p.account, p.field, p.message) for p in caught.value.problems]


def test_the_issues_example_loads_as_written(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(ISSUE_EXAMPLE)
    plans = load_plans(path)
    assert (plans.currency, plans.minor_units, plans.source) == ("USD", 2, str(path))
    growth = plans.plans["growth"]
    assert (growth.bill_period, growth.standing_charge, growth.minimum_spend) == (
        "month",
        Decimal("20.00"),
        Decimal("100.00"),
    )
    (line,) = growth.pricing
    assert (line.aggregation.meter, line.aggregation.field, line.aggregation.function) == ("api_calls", "calls", "SUM")
    assert (line.quantity_per_unit, line.rounding, line.cumulative, line.tiers_span_plan) == (1, "NONE", True, False)
    assert line.bands == (
        Band(Decimal(0), Decimal(0)),
        Band(Decimal(100), Decimal("0.10")),
        Band(Decimal(1000), Decimal("0.05"), Decimal(0)),
    )
    assert plans.accounts == {"acme": (Attachment("growth", JAN, None),)}
    assert plans.credits == {}


def test_an_unquoted_decimal_is_read_from_its_text_not_as_a_float() -> None:
    text = ISSUE_EXAMPLE.replace('unit_price: "0.10"', "unit_price: 0.1").replace(
        'unit_price: "0.05"', "unit_price: 0.100000000000000000000000001"
    )
    bands = plans_from_text(text).plans["growth"].pricing[0].bands
    assert bands[1].unit_price == Decimal("0.1")  # not 0.1000000000000000055511151231257827
    assert bands[2].unit_price == Decimal("0.100000000000000000000000001")  # a float would say 0.1


def test_times_are_instants_however_spelled_quoted_or_not() -> None:
    for spelling in ('"2026-01-01T00:00:00Z"', "2026-01-01T00:00:00Z", "2026-01-01", "2026-01-01T01:00:00+01:00"):
        plans = plans_from_text(ISSUE_EXAMPLE.replace('"2026-01-01T00:00:00Z"', spelling))
        assert plans.accounts["acme"][0].start_ms == JAN, spelling


@given(st.integers(min_value=0, max_value=4_102_444_800_000), st.integers(0, 999_999))
def test_instants_are_parsed_as_the_ledger_parses_them(ms: int, sub_ms_ns: int) -> None:
    from meterkit_agent.billing.periods import iso

    text = iso(ms).replace("Z", f"{sub_ms_ns:06d}Z")
    assert instant_ms(text) == boundary_ms(text, "from")


def test_every_problem_is_named_at_once_with_line_plan_field_and_reason() -> None:
    text = """\
currency: USD
plans:
  - code: growth
    bill_period: fortnight
    standing_charge: "20.001"
    pricing:
      - aggregation: {meter: api_calls, field: calls, function: TOTAL}
        rounding: SIDEWAYS
        bands:
          - {lower_limit: 10, unit_price: "0.10"}
      - aggregation: {meter: api_calls, field: calls, function: MAX}
        tiers_span_plan: true
        bands:
          - {lower_limit: 0, unit_price: "-1"}
          - {lower_limit: 0, unit_price: "0.05", colour: red}
  - code: growth
    bill_period: month
accounts:
  acme:
    - {plan: growth, from: "2026-01-01T00:00:00Z"}
    - {plan: starter, from: "2026-01-01T12:00:00"}
"""
    found = problems_of(text)
    where = {(reason, line, who, field) for reason, line, who, field, _ in found}
    assert where == {
        ("bad_value", 3, "growth", "bill_period"),
        ("bad_money", 3, "growth", "standing_charge"),
        ("bad_value", 7, "growth", "pricing[0].aggregation"),
        ("bad_value", 7, "growth", "pricing[0].rounding"),
        ("bad_band", 10, "growth", "pricing[0].bands[0].lower_limit"),
        ("bad_value", 11, "growth", "pricing[1].tiers_span_plan"),
        ("bad_money", 14, "growth", "pricing[1].bands[0].unit_price"),
        ("unknown_key", 15, "growth", "pricing[1].bands[1]"),
        ("duplicate_plan", 16, "growth", "code"),
        ("unknown_plan", 21, "acme", "accounts[1].plan"),
        ("bad_instant", 21, "acme", "accounts[1].from"),
    }
    messages = {field: message for _, _, _, field, message in found}
    assert "fortnight" in messages["bill_period"] and "month, quarter, year" in messages["bill_period"]
    assert "more decimals than the currency's 2" in messages["standing_charge"]
    assert "has no offset" in messages["accounts[1].from"]
    assert "first on line 3" in messages["code"]


def test_the_error_message_lists_each_problem_with_its_place() -> None:
    with pytest.raises(PlansError) as caught:
        plans_from_text(ISSUE_EXAMPLE.replace("bill_period: month", "bill_period: weekly"), "plans.yaml")
    assert str(caught.value).splitlines() == [
        "1 problem(s) in the plans file:",
        "  - plans.yaml:3, plan 'growth', field 'bill_period': bill_period must be one of month, quarter, year,"
        " got 'weekly'  [bad_value]",
    ]


def test_bands_must_start_at_zero_and_rise() -> None:
    text = plans_yaml(
        bands='[{lower_limit: 0, unit_price: "1"}, {lower_limit: 5, unit_price: "1"},'
        ' {lower_limit: 5, unit_price: "1"}]'
    )
    ((reason, _, plan, field, message),) = problems_of(text)
    assert (reason, plan, field) == ("bad_band", "p", "pricing[0].bands[2].lower_limit")
    assert "must be above the previous band's 5" in message


def test_overlapping_attachments_are_refused() -> None:
    accounts = """
  acme:
    - {plan: p, from: "2026-01-01", to: "2026-03-01"}
    - {plan: p, from: "2026-02-15"}
  beta:
    - {plan: p, from: "2026-01-01"}
    - {plan: p, from: "2026-06-01"}
  ok:
    - {plan: p, from: "2026-01-01", to: "2026-02-15"}
    - {plan: p, from: "2026-02-15"}
"""
    found = problems_of(plans_yaml(accounts=accounts))
    assert [(r, who) for r, _, who, _, _ in found] == [
        ("overlapping_attachments", "acme"),
        ("overlapping_attachments", "beta"),
    ]
    assert "from 2026-02-15T00:00:00.000Z overlaps the one to 'p' from 2026-01-01T00:00:00.000Z" in found[0][4]


def test_credits_name_a_bill_period_of_a_plan_the_account_is_on() -> None:
    credits = """
  acme:
    - {amount: "5.00", period: "2026-02-01"}
    - {amount: "5.00", period: "2026-02-02"}
    - {amount: "5.00", period: "2025-12-01"}
    - {amount: "0", period: "2026-02-01"}
    - {amount: "5.001", period: "2026-02-01"}
  nobody:
    - {amount: "5.00", period: "2026-02-01"}
"""
    found = problems_of(plans_yaml(credits=credits))
    assert [(r, who, f) for r, _, who, f, _ in found] == [
        ("not_a_period_start", "acme", "credits[1].period"),
        ("no_plan_then", "acme", "credits[2].period"),
        ("bad_money", "acme", "credits[3].amount"),
        ("bad_money", "acme", "credits[4].amount"),
        ("unknown_account", "nobody", "credits"),
        ("no_plan_then", "nobody", "credits[0].period"),
    ]
    plans = plans_from_text(plans_yaml(credits='\n  acme: [{amount: "5.00", period: 2026-02-01, reason: x}]'))
    assert [(c.amount, c.period_ms, c.reason) for c in plans.credits["acme"]] == [(Decimal("5.00"), FEB, "x")]


def test_currencies_have_their_minor_units() -> None:
    assert plans_from_text(plans_yaml(currency="JPY", standing='"500"')).minor_units == 0
    assert plans_from_text(plans_yaml(currency="KWD", standing='"1.250"')).minor_units == 3
    own = plans_from_text(plans_yaml(currency="CREDITS") + "minor_units: 4\n")
    assert (own.currency, own.minor_units) == ("CREDITS", 4)
    ((reason, _, _, field, message),) = problems_of(plans_yaml(currency="XYZ"))
    assert (reason, field) == ("bad_currency", "currency") and "give minor_units" in message
    ((reason, _, _, field, _),) = problems_of(plans_yaml(currency="JPY", standing='"500.5"'))
    assert (reason, field) == ("bad_money", "standing_charge")


def test_yaml_anchors_and_repeated_keys_are_refused_with_their_lines() -> None:
    text = ISSUE_EXAMPLE.replace("    standing_charge:", "    bill_period: month\n    standing_charge:")
    text = text.replace("- code: growth", "- &g\n    code: growth")
    found = problems_of(text)
    assert [(r, line) for r, line, *_ in found] == [("yaml_alias", 3), ("duplicate_key", 6)]
    assert "plans file" in found[0][4]


def test_a_file_that_is_not_yaml_is_one_named_problem() -> None:
    assert [(r, line) for r, line, *_ in problems_of("plans: [\n  {code: x\n")] == [("bad_yaml", 3)]


def test_the_catalog_check_names_meters_and_fields_that_do_not_exist() -> None:
    catalog = catalog_from_dict(
        {
            "meters": [
                {
                    "code": "api_calls",
                    "name": "API calls",
                    "data_fields": [
                        {"code": "calls", "name": "Calls", "category": "MEASURE"},
                        {"code": "user", "name": "User", "category": "WHO"},
                    ],
                }
            ]
        }
    )
    assert plans_from_text(ISSUE_EXAMPLE, catalog=catalog).plans["growth"]
    pricing = """
      - aggregation: {meter: api_calls, field: user, function: UNIQUE}
        bands: [{lower_limit: 0, unit_price: "1"}]
      - aggregation: {meter: api_calls, field: user, function: SUM}
        bands: [{lower_limit: 0, unit_price: "1"}]
      - aggregation: {meter: api_calls, field: bytes, function: MAX}
        bands: [{lower_limit: 0, unit_price: "1"}]
      - aggregation: {meter: downloads, function: COUNT}
        bands: [{lower_limit: 0, unit_price: "1"}]
"""
    found = problems_of(plans_yaml(pricing=pricing), catalog=catalog)
    assert [(r, f) for r, _, _, f, _ in found] == [
        ("not_in_catalog", "pricing[1].aggregation"),
        ("not_in_catalog", "pricing[2].aggregation"),
        ("not_in_catalog", "pricing[3].aggregation"),
    ]
    assert "'user' is a WHO field of meter 'api_calls'; SUM needs a MEASURE, INCOME or COST field" in found[0][4]
    assert "has no field 'bytes'" in found[1][4]
    assert "meter 'downloads' is not in the catalog" in found[2][4]


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PlansError) as caught:
        load_plans(tmp_path / "missing.yaml")
    assert caught.value.problems[0].reason == "unreadable"


def test_a_credit_on_a_plan_with_problems_adds_no_second_problem() -> None:
    text = plans_yaml(bill_period="weekly", credits='\n  acme: [{amount: "5.00", period: "2026-01-01"}]')
    assert [(r, f) for r, _, _, f, _ in problems_of(text)] == [("bad_value", "bill_period")]
