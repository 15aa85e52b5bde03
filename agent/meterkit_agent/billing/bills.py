"""Bills: one per bill period, from a plans file and a source of usage.

:func:`bill` answers "what would account A be charged for the periods in [start, end)": one
:class:`Bill` per calendar bill period of the account's plan that intersects the range,
each covering its whole period. A bill holds, for each plan the account was on during the
period (its *segments*):

- the standing charge, for the period, in advance: owed whatever the usage;
- one usage line per pricing line: the aggregation over the segment, its units, each
  band's part, and the amount rounded to the currency's minor unit (:mod:`.money`);
- a minimum-spend true-up line when the standing charge plus the usage lines fall short
  of the plan's minimum spend (Lago's plan-level minimum commitment: "the subscription fee
  and all usage-based charges", https://www.getlago.com/changelog/minimum-plan-commitment);

then the account's credits for the period, which lower the period's own charges but never
below zero: a credit larger than what is left is applied in part, and the rest is reported
as ``unapplied_credit`` (it is not carried to another period); then any ``adjustment``
lines for closed periods (:mod:`.adjustments`: they are priced there and passed in), which
no credit applies to. ``total`` is the exact sum of the rounded lines. ``period_total`` is
what the period's own lines come to after its credits, adjustments left out: exactly what
the period itself adds to what the account pays, and the figure a closed period is later
recomputed against.

**A plan change within a period.** m3ter lets an account be on one plan (per product) at
a time; replacing a plan ends the current attachment where the next one starts
(https://www.m3ter.com/docs/guides/end-customer-accounts/attaching-plans-to-an-account,
https://docs.m3ter.com/api/accountplan/replace-accountplan). The bill for a period with
a change has one segment per attachment, and each segment is billed on its own plan:
usage over the segment's own time, priced by that plan's bands (bands are not pro-rated);
the standing charge and the minimum spend pro-rated by the share of the period the
segment covers, to the millisecond (with attachments at midnight, by days), as Lago
prorates minimums "based on the number of days used"
(https://getlago.com/docs/guide/plans/charges/spending-minimum). When the new plan bills
on a different period (monthly to quarterly), the old plan's last bill and the new plan's
first are different calendar periods; each holds its own plan's segment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .errors import BillingError
from .model import Attachment, Credit, Plan, Plans, PricingLine
from .money import as_decimal, round_money
from .periods import DAY_MS, iso, periods
from .rating import BandCharge, rate, to_units
from .usage import Usage


@dataclass(frozen=True)
class Line:
    """One line of a bill. ``kind`` is ``standing_charge``, ``usage``, ``minimum_spend``,
    ``adjustment`` or ``credit``; ``amount`` is rounded to the currency's minor unit
    (negative for a credit). Usage lines say what was priced: the pricing line's index in
    its plan, the aggregation, the ``quantity`` the usage source answered for the segment
    (None: no measurement), the ``units`` priced, and each band's part. ``units_before`` is
    the running total the period started from when the line's tiers span the plan. An
    adjustment line's ``start_ms`` and ``end_ms`` are the closed period it adjusts, which
    ``recomputed`` now comes to and of which ``billed`` was billed already."""

    kind: str
    description: str
    amount: Decimal
    plan: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    pricing: int | None = None
    aggregation: str | None = None
    quantity: Decimal | None = None
    units: Decimal | None = None
    units_before: Decimal | None = None
    bands: tuple[BandCharge, ...] = ()
    recomputed: Decimal | None = None
    billed: Decimal | None = None


#: a bill period: its start, its end, and the plan's bill_period (month, quarter, year)
PeriodKey = tuple[int, int, str]


@dataclass(frozen=True)
class Bill:
    """One bill period's bill. ``subtotal`` is its own charges plus adjustments, before
    credits; ``credits`` what they took off the own charges (never an adjustment);
    ``total`` what is owed: below zero only when adjustments give back more than the
    period charges after its credits. ``period_total`` is the period's own lines after its
    credits, without adjustments (``total`` when there are none)."""

    account: str
    currency: str
    bill_period: str
    start_ms: int
    end_ms: int
    lines: tuple[Line, ...]
    subtotal: Decimal
    credits: Decimal
    total: Decimal
    unapplied_credit: Decimal
    period_total: Decimal

    def to_json(self) -> dict[str, Any]:
        """The bill for JSON: instants as ISO 8601 UTC text, every amount as its exact
        decimal text (``"135.00"``), so no client reads money as a binary float. A bill
        computed here is ``open``; a closed period's is the one frozen when it closed."""
        return {
            "account": self.account,
            "currency": self.currency,
            "bill_period": self.bill_period,
            "status": "open",
            "from": iso(self.start_ms),
            "to": iso(self.end_ms),
            "lines": [_line_json(line) for line in self.lines],
            "subtotal": str(self.subtotal),
            "credits": str(self.credits),
            "total": str(self.total),
            "unapplied_credit": str(self.unapplied_credit),
            "period_total": str(self.period_total),
        }


