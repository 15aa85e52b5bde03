"""Spend levels (``spend_thresholds``) on the ledger, SQLite and PostgreSQL: each level is
recorded once per bill period as usage arrives, with the bill's ``period_total`` (the
figure ``GET /bills`` shows); a new period starts afresh; throttled accounts wait in
``pending`` and are evaluated later, never lost; a plan without the key costs no bill; a
bad key is refused with its plan, field and reason."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from meterkit_agent.billing import PlansError, bill, instant_ms, plans_from_text
from meterkit_agent.ledger import Ledger
from meterkit_agent.ledger.api import create_app
from meterkit_agent.ledger.billsource import LedgerUsage
from meterkit_agent.ledger.signalsrun import SignalsRuntime
from meterkit_agent.ledger.spendwatch import SpendWatch
from meterkit_agent.signals import list_notifications
from meterkit_agent.signals.events import decimal_text
from tests.agent.conftest import TOKEN
from tests.agent.ledger.conftest import AUTH, fresh_org, wipe

# 20.00 standing + 1.00 a call, minimum 100.00: 120 calls bill 140.00
PLANS = """
currency: USD
plans:
  - code: growth
    bill_period: month
    standing_charge: "20.00"
    minimum_spend: "100.00"
    pricing:
      - aggregation: {meter: api_calls, function: COUNT}
        bands: [{lower_limit: 0, unit_price: "1.00"}]
    limits:
      - {meter: api_calls, cap: 1000, period: month}
    thresholds: [10]
    spend_thresholds: ["150.00", "200.00"]
  - code: quiet
    bill_period: month
    pricing:
      - aggregation: {meter: api_calls, function: COUNT}
        bands: [{lower_limit: 0, unit_price: "1.00"}]
accounts:
  acme: [{plan: growth, from: "2026-01-01T00:00:00Z"}]
  initech: [{plan: quiet, from: "2026-01-01T00:00:00Z"}]
