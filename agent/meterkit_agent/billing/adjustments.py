"""Closed bill periods, and adjustment lines for what changed in them after they closed.

A bill period of an account can be *closed*: its bill is frozen as it stood (the JSON the
ledger served for it, marked ``"status": "closed"`` with ``closed_at``) and is from then on
the period's bill, whatever happens to its usage. Usage still changes after a period
closes (a late measurement, a correction reversing one), and a plans file can change; that
difference is billed on the **first open period after** the closed one, as one
``adjustment`` line per closed period:

    adjustment(C) = C recomputed now − (C's frozen ``period_total``
                                         + adjustments for C frozen into later closed bills)

"Recomputed now" is C's own bill as :func:`.bills.price` gives it today: its standing
charge, usage, minimum-spend true-up and credits, without adjustments for other periods
(those are accounted to their own periods), so it compares with the frozen
``period_total``, the same figure as it stood at closing. A period that no longer exists
under the plans file (the plan changed from monthly to quarterly) recomputes as 0: what it
billed is given back where the new period bills the same usage. A zero adjustment is not
shown. Both sides are sums of lines rounded to the currency's minor unit, so the difference
is exact.

"First open period after C": the account's bill periods, closed or not, in order of their
end (then start), as bills are listed. An open period P carries the adjustments of the
closed periods that come right before it, back to the previous open period. Closing P
freezes them; later changes then land on the next open period, and what P froze counts as
billed. Any period that has ended may be closed, in any order, as m3ter and Stripe let an
ended bill be finalised without the earlier ones: a closed period between open ones passes
its adjustments on to the next open period after it.

Adjustment lines are outside the minimum-spend comparison, and the period's credits do not
apply to them (:func:`.bills.price`): C's own credits are part of C recomputed now, so a
credit counts once, in its own period, however often C's usage changes. Each bill's total is
then its ``period_total`` plus its adjustments, and over all bills the account pays each
period's own total as recomputed now, once: nothing billed twice or never (the property
tested in ``tests/agent/billing/test_conservation.py``), as long as an open period follows
every closed one. A negative adjustment (usage withdrawn from a closed period) can take a
bill's ``total`` below zero: what is owed back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .bills import Bill, Line, PeriodKey, Segment, bill_periods, price
from .errors import BillingError
from .model import Plans
from .money import round_money
from .periods import instant_ms, iso
from .usage import Usage

_MONTH = re.compile(r"(\d{4})-(\d{2})\Z", re.ASCII)


def period_start_ms(text: str) -> int:
    """The instant a period to close is named by: a month (``2026-01``, its first instant,
    UTC) or an instant as the ledger reads one (``2026-01-01``, ``2026-04-01T00:00:00Z``).
    Raises ValueError saying why not."""
    month = _MONTH.match(text.strip())
    if month is not None:
        year, number = int(month[1]), int(month[2])
        if not 1 <= number <= 12:
            raise ValueError(f"{text!r:.40} is not a month (YYYY-MM)")
        return instant_ms(f"{year:04d}-{number:02d}-01")
    return instant_ms(text)


@dataclass(frozen=True)
class ClosedBill:
    """A closed bill period of an account: ``doc`` is its bill, frozen, exactly as the
    ledger served it when it closed (``status`` ``closed``, ``closed_at``)."""

    start_ms: int
    end_ms: int
    closed_at_ms: int
    doc: Mapping[str, Any]

    @property
    def period_total(self) -> Decimal:
        """What the period's own lines came to when it closed, after its credits."""
        return Decimal(self.doc["period_total"])

    def adjustments(self) -> Iterator[tuple[int, int, Decimal]]:
        """(start, end, amount) of each adjustment line frozen into this bill."""
        for line in self.doc["lines"]:
            if line["kind"] == "adjustment":
                yield instant_ms(line["from"]), instant_ms(line["to"]), Decimal(line["amount"])


def account_bills(
    plans: Plans, account: str, start_ms: int, end_ms: int, usage: Usage, closed: Sequence[ClosedBill]
) -> list[dict[str, Any]]:
    """The bills of ``account`` for every bill period that intersects ``[start_ms,
    end_ms)``, as JSON, in order of their end: a closed period's frozen bill, an open one's
    computed now with its adjustments (``"status": "open"``). ``closed`` holds the
    account's closed periods (all of them: an adjustment depends on closed periods outside
    the range). Raises :class:`BillingError` as :func:`.bills.bill` does."""
    current = bill_periods(plans, account, start_ms, end_ms)
    timeline = _Timeline(plans, account, closed, start_ms, end_ms)
    docs: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for key, segments in current:
        frozen = timeline.frozen.get(key[:2])
        doc = dict(frozen.doc) if frozen is not None else timeline.open_bill(key, segments, usage).to_json()
        docs.append(((key[1], key[0]), doc))
    shown = {key[:2] for key, _ in current}
    for c in closed:  # closed under a plan that no longer has this period: still its bill
        if (c.start_ms, c.end_ms) not in shown and c.start_ms < end_ms and start_ms < c.end_ms:
            docs.append(((c.end_ms, c.start_ms), dict(c.doc)))
    return [doc for _, doc in sorted(docs, key=lambda pair: pair[0])]


