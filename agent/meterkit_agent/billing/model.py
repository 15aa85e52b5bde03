"""What a checked ``plans.yaml`` means: plans, their pricing lines and bands, which plan
each account is on when, and credits. Built only by :mod:`.plans`, which checks every
invariant the rating and billing code relies on (bands start at 0 and rise, attachments do
not overlap, amounts are finite and not negative), so those modules do not check again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from meterkit._planlimits import Cap, PlanLimits, RateLimit

#: m3ter's aggregation functions that bills can price (the ledger answers each).
FUNCTIONS = ("SUM", "COUNT", "MAX", "MIN", "MEAN", "LATEST", "UNIQUE")
#: aggregations of numbers: their field must be a MEASURE, INCOME or COST field.
NUMERIC_FUNCTIONS = ("SUM", "MAX", "MIN", "MEAN", "LATEST")
#: aggregations whose value over a range is the sum of their values over its parts, the
#: only ones for which "usage since the plan was attached" means something (tiers_span_plan).
ADDITIVE_FUNCTIONS = ("SUM", "COUNT")
#: m3ter's rounding of ``quantity / quantity_per_unit``.
ROUNDINGS = ("UP", "DOWN", "NEAREST", "NONE")


@dataclass(frozen=True)
class Band:
    """A pricing band: units above ``lower_limit`` (up to the next band's) cost
    ``unit_price`` each; ``fixed_price`` is charged once when usage reaches the band."""

    lower_limit: Decimal
    unit_price: Decimal
    fixed_price: Decimal = Decimal(0)


@dataclass(frozen=True)
class Aggregation:
    """What is priced: ``function`` of ``field`` over the account's measurements of
    ``meter`` in a period (``field`` may be None for COUNT)."""

    meter: str
    field: str | None
    function: str

    def __str__(self) -> str:
        return f"{self.function}({self.meter}.{self.field})" if self.field else f"{self.function}({self.meter})"


@dataclass(frozen=True)
class PricingLine:
    """One priced aggregation of a plan, as m3ter prices an aggregation.

    ``cumulative`` true is tiered (graduated) pricing: each band prices the units that fall
    in it. False is volume pricing: the band the quantity reaches prices every unit.
    ``tiers_span_plan``: bands count usage since the plan was attached, not since the
    period began."""

    aggregation: Aggregation
    bands: tuple[Band, ...]
    quantity_per_unit: Decimal = Decimal(1)
    rounding: str = "NONE"
    cumulative: bool = True
    tiers_span_plan: bool = False
    description: str | None = None

    @property
    def label(self) -> str:
        return self.description or str(self.aggregation)


@dataclass(frozen=True)
class Plan:
    """A plan: what it charges (``pricing``, standing charge, minimum spend) and what it
    allows (``limits``: rate limits and caps, and the ``thresholds`` of each cap that
    notify), the latter read by the SDK's own rules (:mod:`meterkit._planlimits`).
    ``spend_thresholds``: amounts of a bill period's ``period_total`` that notify, rising,
    each above the standing charge and the minimum spend (a level at or below them would
    be reached by every period as it starts)."""

    code: str
    bill_period: str
    standing_charge: Decimal
    minimum_spend: Decimal
    pricing: tuple[PricingLine, ...]
    limits: PlanLimits = field(default_factory=lambda: PlanLimits(""))
    spend_thresholds: tuple[Decimal, ...] = ()

    @property
    def caps(self) -> tuple[Cap, ...]:
        return self.limits.caps

    @property
    def rates(self) -> tuple[RateLimit, ...]:
        return self.limits.rates

    @property
    def thresholds(self) -> tuple[Decimal, ...]:
        """Percents of each cap that notify, rising (none: caps notify nothing)."""
        return self.limits.thresholds


@dataclass(frozen=True)
class Attachment:
    """An account on ``plan`` over ``[start_ms, end_ms)`` (``end_ms`` None: open-ended)."""

    plan: str
    start_ms: int
    end_ms: int | None = None

    def overlaps(self, start: int, end: int) -> bool:
        return self.start_ms < end and (self.end_ms is None or start < self.end_ms)


@dataclass(frozen=True)
class Credit:
    """An amount taken off the bill of the bill period that starts at ``period_ms``."""

    amount: Decimal
    period_ms: int
    reason: str | None = None


@dataclass(frozen=True)
class Plans:
    """A checked plans file. ``minor_units`` is the currency's (ISO 4217, or as the file
    says for a currency of its own)."""

    currency: str
    minor_units: int
    plans: Mapping[str, Plan]
    accounts: Mapping[str, tuple[Attachment, ...]]
    credits: Mapping[str, tuple[Credit, ...]]
    source: str = "<memory>"
