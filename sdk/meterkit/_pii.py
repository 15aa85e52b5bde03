"""The PII guard's detectors: does a text field's value look like personal data?

Four kinds, each a conservative pattern with a documented scope (``docs/privacy.md``),
chosen so that identifiers meterkit users put in fields (uuids, version strings, order
numbers, timestamps, paths) are not taken for personal data:

- ``email``: ``local@domain.tld`` anywhere in the value (a top-level domain of 2+ letters).
- ``card``: 13-19 digits, optionally in groups split by single spaces or hyphens, not
  inside a longer word or number, starting with a card network's prefix (Visa, Mastercard,
  American Express, Discover, JCB, Diners, UnionPay) and passing the Luhn check. An order
  number or a millisecond timestamp that happens to pass Luhn is not taken, unless it
  starts like a card number.
- ``ip``: an IPv4 dotted quad (each part 0-255, not part of a longer dotted run, not
  after a letter: ``v1.2.3.4`` is a version, ``1.2.3.4`` an address) or an IPv6 address
  (what :mod:`ipaddress` accepts, two colons at least).
- ``phone``: an international number (``+`` and 8-15 digits, single spaces, hyphens, dots
  or parentheses between them), or a North American one written with separators
  (``(415) 555-0123``, ``415-555-0123``). A bare run of digits is not taken: it is as
  often an order number.

:func:`suspect` is a cheap screen over many values at once (they are joined and searched
at C speed); :func:`detect` names the kind for one value.
"""

from __future__ import annotations

import ipaddress
import re

KINDS = ("email", "card", "ip", "phone")

_EMAIL = re.compile(r"[\w.%+\-]@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}(?![\w\-])")
_CARD = re.compile(r"(?<![\w\-.])\d(?:[ \-]?\d){12,18}(?![\w\-]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:.])")
_PHONE = re.compile(r"(?<![\w+\-])(?:\+\d[\d \-.()]{6,22}\d|\(?\d{3}\)?[ .\-]\d{3}[ .\-]\d{4})(?![\w\-]|\.\d)")
#: Card network prefixes (IIN ranges), as digit-string prefixes by length of prefix.
_CARD_PREFIXES = (
    ("4",),
    ("34", "37", "36", "38", "51", "52", "53", "54", "55", "62", "65"),
    ("300", "301", "302", "303", "304", "305", "644", "645", "646", "647", "648", "649"),
    ("6011",),
)
_CARD_RANGES = ((2221, 2720), (3528, 3589))  # Mastercard 2-series, JCB

#: What any of the detectors needs somewhere in the text: an ``@``, two colons, or a run
#: of seven digits-or-separators (the shortest dotted quad, ``1.2.3.4``).
_SCREEN = re.compile(r"@|:[0-9A-Fa-f]{0,4}:|\d[\d \-.()]{5,}\d")


#: For :func:`screen`: digits and what separates them in numbers people write become ``0``.
_DIGITISH = bytes(0x30 if chr(c) in "0123456789 -.()+/" else 0x78 for c in range(256))


def screen(payload: bytes, fields: int) -> bool:
    """:func:`suspect` for many values at once: ``payload`` is the JSON of the objects
    holding them, ``fields`` how many values they hold (field codes, being letters, digits,
    ``_`` and ``$``, change nothing): an ``@``, a colon inside a value (one more than the
    ``fields`` that separate codes from values), or seven digits-or-separators in a row.
    A few byte scans at C speed."""
    if b"@" in payload or payload.count(b":") > fields:
        return True
    return b"0000000" in payload.translate(_DIGITISH)


def suspect(text: str) -> bool:
    """Whether ``text`` (one value, or many joined by line feeds) may hold personal data;
    False means certainly not, True means ask :func:`detect` value by value."""
    return _SCREEN.search(text) is not None


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_like(digits: str) -> bool:
    if not 13 <= len(digits) <= 19 or not _luhn(digits) or digits.count(digits[0]) == len(digits):
        return False
    if any(digits.startswith(prefixes) for prefixes in _CARD_PREFIXES):
        return True
    head = int(digits[:4])
    return any(low <= head <= high for low, high in _CARD_RANGES)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _has_card(text: str) -> bool:
    return any(_card_like(_digits(m.group())) for m in _CARD.finditer(text))


def _has_ip(text: str) -> bool:
    for m in _IPV4.finditer(text):
        if all(int(part) <= 255 for part in m.groups()):
            return True
    if text.count(":") >= 2:
        for m in _IPV6.finditer(text):
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            return True
    return False


def _has_phone(text: str) -> bool:
    for m in _PHONE.finditer(text):
        found = m.group()
        if found.startswith("+") and not 8 <= len(_digits(found)) <= 15:
            continue
        return True
    return False


def detect(value: str) -> str | None:
    """The first kind of personal data ``value`` looks like (in :data:`KINDS` order), or None."""
    if not suspect(value):
        return None
    if "@" in value and _EMAIL.search(value):
        return "email"
    if _has_card(value):
        return "card"
    if _has_ip(value):
        return "ip"
    if _has_phone(value):
        return "phone"
    return None
