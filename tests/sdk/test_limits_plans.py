"""The limits of plans.yaml: the issue's example parses; every problem is named."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

import meterkit
from meterkit._plans import instant_ms, limit_plans_from_text, load_limit_plans

EXAMPLE = """\
plans:
  - code: growth
    limits:
      - {meter: api_calls, rate: 100, per: second, burst: 200}   # steady rate, bucket of 200
      - {meter: api_calls, cap: 1000000, period: month, mode: hard, grace_percent: 5}
      - {meter: data_downloaded, field: bytes, cap: 10737418240, period: month, mode: soft}
    thresholds: [80, 100]            # percent of each cap; notify once per period
accounts:
  acme: [{plan: old, from: "2025-01-01", to: "2026-01-01T00:00:00Z"}, {plan: growth, from: "2026-01-01T00:00:00Z"}]
"""


def test_the_issue_example_parses_as_written() -> None:
    plans = limit_plans_from_text(EXAMPLE, "plans.yaml")
    growth = plans.plans["growth"]
    (rate,) = growth.rates
    assert (rate.rate, rate.per, rate.burst, rate.scope) == (100, "second", 200, "host")
    hard, soft = growth.caps
    assert hard.hard_limit == Decimal(1_050_000) and hard.field is None
    assert soft.field == "bytes" and soft.mode == "soft" and soft.cap == Decimal(10737418240)
    assert growth.thresholds == (Decimal(80), Decimal(100))
    assert plans.plan_at("acme", instant_ms("2025-06-01"))[0] == "old"
    assert plans.plan_at("acme", instant_ms("2026-03-01"))[0] == "growth"
    assert plans.plan_at("acme", instant_ms("2024-01-01"))[0] is None


BAD = """\
plans:
  - code: growth
    limits:
      - {meter: api_calls, rate: 0, per: fortnight, burst: 2.5}
      - {meter: api_calls, cap: -1, period: week, mode: hard, grace_percent: 5, color: red}
      - {meter: api_calls, rate: 10, cap: 10}
      - {meter: data, cap: 10, mode: soft, grace_percent: 5}
    thresholds: [100, 80]
accounts:
  acme: [{plan: growth, from: "2026-01-01T00:00:00"}]
"""


def test_every_problem_is_named_with_file_line_plan_field_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(BAD)
    with pytest.raises(meterkit.PlansFileError) as raised:
        load_limit_plans(path)
    found = {(p.line, p.plan, p.account, p.field, p.reason) for p in raised.value.problems}
    assert found == {
        (4, "growth", None, "limits[0].rate", "bad_value"),
        (4, "growth", None, "limits[0].per", "bad_value"),
        (4, "growth", None, "limits[0].burst", "bad_value"),
        (5, "growth", None, "limits[1].color", "unknown_key"),
        (5, "growth", None, "limits[1].cap", "bad_value"),
        (5, "growth", None, "limits[1].period", "bad_value"),
        (6, "growth", None, "limits[2]", "bad_shape"),
        (7, "growth", None, "limits[3].grace_percent", "bad_value"),
        (2, "growth", None, "thresholds[1]", "bad_value"),  # a list has no line of its own: the plan's
        (10, None, "acme", "accounts[0]", "bad_attachment"),
    }
    assert all(p.file == str(path) for p in raised.value.problems)
    assert f"{path}:4, plan 'growth', field 'limits[0].per'" in str(raised.value)


def test_configure_refuses_a_bad_plans_file(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(BAD)
    with pytest.raises(meterkit.PlansFileError):
        meterkit.configure(spool_dir=tmp_path / "spool", plans=path)


def test_a_global_limit_too_large_for_lua_is_refused() -> None:
    text = EXAMPLE.replace("burst: 200}", "burst: 1000000000, scope: global}").replace("per: second", "per: day")
    with pytest.raises(meterkit.PlansFileError) as raised:
        limit_plans_from_text(text)
    assert [p.reason for p in raised.value.problems] == ["too_large"]
