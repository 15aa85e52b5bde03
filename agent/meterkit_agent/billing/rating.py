"""Rating: what a pricing line charges for a quantity, band by band, exactly.

A pricing line turns the aggregation's value into units, as m3ter's aggregation does:
``quantity / quantity_per_unit``, rounded as ``rounding`` says, on the exact quotient (UP
toward +infinity, DOWN toward -infinity, NEAREST half away from zero, NONE not at all; the
ledger's ``quantityPerUnit`` rounds the same way). Stripe's package pricing
(``transform_quantity: {divide_by: 5, round: up}``) is ``quantity_per_unit: 5, rounding: UP``.

The units are then priced by the bands. A band starts above its ``lower_limit`` and ends at
the next band's: units in ``(lower_limit, next lower_limit]`` are in it, as Stripe's tiers
(``up_to`` is inclusive) and m3ter's bands count them. A band is *reached* when the
quantity is above its lower limit; zero reaches none, so zero usage costs nothing.

- Tiered (``cumulative: true``, Stripe's ``graduated``): each band prices the units in it,
  and adds its ``fixed_price`` once when reached.
- Volume (``cumulative: false``, Stripe's ``volume``): the band reached prices every unit,
  and adds its own ``fixed_price``.

``tiers_span_plan`` prices the units a period adds to a running total that started when the
plan was attached (``before`` to ``total``): tiered, the period's units fill the bands from
where the total stood, so the charge is rating(total) - rating(before); volume, the band the
running total has reached prices the period's units. A band's fixed price is charged in the
period in which the running total first reaches it.

Arithmetic is on :class:`~fractions.Fraction`: a line's amount is exact until the bill
rounds it once (:func:`.money.round_money`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from .model import Band, PricingLine
from .money import as_decimal


@dataclass(frozen=True)
class BandCharge:
    """What one band charged: ``units`` in it at ``unit_price``, the ``fixed_price`` it
    added (zero when it was reached before), and their exact sum ``amount``."""

    lower_limit: Decimal
    upper_limit: Decimal | None
    units: Decimal
    unit_price: Decimal
    fixed_price: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Rating:
    """A pricing line's charge: the units priced, each band's part, the exact amount."""

    units: Fraction
    bands: tuple[BandCharge, ...]
    amount: Fraction


def to_units(quantity: Decimal | int, per_unit: Decimal, rounding: str) -> Fraction:
    """m3ter's ``quantityPerUnit`` and rounding: the billable units ``quantity`` is."""
    units = Fraction(quantity) / Fraction(per_unit)
    if rounding == "UP":
        return Fraction(math.ceil(units))
    if rounding == "DOWN":
        return Fraction(math.floor(units))
    if rounding == "NEAREST":
        half_up = math.floor(abs(units) + Fraction(1, 2))
        return Fraction(half_up if units >= 0 else -half_up)
    return units


def rate(line: PricingLine, total: Fraction, before: Fraction = Fraction(0)) -> Rating:
    """The charge for the units from ``before`` to ``total`` (``before`` is zero unless
    the line's tiers span the plan). Raises ValueError for negative units."""
    if before < 0 or total < before:
        raise ValueError(f"cannot price a negative quantity of units ({as_decimal(total - before)})")
    if line.cumulative:
        return _graduated(line.bands, total, before)
    return _volume(line.bands, total, before)


def _upper(bands: Sequence[Band], i: int) -> Fraction | None:
    return Fraction(bands[i + 1].lower_limit) if i + 1 < len(bands) else None


def _in_band(x: Fraction, lower: Fraction, upper: Fraction | None) -> Fraction:
    """How many of the first ``x`` units fall in ``(lower, upper]``."""
    top = x if upper is None else min(x, upper)
    return max(top - lower, Fraction(0))


def _charge(band: Band, upper: Fraction | None, units: Fraction, fixed: bool) -> tuple[BandCharge, Fraction]:
    fixed_price = band.fixed_price if fixed else Decimal(0)
    amount = units * Fraction(band.unit_price) + Fraction(fixed_price)
    shown = BandCharge(
        band.lower_limit,
        None if upper is None else as_decimal(upper),
        as_decimal(units),
        band.unit_price,
        fixed_price,
        as_decimal(amount),
    )
    return shown, amount


def _graduated(bands: Sequence[Band], total: Fraction, before: Fraction) -> Rating:
    charges, amount = [], Fraction(0)
    for i, band in enumerate(bands):
        lower, upper = Fraction(band.lower_limit), _upper(bands, i)
        units = _in_band(total, lower, upper) - _in_band(before, lower, upper)
        reached_now = before <= lower < total
        if units or reached_now:
            shown, exact = _charge(band, upper, units, reached_now)
            charges.append(shown)
            amount += exact
    return Rating(total - before, tuple(charges), amount)


def _reached(bands: Sequence[Band], x: Fraction) -> int | None:
    """The index of the band ``x`` units reach, or None for zero."""
    found = None
    for i, band in enumerate(bands):
        if Fraction(band.lower_limit) < x:
            found = i
    return found


def _volume(bands: Sequence[Band], total: Fraction, before: Fraction) -> Rating:
    i = _reached(bands, total)
    if i is None or total == before:
        return Rating(total - before, (), Fraction(0))
    band = bands[i]
    reached_now = before <= Fraction(band.lower_limit)
    shown, amount = _charge(band, _upper(bands, i), total - before, reached_now)
    return Rating(total - before, (shown,), amount)
