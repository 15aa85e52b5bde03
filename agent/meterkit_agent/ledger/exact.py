"""Exact numbers: what a usage query answers is decimal-exact, never binary floating point.

- A stored value enters the arithmetic as the number it was written as: an integer as
  itself, a float as the decimal of its shortest representation (``Decimal(repr(x))``:
  ``0.1`` is one tenth, not 0.1000000000000000055511151231257827).
- Sums, minima and maxima are exact, in a context with no practical limit on digits
  (Python's documented recipe for exact decimal arithmetic): 5,000 × (0.1 + 0.2) is 1500,
  1e19 + 5 keeps its 5, two values of 1e308 sum to 2e308.
- A quotient (MEAN, ``quantityPerUnit``) is exact when it is a finite decimal; otherwise it
  is given to :data:`QUOTIENT_DIGITS` significant digits (half-even). Rounding to whole
  units (UP, DOWN, NEAREST) is decided on the exact quotient.
- ``quantityPerUnit`` is read as a decimal from its text, and must lie within
  [:data:`MIN_PER_UNIT`, :data:`MAX_PER_UNIT`].
- In JSON, :func:`json_value` writes each number as an exact number literal: an integer
  when the value is whole (whatever its size), otherwise its decimal digits. A client that
  parses numbers as decimals (``json.loads(text, parse_float=Decimal)``) reads the exact
  value; one that parses them as binary floats reads the nearest float, as before.
"""

from __future__ import annotations

import math
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation
from decimal import Overflow as DecimalOverflow
from fractions import Fraction
from typing import Any

import orjson

#: exact addition and comparison: the digits a result needs, however many (a stored float
#: spans at most ~650 digits from 1e308 down to 5e-324, so a sum stays small). Never used
#: to divide: a quotient that does not terminate would not either.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation, DivisionByZero, DecimalOverflow])
#: significant digits of a quotient that is not a finite decimal (1/3, a MEAN of 3 values)
QUOTIENT_DIGITS = 60
_QUOTIENT = Context(prec=QUOTIENT_DIGITS, rounding=ROUND_HALF_EVEN, Emax=MAX_EMAX, Emin=MIN_EMIN)

#: quantityPerUnit's accepted range: a billion units per stored unit down to a quintillion
#: stored units per unit; outside it, a typo is likelier than a price.
MIN_PER_UNIT = Decimal("1e-9")  # the message in per_unit() states both
MAX_PER_UNIT = Decimal("1e18")
ROUNDINGS = ("NONE", "UP", "DOWN", "NEAREST")

Number = int | Decimal


def exact(value: int | float | Decimal) -> Number:
    """A stored number as an exact value: an integer as itself, a float as the decimal it
    was written as."""
    if type(value) is int:
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return value if isinstance(value, Decimal) else int(value)


def per_unit(value: object) -> Decimal:
    """``quantityPerUnit`` as a decimal, from its text (or a number given by a Python
    caller). Raises ValueError naming it."""
    if isinstance(value, float):
        value = repr(value)
    elif isinstance(value, int | Decimal) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"quantityPerUnit must be a decimal number, got {value!r:.70}")
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"quantityPerUnit must be a decimal number, got {value!r}") from None
    if not (number.is_finite() and MIN_PER_UNIT <= number <= MAX_PER_UNIT):
        raise ValueError(f"quantityPerUnit is {value}; it must be from 1e-9 to 1e18")
    return number


def to_units(value: Fraction, unit: Decimal, rounding: str) -> Number:
    """m3ter's ``quantityPerUnit`` and rounding: how many billable units ``value`` is. UP
    rounds toward +infinity, DOWN toward -infinity, NEAREST half away from zero, all on
    the exact quotient; NONE keeps it (see :func:`from_fraction`)."""
    units = value / Fraction(unit) if unit != 1 else value
    if rounding == "UP":
        return -(-units.numerator // units.denominator)
    if rounding == "DOWN":
        return units.numerator // units.denominator
    if rounding == "NEAREST":
        half_up = math.floor(abs(units) + Fraction(1, 2))
        return half_up if units >= 0 else -half_up
    return from_fraction(units)


def from_fraction(value: Fraction) -> Number:
    """An exact rational as an integer when whole, the exact decimal when it has one, and
    otherwise the decimal to :data:`QUOTIENT_DIGITS` significant digits."""
    num, den = value.numerator, value.denominator
    if den == 1:
        return num
    twos = (den & -den).bit_length() - 1
    rest, fives = den >> twos, 0
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest == 1:  # den divides 10**k: a finite decimal with k digits after the point
        k = max(twos, fives)
        return Decimal(num * (10**k // den)).scaleb(-k, EXACT)
    return _QUOTIENT.divide(Decimal(num), Decimal(den))


def whole(value: Decimal) -> Number:
    """An integral decimal as an int (1500.0 is 1500); any other unchanged."""
    if value == value.to_integral_value(context=EXACT):
        return int(value)
    return value


def json_value(value: Any) -> Any:
    """A value for ``orjson.dumps`` that writes numbers exactly: integers past 64 bits and
    decimals as number literals (:class:`orjson.Fragment`), anything else unchanged."""
    if isinstance(value, Decimal):
        value = whole(value)
        if isinstance(value, Decimal):
            return orjson.Fragment(str(value).encode())
    if type(value) is int and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value).encode())
    return value
