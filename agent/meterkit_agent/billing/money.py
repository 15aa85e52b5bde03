"""Money: decimals read from their text, exact arithmetic, and one rounding rule.

- Every amount and quantity a plan file gives is read as the decimal its text spells:
  ``"0.10"`` and an unquoted ``0.1`` are both one tenth, never the binary float nearest
  to it (the plans loader hands numbers over as text, see :mod:`.plans`).
- Arithmetic is exact: amounts are products and sums of decimals, kept as
  :class:`~fractions.Fraction` until a line is rounded, so no intermediate digit is lost
  whatever the precision of a :mod:`decimal` context.
- A line is rounded once, to the currency's minor unit (USD 2 digits, JPY 0, KWD 3:
  ISO 4217), half away from zero (``ROUND_HALF_UP``): 0.005 USD is 0.01. That is the
  rule Stripe states for invoice lines ("rounding occurs on the line item level ... 1.5
  [cents] is then rounded up to 2 cents", https://stripe.com/docs/billing/subscriptions/decimal-amounts)
  and for its own fees (0.025 rounds up to 0.03,
  https://support.stripe.com/questions/what-rules-do-you-use-for-rounding-stripe-fees).
  A bill's total is the sum of its rounded lines, so it is exact and adds up on paper.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from fractions import Fraction

#: ISO 4217 codes whose minor unit is not two digits (the standard's list, 2024).
_ZERO = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE, _FOUR = "BHD IQD JOD KWD LYD OMR TND", "CLF UYW"
#: ISO 4217 codes with a two-digit minor unit.
_TWO = """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP
BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR
LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB
PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL
THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"""
MINOR_UNITS: dict[str, int] = {
    code: digits for codes, digits in ((_TWO, 2), (_ZERO, 0), (_THREE, 3), (_FOUR, 4)) for code in codes.split()
}

#: Characters of a number's text: enough for any price, and int()/Decimal() of it stays cheap.
MAX_NUMBER_CHARS = 40
#: Significant digits shown for a quotient that is not a finite decimal (a quantity of
#: 1 / 3 unit): the same as the ledger's answers. Amounts are rounded from the exact value.
QUOTIENT_DIGITS = 60
_QUOTIENT = Context(prec=QUOTIENT_DIGITS, rounding=ROUND_HALF_EVEN)


def decimal_from_text(value: object) -> Decimal:
    """The decimal a plan file's number spells: a string (``"0.10"``), an int, or a
    Decimal. Raises ValueError saying why not (a float is refused: its text is gone)."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f'must be a decimal number (write it as text, e.g. "0.10"), got {value!r:.40}')
    text = str(value).strip().replace("_", "") if isinstance(value, str) else str(value)
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of more than {MAX_NUMBER_CHARS} characters")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{value!r:.40} is not a decimal number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r:.40} is not a finite number")
    return number


def as_decimal(value: Fraction) -> Decimal:
    """An exact rational as a decimal: exact when it has a finite expansion (every amount
    and every quantity with quantity_per_unit a power of ten does), otherwise to
    :data:`QUOTIENT_DIGITS` significant digits."""
    num, den = value.numerator, value.denominator
    if den == 1:
        return Decimal(num)
    twos = (den & -den).bit_length() - 1
    rest, fives = den >> twos, 0
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest == 1:
        k = max(twos, fives)
        return scaled(num * (10**k // den), k)
    return _QUOTIENT.divide(Decimal(num), Decimal(den))


def round_money(value: Fraction | Decimal, minor_units: int) -> Decimal:
    """``value`` rounded to ``minor_units`` decimal places, half away from zero, with
    exactly that many places (``Decimal("135.00")``)."""
    exact = Fraction(value)
    scaled_value = exact * 10**minor_units
    whole = math.floor(abs(scaled_value) + Fraction(1, 2))
    return scaled(whole if scaled_value >= 0 else -whole, minor_units)


def scaled(digits: int, exponent: int) -> Decimal:
    """``digits × 10**-exponent``, exactly: built from text, so no context rounds it."""
    return Decimal(f"{digits}E{-exponent}")


def places(value: Decimal) -> int:
    """Digits after the decimal point of ``value`` as written (``20.00`` has 2)."""
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0