def bill_to_close(
    plans: Plans, account: str, start_ms: int, usage: Usage, closed: Sequence[ClosedBill], now_ms: int
) -> tuple[PeriodKey, dict[str, Any]]:
    """The bill period of ``account`` that starts at ``start_ms``, and its bill to freeze
    (``status`` ``closed``, ``closed_at`` ``now_ms``), adjustments included. Raises
    :class:`BillingError`: ``unknown_account``; ``not_a_period_start`` (no bill period of
    the account's plan starts there); ``ambiguous_period`` (two do: a plan change between
    bill periods of different lengths); ``period_not_ended`` (it ends after ``now_ms``)."""
    around = bill_periods(plans, account, start_ms, start_ms + 1)
    starting = [(key, segments) for key, segments in around if key[0] == start_ms]
    if not starting:
        inside = "; ".join(f"{iso(k[0])} to {iso(k[1])} ({k[2]})" for k, _ in around)
        raise BillingError(
            "not_a_period_start",
            f"no bill period of account {account!r:.80} starts at {iso(start_ms)}"
            + (f": it is inside {inside}; give the period's start" if inside else ": it is on no plan then"),
        )
    if len(starting) > 1:
        raise BillingError(
            "ambiguous_period",
            f"two bill periods of account {account!r:.80} start at {iso(start_ms)} (a plan change between"
            f" {' and '.join(k[2] for k, _ in starting)} periods); they cannot be closed one by one",
        )
    key, segments = starting[0]
    if key[1] > now_ms:
        raise BillingError(
            "period_not_ended",
            f"the bill period {iso(key[0])} to {iso(key[1])} of account {account!r:.80} has not ended"
            f" (it is {iso(now_ms)}): only an ended period can be closed",
        )
    doc = _Timeline(plans, account, closed, key[0], key[1]).open_bill(key, segments, usage).to_json()
    doc["status"] = "closed"
    doc["closed_at"] = iso(now_ms)
    return key, doc


class _Timeline:
    """An account's bill periods in order of their end (then start), closed or not, from
    its first closed period to the range asked for: which closed periods an open one
    adjusts, and by how much."""

    def __init__(self, plans: Plans, account: str, closed: Sequence[ClosedBill], start_ms: int, end_ms: int) -> None:
        self.plans, self.account, self.closed = plans, account, closed
        self.frozen = {(c.start_ms, c.end_ms): c for c in closed}
        earliest = min((c.start_ms for c in closed), default=start_ms)
        keys = {key[:2] for key, _ in bill_periods(plans, account, min(earliest, start_ms), end_ms)}
        self.order = sorted(keys | set(self.frozen), key=lambda k: (k[1], k[0]))

    def open_bill(self, key: PeriodKey, segments: Sequence[Segment], usage: Usage) -> Bill:
        """The bill of the open period ``key``, with an adjustment line for each closed
        period of which it is the first open period after."""
        lines = [line for c in self._sources(key[:2]) if (line := self._adjustment(c, usage)) is not None]
        return price(self.plans, self.account, key, segments, usage, lines)

    def _sources(self, key: tuple[int, int]) -> list[ClosedBill]:
        """The closed periods right before ``key``, back to the previous open one, oldest first."""
        found: list[ClosedBill] = []
        for earlier in reversed([k for k in self.order if (k[1], k[0]) < (key[1], key[0])]):
            if earlier not in self.frozen:
                break
            found.append(self.frozen[earlier])
        return found[::-1]

    def _adjustment(self, c: ClosedBill, usage: Usage) -> Line | None:
        minor = self.plans.minor_units
        recomputed = self._recomputed(c, usage)
        later = sum(
            (amount for b in self.closed for s, e, amount in b.adjustments() if (s, e) == (c.start_ms, c.end_ms)),
            Decimal(0),
        )
        billed = round_money(c.period_total + later, minor)
        amount = round_money(recomputed - billed, minor)
        if amount == 0:
            return None
        description = (
            f"adjustment for the closed bill period {iso(c.start_ms)} to {iso(c.end_ms)}:"
            f" {recomputed} now, {billed} billed"
        )
        return Line("adjustment", description, amount, None, c.start_ms, c.end_ms, recomputed=recomputed, billed=billed)

    def _recomputed(self, c: ClosedBill, usage: Usage) -> Decimal:
        """The closed period's own bill as it would be now (0 if it is no longer a period
        of the account's plans)."""
        for key, segments in bill_periods(self.plans, self.account, c.start_ms, c.end_ms):
            if key[:2] == (c.start_ms, c.end_ms):
                return price(self.plans, self.account, key, segments, usage).period_total
        return round_money(Decimal(0), self.plans.minor_units)