""" + "".join(f'  bulk{i}: [{{plan: growth, from: "2026-01-01T00:00:00Z"}}]\n' for i in range(10))

MARCH, APRIL = instant_ms("2026-03-01"), instant_ms("2026-04-01")


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def org(shared_ledger: Ledger) -> Iterator[str]:
    name = fresh_org()
    yield name
    shared_ledger.watch = None  # the module's ledger goes back to having no plans
    wipe(shared_ledger, name)


def calls(n: int, day: str, account: str = "acme") -> list[dict[str, Any]]:
    return [
        {"uid": str(uuid.uuid4()), "meter": "api_calls", "account": account, "ts": f"{day}T10:00:{i % 60:02d}.{i:03d}Z"}
        for i in range(n)
    ]


def spend_events(ledger: Ledger, org: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        found = list_notifications(conn, org)
    return [n for n in found if n["type"] == "spend_threshold"]


def seen(ledger: Ledger, org: str) -> list[tuple[str, str, str]]:
    return sorted((n["account"], n["threshold"], n["period"]["start"][:7]) for n in spend_events(ledger, org))


def test_levels_fire_once_per_period_with_the_bills_total(shared_ledger: Ledger, org: str) -> None:
    plans = plans_from_text(PLANS)
    clock = Clock(instant_ms("2026-03-20"))
    watch = SpendWatch(shared_ledger, plans, every_millis=0, clock=clock)
    shared_ledger.watch = watch.after_ingest
    shared_ledger.ingest(org, calls(120, "2026-03-02"))  # 140.00
    assert seen(shared_ledger, org) == []
    shared_ledger.ingest(org, calls(10, "2026-03-03"))  # 150.00: reached at the level
    assert seen(shared_ledger, org) == [("acme", "150", "2026-03")]
    shared_ledger.ingest(org, calls(70, "2026-03-04"))  # 220.00
    assert seen(shared_ledger, org) == [("acme", "150", "2026-03"), ("acme", "200", "2026-03")]
    top = next(n for n in spend_events(shared_ledger, org) if n["threshold"] == "200")
    march = bill(plans, "acme", MARCH, APRIL, LedgerUsage(shared_ledger, org))[0]
    assert (top["meter"], top["measure"], top["period"]["end"][:10]) == ("", "", "2026-04-01")
    assert top["data"] == {"level": "200", "spend": "220", "currency": "USD", "plan": "growth"}
    assert str(march.period_total) == "220.00"  # the figure GET /bills shows
    # more usage, and sweeps, in the same period: nothing again
    shared_ledger.ingest(org, calls(5, "2026-03-05"))
    assert watch.sweep(org) == 0 and len(seen(shared_ledger, org)) == 2
    # April starts afresh: the standing charge alone reaches nothing, usage does
    clock.ms = instant_ms("2026-04-10")
    assert watch.sweep(org) == 0
    shared_ledger.ingest(org, calls(200, "2026-04-02"))  # 220.00 in April
    assert seen(shared_ledger, org) == [
        ("acme", "150", "2026-03"),
        ("acme", "150", "2026-04"),
        ("acme", "200", "2026-03"),
        ("acme", "200", "2026-04"),
    ]
    # a late March measurement is not the current period's: no bill computed for it
    bills = watch.bills
    shared_ledger.ingest(org, calls(1, "2026-03-06"))
    assert watch.bills == bills


def test_a_throttled_account_waits_in_pending_and_is_not_lost(shared_ledger: Ledger, org: str) -> None:
    plans = plans_from_text(PLANS)
    watch = SpendWatch(shared_ledger, plans, every_millis=3_600_000, clock=Clock(instant_ms("2026-03-20")))
    shared_ledger.watch = watch.after_ingest
    shared_ledger.ingest(org, calls(10, "2026-03-02"))  # evaluated: 30.00 reaches no level
    shared_ledger.ingest(org, calls(190, "2026-03-03"))  # 220.00, but acme was evaluated just now
    assert watch.bills == 1 and watch.pending == {(org, "acme")} and seen(shared_ledger, org) == []
    assert watch.run_due() == 0 and watch.pending == {(org, "acme")}  # not due for an hour
    watch.every_millis = 0  # the interval passes
    assert watch.run_due() == 2 and watch.pending == set()
    assert seen(shared_ledger, org) == [("acme", "150", "2026-03"), ("acme", "200", "2026-03")]


def test_a_sweep_of_many_accounts_prices_each_as_its_bill(shared_ledger: Ledger, org: str) -> None:
    """More accounts than one query each (one usage query answers all): the same totals."""
    plans = plans_from_text(PLANS)
    watch = SpendWatch(shared_ledger, plans, clock=Clock(instant_ms("2026-03-20")))
    for i in range(10):
        shared_ledger.ingest(org, calls(130 + 10 * i, "2026-03-02", f"bulk{i}"))  # 150.00 ... 240.00
    assert watch.sweep(org) == 10 + 5  # every bulk account 150; 200 from bulk5 (200.00) on
    for event in spend_events(shared_ledger, org):
        own = bill(plans, event["account"], MARCH, APRIL, LedgerUsage(shared_ledger, org))[0]
        assert event["data"]["spend"] == decimal_text(own.period_total)
    assert watch.sweep(org) == 0


def test_a_plan_without_spend_levels_costs_no_bill(shared_ledger: Ledger, org: str) -> None:
    without = plans_from_text(PLANS.replace('    spend_thresholds: ["150.00", "200.00"]\n', ""))
    runtime = SignalsRuntime(shared_ledger, without, None)
    assert runtime.spend is None and shared_ledger.watch == runtime.thresholds.after_ingest  # type: ignore[union-attr]
    watch = SpendWatch(shared_ledger, plans_from_text(PLANS), every_millis=0, clock=Clock(instant_ms("2026-03-20")))
    shared_ledger.watch = watch.after_ingest
    shared_ledger.ingest(org, calls(300, "2026-03-02", "initech"))  # on a plan without levels
    shared_ledger.ingest(org, [{**c, "meter": "downloads"} for c in calls(3, "2026-03-02")])  # no priced meter
    assert watch.bills == 0 and watch.pending == set() and seen(shared_ledger, org) == []


def test_caps_and_spend_levels_both_watch_the_api(shared_ledger: Ledger, org: str) -> None:
    """Through the app: the runtime chains the cap thresholds and the spend levels."""
    client = TestClient(create_app(shared_ledger, token=TOKEN, plans=plans_from_text(PLANS)))
    runtime = client.app.state.signals  # type: ignore[attr-defined]
    assert runtime.thresholds is not None and runtime.spend is not None
    runtime.spend.every_millis = 0
    runtime.spend.clock = Clock(instant_ms("2026-03-20"))
    r = client.post(f"/organizations/{org}/measurements", json={"measurements": calls(140, "2026-03-02")}, headers=AUTH)
    assert r.status_code == 200, r.text
    listed = client.get(f"/organizations/{org}/notifications", headers=AUTH).json()["notifications"]
    assert sorted((n["type"], n["threshold"]) for n in listed) == [
        ("cap_threshold", "10"),
        ("spend_threshold", "150"),
    ]


def _problems(levels: str, extra: str = "") -> list[tuple[str, str | None, str | None, int | None]]:
    text = f"""currency: USD
plans:
  - code: growth
    bill_period: month
{extra}    spend_thresholds: {levels}
accounts:
  acme: [{{plan: growth, from: "2026-01-01T00:00:00Z"}}]
"""
    with pytest.raises(PlansError) as caught:
        plans_from_text(text, "plans.yaml")
    return [(p.reason, p.plan, p.field, p.line) for p in caught.value.problems]


@pytest.mark.parametrize(
    ("levels", "extra", "reason", "field"),
    [
        ('"500.00"', "", "bad_shape", "spend_thresholds"),
        ("[]", "", "bad_shape", "spend_thresholds"),
        ('["abc"]', "", "bad_money", "spend_thresholds[0]"),
        ('["0"]', "", "bad_money", "spend_thresholds[0]"),
        ('["-5.00"]', "", "bad_money", "spend_thresholds[0]"),
        ('["500.001"]', "", "bad_money", "spend_thresholds[0]"),
        ('["1000.00", "500.00"]', "", "bad_value", "spend_thresholds[1]"),
        ('["500.00", "500"]', "", "bad_value", "spend_thresholds[1]"),
        ('["100.00"]', '    minimum_spend: "100.00"\n', "bad_value", "spend_thresholds[0]"),
        ('["15"]', '    standing_charge: "20.00"\n', "bad_value", "spend_thresholds[0]"),
    ],
)
def test_bad_spend_levels_are_named(levels: str, extra: str, reason: str, field: str) -> None:
    assert _problems(levels, extra) == [(reason, "growth", field, 3)]