def _line_json(line: Line) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": line.kind, "description": line.description, "amount": str(line.amount)}
    if line.plan is not None:
        out["plan"] = line.plan
    if line.start_ms is not None and line.end_ms is not None:
        out["from"], out["to"] = iso(line.start_ms), iso(line.end_ms)
    if line.kind == "usage":
        out["pricing"] = line.pricing
        out["aggregation"] = line.aggregation
        out["quantity"] = None if line.quantity is None else str(line.quantity)
        out["units"] = None if line.units is None else str(line.units)
        if line.units_before is not None:
            out["units_before"] = str(line.units_before)
        out["bands"] = [
            {
                "lower_limit": str(b.lower_limit),
                "upper_limit": None if b.upper_limit is None else str(b.upper_limit),
                "units": str(b.units),
                "unit_price": str(b.unit_price),
                "fixed_price": str(b.fixed_price),
                "amount": str(b.amount),
            }
            for b in line.bands
        ]
    if line.kind == "adjustment":
        out["recomputed"] = str(line.recomputed)
        out["billed"] = str(line.billed)
    return out


@dataclass(frozen=True)
class Segment:
    """The part of a bill period an account spent on one plan (one attachment)."""

    attachment: Attachment
    plan: Plan
    start_ms: int
    end_ms: int


def bill(plans: Plans, account: str, start_ms: int, end_ms: int, usage: Usage) -> list[Bill]:
    """The bills of ``account`` for every bill period that intersects ``[start_ms,
    end_ms)`` (UTC milliseconds), in order of their end. Raises :class:`BillingError` for
    an account the plans file does not name, an empty range, or usage that cannot be
    priced (a negative quantity); whatever ``usage`` raises passes through."""
    return [
        price(plans, account, key, segments, usage) for key, segments in bill_periods(plans, account, start_ms, end_ms)
    ]


def bill_periods(plans: Plans, account: str, start_ms: int, end_ms: int) -> list[tuple[PeriodKey, list[Segment]]]:
    """Every bill period of ``account`` that intersects ``[start_ms, end_ms)``, in order of
    their end (then start), each with its segments: which plans, not yet priced. Raises
    :class:`BillingError` for an unknown account or an empty range."""
    if account not in plans.accounts:
        raise BillingError("unknown_account", f"account {account!r:.80} is not in {plans.source}")
    if start_ms >= end_ms:
        raise BillingError("empty_range", f"empty range: {iso(start_ms)} is not before {iso(end_ms)}")
    by_period: dict[PeriodKey, list[Segment]] = defaultdict(list)
    for attachment in plans.accounts[account]:
        plan = plans.plans[attachment.plan]
        lo = max(start_ms, attachment.start_ms)
        hi = end_ms if attachment.end_ms is None else min(end_ms, attachment.end_ms)
        for ps, pe in periods(lo, hi, plan.bill_period) if lo < hi else []:
            seg_end = pe if attachment.end_ms is None else min(pe, attachment.end_ms)
            by_period[(ps, pe, plan.bill_period)].append(
                Segment(attachment, plan, max(ps, attachment.start_ms), seg_end)
            )
    return sorted(by_period.items(), key=lambda kv: (kv[0][1], kv[0][0]))


def price(
    plans: Plans,
    account: str,
    key: PeriodKey,
    segments: Sequence[Segment],
    usage: Usage,
    adjustments: Sequence[Line] = (),
) -> Bill:
    """The bill of one period (as :func:`bill_periods` gives it): its own lines, its
    credits, then ``adjustments`` (lines of kind ``adjustment``, for closed periods).

    Credits apply to the period's own charges only, never to an adjustment: an adjustment
    is a closed period's money, already billed with that period's own credits, and a
    closed period is later recomputed on its own lines alone. So ``period_total`` (own
    charges less credits) is exactly what this period's lines add to what the account
    pays, and recomputing the period later compares like with like. Adjustments are
    likewise outside the minimum-spend comparison (each segment's true-up compares its
    own charges); they count toward ``subtotal`` and ``total``, at face value."""
    ps, pe, bill_period = key
    lines: list[Line] = []
    for segment in segments:
        lines.extend(_segment_lines(plans, account, ps, pe, segment, usage))
    own = sum((line.amount for line in lines), Decimal(0))
    credits = [c for c in plans.credits.get(account, ()) if c.period_ms == ps]
    if not any(s.start_ms == ps for s in segments):  # a credit needs the period to start on this plan
        credits = []
    credit_lines, own_remaining, unapplied = _credits(credits, own, plans.minor_units)
    adjusted = sum((line.amount for line in adjustments), Decimal(0))
    minor = plans.minor_units
    return Bill(
        account,
        plans.currency,
        bill_period,
        ps,
        pe,
        (*lines, *credit_lines, *adjustments),
        round_money(own + adjusted, minor),
        round_money(own - own_remaining, minor),
        round_money(own_remaining + adjusted, minor),
        round_money(unapplied, minor),
        round_money(own_remaining, minor),
    )


