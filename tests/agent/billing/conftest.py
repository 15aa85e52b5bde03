"""Plans files and measurements for the billing tests."""

from __future__ import annotations

from typing import Any

from meterkit_agent.billing.periods import instant_ms

#: the issue's example, exactly as written there
ISSUE_EXAMPLE = """\
currency: USD
plans:
  - code: growth
    bill_period: month            # month | quarter | year (calendar, UTC)
    standing_charge: "20.00"      # per bill period, in advance
    minimum_spend: "100.00"       # a true-up line when the period's total falls short
    pricing:
      - aggregation: {meter: api_calls, field: calls, function: SUM}
        quantity_per_unit: 1      # as m3ter's aggregation; with rounding
        rounding: NONE            # UP | DOWN | NEAREST | NONE
        cumulative: true          # true: tiered (graduated); false: volume
        bands:                    # m3ter's pricing bands
          - {lower_limit: 0, unit_price: "0"}
          - {lower_limit: 100, unit_price: "0.10"}
          - {lower_limit: 1000, unit_price: "0.05", fixed_price: "0"}
accounts:
  acme: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
"""

JAN = instant_ms("2026-01-01")


def plans_yaml(
    *,
    currency: str = "USD",
    standing: str = '"0"',
    minimum: str = '"0"',
    bill_period: str = "month",
    bands: str = '[{lower_limit: 0, unit_price: "1"}]',
    pricing: str | None = None,
    accounts: str = '\n  acme: [{plan: p, from: "2026-01-01"}]',
    credits: str | None = None,
) -> str:
    """A plans file with one plan ``p`` (one SUM pricing line over ``api_calls.calls``
    unless ``pricing`` is given)."""
    if pricing is None:
        pricing = f"""
      - aggregation: {{meter: api_calls, field: calls, function: SUM}}
        bands: {bands}"""
    text = f"""\
currency: {currency}
plans:
  - code: p
    bill_period: {bill_period}
    standing_charge: {standing}
    minimum_spend: {minimum}
    pricing:{pricing}
accounts:{accounts}
"""
    return text + (f"credits:{credits}\n" if credits else "")


def calls(
    account: str, ts: str, n: int | float | str, meter: str = "api_calls", uid: str | None = None, **who: Any
) -> dict[str, Any]:
    """One measurement of ``n`` calls in m3ter's wire shape."""
    return {
        "uid": uid or f"{account}-{ts}-{n}-{sorted(who.items())}",
        "meter": meter,
        "account": account,
        "ts": ts,
        "measure": {"calls": n},
        "who": who,
    }
