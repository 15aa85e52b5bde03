"""Conservation of money across closed periods: whatever the order of usage changes,
closes and credits, every bill served (closed periods frozen, open ones with their
adjustments) adds up to each period's own total as recomputed now, once: nothing billed
twice, nothing never. Checked after every step of random sequences, on plans with a
standing charge, a minimum spend, tiered or volume bands whose tiers may span the plan,
packages of units, and currencies of 0, 2 and 3 minor digits."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from meterkit_agent.billing import MeasurementsUsage, Plans, bill, plans_from_text
from meterkit_agent.billing.adjustments import ClosedBill, account_bills, bill_to_close
from meterkit_agent.billing.periods import instant_ms, iso
from tests.agent.billing.conftest import JAN, calls, plans_yaml

#: January to April 2026; April is never closed, so every closed period has an open one after it
MONTHS = 4
STARTS = [instant_ms(f"2026-{m:02d}-01") for m in range(1, MONTHS + 2)]
END = STARTS[-1]
NOW = instant_ms("2027-01-01")  # every period has ended


def money(minor_units: int, digits: int) -> str:
    """``minor_units`` of the currency's smallest unit, as a plans file writes an amount."""
    return str(Decimal(minor_units).scaleb(-digits))


@st.composite
def plans_texts(draw: st.DrawFn) -> tuple[str, int]:
    """A plans file (without credits) and its currency's minor digits."""
    currency, digits = draw(st.sampled_from([("USD", 2), ("JPY", 0), ("KWD", 3)]))
    standing = money(draw(st.integers(0, 900)), digits)
    minimum = money(draw(st.sampled_from([0, 1_500, 4_000])), digits)
    prices = draw(st.lists(st.sampled_from(["0.013", "0.1", "0.0075", "1", "0.333"]), min_size=1, max_size=3))
    limits = [0, 40, 150][: len(prices)]
    bands = ", ".join(f'{{lower_limit: {lo}, unit_price: "{p}"}}' for lo, p in zip(limits, prices, strict=True))
    per_unit = draw(st.sampled_from([(1, "NONE"), (3, "NONE"), (3, "UP"), (7, "NEAREST")]))
    pricing = f"""
      - aggregation: {{meter: api_calls, field: calls, function: SUM}}
        quantity_per_unit: {per_unit[0]}
        rounding: {per_unit[1]}
        cumulative: {str(draw(st.booleans())).lower()}
        tiers_span_plan: {str(draw(st.booleans())).lower()}
        bands: [{bands}]"""
    text = plans_yaml(currency=currency, standing=f'"{standing}"', minimum=f'"{minimum}"', pricing=pricing)
    return text, digits


#: one step: ("add", month, day, calls), ("remove", which), ("close", month), ("credit", month, minor units)
steps = st.one_of(
    st.tuples(st.just("add"), st.integers(0, MONTHS - 1), st.integers(1, 28), st.integers(0, 400)),
    st.tuples(st.just("remove"), st.integers(0, 1_000)),
    st.tuples(st.just("close"), st.integers(0, MONTHS - 2)),
    st.tuples(st.just("credit"), st.integers(0, MONTHS - 1), st.integers(1, 30_000)),
)


@dataclass
class Account:
    """What the ledger would hold for one account: measurements, closed bills, credits."""

    text: str
    digits: int
    records: list[dict[str, Any]] = field(default_factory=list)
    closed: list[ClosedBill] = field(default_factory=list)
    credits: list[str] = field(default_factory=list)
    added: int = 0

    def plans(self) -> Plans:
        return plans_from_text(self.text + (f"credits:\n  acme:{''.join(self.credits)}\n" if self.credits else ""))

    def apply(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "add":
            _, month, day, n = step
            self.added += 1
            self.records.append(calls("acme", f"2026-{month + 1:02d}-{day:02d}T12:00:00Z", n, uid=f"m{self.added}"))
        elif kind == "remove" and self.records:  # in memory, what a reversal does in the ledger
            del self.records[step[1] % len(self.records)]
        elif kind == "close" and all(c.start_ms != STARTS[step[1]] for c in self.closed):  # a second close: no-op
            usage = MeasurementsUsage(self.records)
            key, doc = bill_to_close(self.plans(), "acme", STARTS[step[1]], usage, self.closed, NOW)
            self.closed.append(ClosedBill(key[0], key[1], NOW, doc))
        elif kind == "credit":
            _, month, amount = step
            period = iso(STARTS[month])
            self.credits.append(f'\n    - {{amount: "{money(amount, self.digits)}", period: "{period}"}}')


def check(account: Account) -> None:
    plans, usage = account.plans(), MeasurementsUsage(account.records)
    served = account_bills(plans, "acme", JAN, END, usage, account.closed)
    own_now = bill(plans, "acme", JAN, END, usage)  # each period's own bill, no adjustments
    assert len(served) == len(own_now) == MONTHS
    frozen = {c.start_ms: c.doc for c in account.closed}
    for doc, own in zip(served, own_now, strict=True):
        if own.start_ms in frozen:
            assert doc == frozen[own.start_ms]  # a closed period's bill never changes
        else:
            assert (doc["status"], doc["period_total"]) == ("open", str(own.period_total))
        adjusted = sum((Decimal(line["amount"]) for line in doc["lines"] if line["kind"] == "adjustment"), Decimal(0))
        assert Decimal(doc["total"]) == Decimal(doc["period_total"]) + adjusted
        assert Decimal(doc["period_total"]) >= 0  # credits never take a period's own charges below zero
        assert all(Decimal(line["amount"]).as_tuple().exponent == -account.digits for line in doc["lines"])
    paid = sum((Decimal(doc["total"]) for doc in served), Decimal(0))
    assert paid == sum((b.period_total for b in own_now), Decimal(0))


#: the review's case: a 15.00 credit on February, which closes carrying January's change, then grows
REVIEWED = [("add", 0, 5, 30), ("add", 1, 5, 10), ("credit", 1, 1_500), ("close", 0), ("add", 0, 6, 20), ("close", 1)]


@settings(max_examples=100, deadline=None)
@given(plans_texts(), st.lists(steps, min_size=1, max_size=16))
@example((plans_yaml(), 2), [*REVIEWED, ("add", 1, 6, 20)])
@example((plans_yaml(), 2), [*REVIEWED[:4], ("remove", 0), ("add", 0, 5, 10), *REVIEWED[5:], ("add", 1, 6, 20)])
def test_bills_served_add_up_to_every_periods_own_total_recomputed_now(
    plan: tuple[str, int], sequence: list[tuple[Any, ...]]
) -> None:
    account = Account(*plan)
    for step in sequence:
        account.apply(step)
        check(account)
