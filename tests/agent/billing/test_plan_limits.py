"""The agent's plans reader accepts limits and thresholds and checks them by the SDK's
rules: the same problems, named the agent's way (file, line, plan, field, reason)."""

from __future__ import annotations

import pytest

from meterkit import PlansFileError
from meterkit._plans import limit_plans_from_text
from meterkit_agent.billing.errors import PlansError
from meterkit_agent.billing.plans import plans_from_text

PLANS = """\
currency: USD
plans:
  - code: growth
    bill_period: month
    pricing:
      - aggregation: {meter: api_calls, field: calls, function: SUM}
        bands: [{lower_limit: 0, unit_price: "0.10"}]
    limits:
      - {meter: api_calls, rate: 100, per: second, burst: 200}
      - {meter: api_calls, cap: 1000000, period: month, mode: hard, grace_percent: 5}
      - {meter: data_downloaded, field: bytes, cap: 10737418240, period: month, mode: soft}
    thresholds: [80, 100]
accounts:
  acme: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
"""


def test_a_plans_file_with_limits_prices_as_before() -> None:
    plans = plans_from_text(PLANS, "plans.yaml")
    assert list(plans.plans) == ["growth"]
    assert limit_plans_from_text(PLANS, "plans.yaml").plans["growth"].thresholds  # the SDK reads the same file


def test_limit_problems_are_reported_by_the_agent_with_the_sdk_reasons() -> None:
    bad = PLANS.replace("burst: 200", "burst: 0").replace("mode: soft}", "mode: soft, grace_percent: 5}")
    with pytest.raises(PlansError) as raised:
        plans_from_text(bad, "plans.yaml")
    found = {(p.file, p.line, p.plan, p.field, p.reason) for p in raised.value.problems}
    assert found == {
        ("plans.yaml", 9, "growth", "limits[0].burst", "bad_value"),
        ("plans.yaml", 11, "growth", "limits[2].grace_percent", "bad_value"),
    }
    with pytest.raises(PlansFileError) as sdk:
        limit_plans_from_text(bad, "plans.yaml")
    assert {(p.line, p.field, p.reason) for p in sdk.value.problems} == {(f[1], f[3], f[4]) for f in found}