def _credits(credits: Sequence[Credit], subtotal: Decimal, minor: int) -> tuple[list[Line], Decimal, Decimal]:
    """The credit lines taking ``credits`` off ``subtotal`` in turn, never below zero;
    what remains owed, and what the credits could not take off."""
    lines, remaining, unapplied = [], subtotal, Decimal(0)
    for credit in credits:
        applied = max(Decimal(0), min(credit.amount, remaining))
        remaining -= applied
        unapplied += credit.amount - applied
        description = "credit" + (f": {credit.reason}" if credit.reason else "")
        if applied < credit.amount:
            description += f" ({credit.amount} given, {applied} applied: a bill never goes below zero)"
        lines.append(Line("credit", description, round_money(-applied, minor)))
    return lines, remaining, unapplied


def _share(segment: Segment, ps: int, pe: int) -> tuple[Fraction, str]:
    """The part of the period the segment covers, and how to say it."""
    covered, whole = segment.end_ms - segment.start_ms, pe - ps
    if covered == whole:
        return Fraction(1), ""
    if covered % DAY_MS == 0:
        return Fraction(covered, whole), f", pro-rated {covered // DAY_MS} of {whole // DAY_MS} days"
    return Fraction(covered, whole), f", pro-rated {as_decimal(Fraction(covered * 100, whole)):.4}% of the period"


def _segment_lines(plans: Plans, account: str, ps: int, pe: int, segment: Segment, usage: Usage) -> list[Line]:
    plan, minor = segment.plan, plans.minor_units
    share, said = _share(segment, ps, pe)
    where = (plan.code, segment.start_ms, segment.end_ms)
    lines = []
    if plan.standing_charge:
        amount = round_money(Fraction(plan.standing_charge) * share, minor)
        lines.append(Line("standing_charge", f"standing charge, plan {plan.code}{said}", amount, *where))
    for index, line in enumerate(plan.pricing):
        lines.append(_usage_line(plans, account, segment, index, line, usage))
    if plan.minimum_spend:
        due = round_money(Fraction(plan.minimum_spend) * share, minor)
        charged = sum((line.amount for line in lines), Decimal(0))
        if charged < due:
            description = f"minimum spend {due} on plan {plan.code}{said}: true-up from {charged}"
            lines.append(Line("minimum_spend", description, due - charged, *where))
    return lines


def _usage_line(plans: Plans, account: str, segment: Segment, index: int, line: PricingLine, usage: Usage) -> Line:
    agg = line.aggregation

    def ask(start: int, end: int) -> Decimal | None:
        answer: Any = usage.quantity(agg.meter, agg.field, agg.function, account, start, end)
        if answer is None:
            return None
        return Decimal(repr(answer)) if isinstance(answer, float) else Decimal(answer)  # a float as written

    start = segment.attachment.start_ms if line.tiers_span_plan else segment.start_ms
    quantity = ask(start, segment.end_ms)
    before_quantity = ask(start, segment.start_ms) if line.tiers_span_plan and start < segment.start_ms else None
    units = to_units(quantity or 0, line.quantity_per_unit, line.rounding)
    before = to_units(before_quantity or 0, line.quantity_per_unit, line.rounding)
    try:
        rating = rate(line, units, before)
    except ValueError as exc:
        raise BillingError(
            "negative_quantity",
            f"account {account!r}, plan {segment.plan.code!r}, pricing[{index}] ({line.label}),"
            f" {iso(segment.start_ms)} to {iso(segment.end_ms)}: {exc}",
        ) from None
    if line.tiers_span_plan and quantity is not None:
        quantity -= before_quantity or 0
    return Line(
        "usage",
        line.label,
        round_money(rating.amount, plans.minor_units),
        segment.plan.code,
        segment.start_ms,
        segment.end_ms,
        index,
        str(agg),
        quantity,
        as_decimal(rating.units),
        as_decimal(before) if line.tiers_span_plan else None,
        rating.bands,
    )
