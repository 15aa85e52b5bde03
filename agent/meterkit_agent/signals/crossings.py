"""Which thresholds a change of usage crosses: a percent of a cap, a new price band, a
spend level.

Each function takes the usage to date in a period before a change and after it, and
returns one :class:`~.events.Event` per threshold reached by the change: reached means
``before < level <= after`` (a threshold is reached *at* its level: 80 % of a cap of
1,000 is reached by the 800th unit). A jump past two thresholds is two events; usage
going down (a correction) crosses nothing. Passing ``before=0`` asks for every threshold
``after`` has reached, which is how a ledger that does not know the earlier figure (after
a restart, say) evaluates: the outbox keeps one event per (threshold, period) whatever
is asked twice, so evaluating again is harmless.

Comparisons are exact (:class:`~fractions.Fraction`); numbers in events are decimal text.

These take a small description of their own (:class:`Cap`, :class:`SpendLevels`) rather
than the plans file's limits, so the plans model can grow without this module following;
bands are billing's :class:`~meterkit_agent.billing.model.PricingLine`, read as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from ..billing.model import PricingLine
from ..billing.money import as_decimal
from ..billing.rating import to_units
from .events import Event, decimal_text

Number = Decimal | int
Period = tuple[int, int]

_HUNDRED = Fraction(100)


@dataclass(frozen=True)
class Cap:
    """A usage cap of one meter (a field of it, or its count) per period, and the
    percents of it that notify. ``hard`` refuses past ``cap * (1 + grace_percent/100)``;
    ``soft`` only notifies."""

    meter: str
    cap: Decimal
    field: str | None = None
    mode: Literal["hard", "soft"] = "hard"
    grace_percent: Decimal = Decimal(0)
    thresholds: tuple[Decimal, ...] = (Decimal(80), Decimal(100))

    def __post_init__(self) -> None:
        if self.cap <= 0:
            raise ValueError(f"cap of {self.meter} must be above zero, got {self.cap}")
        if self.grace_percent < 0:
            raise ValueError(f"grace_percent of {self.meter} must not be negative, got {self.grace_percent}")
        if any(t <= 0 for t in self.thresholds):
            raise ValueError(f"thresholds of {self.meter} must be percents above zero, got {self.thresholds}")

    @functools.cached_property
    def limit(self) -> Fraction:
        """Where a hard cap starts refusing: the cap plus its grace."""
        return Fraction(self.cap) * (1 + Fraction(self.grace_percent) / _HUNDRED)

    @functools.cached_property
    def levels(self) -> tuple[tuple[Decimal, Fraction], ...]:
        """Each threshold percent with the usage that reaches it, lowest first (computed
        once: the ledger asks on every batch)."""
        cap = Fraction(self.cap)
        return tuple((t, cap * Fraction(t) / _HUNDRED) for t in sorted(set(self.thresholds)))


@dataclass(frozen=True)
class SpendLevels:
    """Amounts of a bill period's spend to date that notify (in the plans' currency)."""

    levels: tuple[Decimal, ...]
    currency: str = ""

    def __post_init__(self) -> None:
        if any(level <= 0 for level in self.levels):
            raise ValueError(f"spend levels must be above zero, got {self.levels}")


@dataclass(frozen=True)
class Where:
    """Whose usage, over which period, noticed when (UTC ms). ``extra`` is added to each
    event's ``data`` (the plan's code, say)."""

    org: str
    account: str
    period: Period
    now_ms: int
    extra: dict[str, str] = field(default_factory=dict, hash=False)


def _crossed(level: Fraction, before: Number, after: Number) -> bool:
    return Fraction(before) < level <= Fraction(after)


def cap_events(where: Where, cap: Cap, before: Number, after: Number) -> list[Event]:
    """One ``cap_threshold`` event per percent of ``cap`` the change crosses."""
    if after <= before:
        return []
    events = []
    limit = cap.limit
    low, high = Fraction(before), Fraction(after)
    for percent, level in cap.levels:
        if not low < level <= high:
            continue
        data = {
            "cap": decimal_text(cap.cap),
            "percent": decimal_text(percent),
            "level": decimal_text(as_decimal(level)),
            "usage": decimal_text(after),
            "mode": cap.mode,
            "grace_percent": decimal_text(cap.grace_percent),
            "limit": decimal_text(as_decimal(limit)),
            # a hard cap refuses from here on (the next balance snapshot says so)
            "exhausted": cap.mode == "hard" and Fraction(after) >= limit,
            **where.extra,
        }
        events.append(
            Event(
                where.org,
                where.account,
                cap.meter,
                cap.field or "",
                "cap_threshold",
                decimal_text(percent),
                where.period,
                where.now_ms,
                data,
            )
        )
    return events


def band_events(where: Where, line: PricingLine, before: Number, after: Number) -> list[Event]:
    """One ``band_entered`` event per price band of ``line`` that the change reaches.

    Quantities are the aggregation's value to date (before ``quantity_per_unit``); a band
    is reached when the units are above its lower limit, as billing rates it. The first
    band (from 0) is reached by any usage at all and is not announced. For a line whose
    tiers span the plan, pass usage since the attachment and the attachment's span as the
    period, so a band is announced once per attachment."""
    if after <= before:
        return []
    units_before = to_units(before, line.quantity_per_unit, line.rounding)
    units_after = to_units(after, line.quantity_per_unit, line.rounding)
    events = []
    for index, band in enumerate(line.bands):
        lower = Fraction(band.lower_limit)
        if index == 0 or not (units_before <= lower < units_after):
            continue
        data = {
            "band": index,
            "lower_limit": decimal_text(band.lower_limit),
            "unit_price": decimal_text(band.unit_price),
            "fixed_price": decimal_text(band.fixed_price),
            "cumulative": line.cumulative,
            "quantity": decimal_text(after),
            "units": decimal_text(as_decimal(units_after)),
            "pricing": line.label,
            **where.extra,
        }
        events.append(
            Event(
                where.org,
                where.account,
                line.aggregation.meter,
                str(line.aggregation),
                "band_entered",
                decimal_text(band.lower_limit),
                where.period,
                where.now_ms,
                data,
            )
        )
    return events


def spend_events(where: Where, spend: SpendLevels, before: Number, after: Number) -> list[Event]:
    """One ``spend_threshold`` event per spend level the change crosses. Spend belongs to
    no meter: the events' meter is ""."""
    if after <= before:
        return []
    events = []
    for level in sorted(set(spend.levels)):
        if not _crossed(Fraction(level), before, after):
            continue
        data = {
            "level": decimal_text(level),
            "spend": decimal_text(after),
            "currency": spend.currency,
            **where.extra,
        }
        events.append(
            Event(
                where.org,
                where.account,
                "",
                "",
                "spend_threshold",
                decimal_text(level),
                where.period,
                where.now_ms,
                data,
            )
        )
    return events


def reached_percents(cap: Cap, usage: Number) -> Sequence[Decimal]:
    """The thresholds of ``cap`` that ``usage`` has reached, lowest first (what a balance
    snapshot or ``agent status`` shows)."""
    reached = Fraction(usage)
    return [t for t, level in cap.levels if reached >= level]
