"""SQLite's exact arithmetic for the rollups: functions registered on each connection.

SQLite has no decimal type, and its integers stop at 64 bits. The rollups keep exact
numbers as text (an integer's digits, or a decimal as :class:`decimal.Decimal` writes it:
``0.3``, ``1E+308``) and 256-bit digests as 64 hex digits; these functions do their
arithmetic in Python, exactly, where SQL updates or groups them. They are called once per
rollup row an ingest touches, or a query reads: never once per measurement. PostgreSQL
does the same arithmetic on NUMERIC in SQL.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .exact import EXACT

_MOD = 1 << 256


def number(text: str) -> int | Decimal:
    """A rollup's number text as an exact value. An integer's text is its digits (and a
    sign); a decimal's has a point or an exponent: told apart without a raised error."""
    if "." in text or "E" in text or "e" in text:
        return Decimal(text)
    try:
        return int(text)
    except ValueError:  # "Infinity", "NaN": a decimal all the same
        return Decimal(text)


def text(value: int | Decimal) -> str:
    return str(value)


def _add(a: str, b: str) -> str:
    x, y = number(a), number(b)
    if type(x) is int and type(y) is int:
        return str(x + y)
    return str(EXACT.add(Decimal(x), Decimal(y)))


def _lesser(a: str, b: str) -> str:
    return a if number(a) <= number(b) else b


def _greater(a: str, b: str) -> str:
    return a if number(a) >= number(b) else b


def _add256(a: str, b: str) -> str:
    return f"{(int(a, 16) + int(b, 16)) % _MOD:064x}"


class _Sum:
    def __init__(self) -> None:
        self.ints = 0
        self.decimals = Decimal(0)

    def step(self, value: str) -> None:
        x = number(value)
        if type(x) is int:
            self.ints += x
        else:
            self.decimals = EXACT.add(self.decimals, x)

    def finalize(self) -> str:
        if not self.decimals:
            return str(self.ints)
        return str(EXACT.add(Decimal(self.ints), self.decimals))


class _Extreme:
    lowest = True

    def __init__(self) -> None:
        self.best: int | Decimal | None = None
        self.text: str | None = None

    def step(self, value: str) -> None:
        x = number(value)
        if self.best is None or (x < self.best if self.lowest else x > self.best):
            self.best, self.text = x, value

    def finalize(self) -> str | None:
        return self.text


class _Min(_Extreme):
    lowest = True


class _Max(_Extreme):
    lowest = False


def register(conn: Any) -> None:
    """Add the functions to a sqlite3 connection."""
    conn.create_function("mk_add", 2, _add, deterministic=True)
    conn.create_function("mk_least", 2, _lesser, deterministic=True)
    conn.create_function("mk_greatest", 2, _greater, deterministic=True)
    conn.create_function("mk_add256", 2, _add256, deterministic=True)
    conn.create_aggregate("mk_sum", 1, _Sum)
    conn.create_aggregate("mk_min", 1, _Min)
    conn.create_aggregate("mk_max", 1, _Max)
