"""The compact form of a stored measurement, and back, exactly.

A measurement's JSON (318 bytes in the bench) repeats what most measurements share: the
field codes, and the values of the string fields (an endpoint, a region, a plan). The
ledger stores a measurement as

- its ``series`` (organisation, meter, account: an integer, see :mod:`.schema`),
- its instant ``ts_ms`` (UTC milliseconds),
- its ``uid``,
- its ``shape``: an integer naming a *template*, the measurement without uid, meter,
  account, times and numbers — ``{"measure":["calls","seconds"],"what":{"endpoint":"/x"}}``
  — kept once in the ``shapes`` table,
- ``nums``: its numbers in the template's order, each as Python writes it
  (``repr``: an integer as its digits, a float as its shortest round-trip spelling), joined
  by commas — ``"1,0.25"``,
- ``extra``: NULL, or JSON for what the rest cannot say: a ``ts`` spelled other than
  ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (the sender's spelling is kept), an ``ets``, a correction's
  ``correction`` or a backfill's ``batch`` (kept as they came: they are part of the
  content, and a correction is not an irregular measurement), or — for a
  measurement whose content fits no template (a number field holding text, written by an
  older ledger or an unvalidated caller) — the whole ``body``.

:func:`Codec.decode` gives back a measurement equal to the one stored (every key, value and
type), so its :func:`meterkit._model.content_hash` is the one computed at ingest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from meterkit._model import NUMERIC_CATEGORIES, STRING_CATEGORIES
from meterkit._timefmt import wire_ts_ns

from ..instants import iso

_FIXED = frozenset({"uid", "meter", "account", "ts"})
#: keys a measurement may carry besides m3ter's (``meterkit._corrections``), kept in ``extra``
EXTENSIONS = ("correction", "batch")
_NUMERIC = frozenset(NUMERIC_CATEGORIES)
_STRING = frozenset(STRING_CATEGORIES)
_FLOAT_MARKS = frozenset(".enN")  # a repr with one of these is a float's ("1e+20", "0.25", "inf")

#: flags of a field code of a meter (``fields`` table): where it has been seen
NUM = 1  # in a numeric category (measure, income, cost)
STR = 2  # first in a segment category (who, what, where, other) with a string value
META = 4  # first in metadata, or a segment category holding something not a string
BOTH = 8  # in a segment category and a numeric one of the same measurement
IRREGULAR = 16  # (code "") a measurement of this meter was stored whole: fits no template
#: the shape of a measurement stored whole in ``extra``
WHOLE = 0


@dataclass(frozen=True)
class Shape:
    """A template, and what the rollups read from a measurement of its shape."""

    template: dict[str, Any]
    #: (code, index into nums) for each code's value as a numeric aggregation finds it:
    #: the first of measure, income, cost that has it
    numeric: tuple[tuple[str, int], ...]
    #: (code, value) for each code whose value a COUNT, LATEST or UNIQUE finds in a
    #: segment category (who, what, where, other come before metadata and numbers)
    strings: tuple[tuple[str, str], ...]
    flags: dict[str, int]

    @classmethod
    def of(cls, template: dict[str, Any]) -> Shape:
        # positions follow the template's own category order, which is the stored order
        order = [c for c in template if c in _NUMERIC]
        starts, at = {}, 0
        for category in order:
            starts[category] = at
            at += len(template[category])
        numeric: dict[str, int] = {}
        for category in NUMERIC_CATEGORIES:
            for i, code in enumerate(template.get(category, ())):
                numeric.setdefault(code, starts[category] + i)
        flags: dict[str, int] = {code: NUM for code in numeric}
        strings: dict[str, str] = {}
        for category in STRING_CATEGORIES:
            for code, value in (template.get(category) or {}).items():
                if code in strings or flags.get(code, 0) & (STR | META):
                    continue
                if code in numeric:
                    flags[code] |= BOTH
                if category == "metadata" or type(value) is not str:
                    flags[code] = flags.get(code, 0) | META
                else:
                    flags[code] = flags.get(code, 0) | STR
                    strings[code] = value
        return cls(template, tuple(numeric.items()), tuple(strings.items()), flags)


WHOLE_SHAPE = Shape({}, (), (), {"": IRREGULAR})


class Codec:
    """Splits measurements into their compact parts; caches the times it has parsed."""

    def __init__(self) -> None:
        self._hours: dict[str, tuple[int, bool]] = {}  # "YYYY-MM-DDTHH:" -> (its first ms, canonical)
        self._seconds: dict[str, tuple[int, bool]] = {}  # "YYYY-MM-DDTHH:MM:SS" -> (its first ms, canonical)
        self._floats: dict[float, str] = {}  # a float -> its repr

    def instant(self, ts: Any) -> tuple[int, bool]:
        """``ts`` as UTC milliseconds, and whether it is spelled canonically (then the
        spelling need not be stored). Raises ValueError for text that is not a time."""
        if type(ts) is not str:
            raise ValueError(f"ts must be a string, got {ts!r:.60}")
        # The wire spelling, YYYY-MM-DDTHH:MM:SS.mmmZ: a batch's measurements share their
        # seconds, so a second is looked up once and its milliseconds are digits in place.
        if len(ts) == 24 and ts[19] == "." and ts[23] == "Z":
            milli = ts[20:23]
            if milli.isdigit() and milli.isascii():
                known = self._seconds.get(ts[:19])
                if known is None:
                    known = self._second(ts[:19])
                if known is not None:
                    return known[0] + int(milli), known[1]
        ms = wire_ts_ns(ts) // 1_000_000
        return ms, iso(ms) == ts

    def _second(self, head: str) -> tuple[int, bool] | None:
        """(ms, canonical) of a "YYYY-MM-DDTHH:MM:SS" prefix, or None if it is not one."""
        if head[16] != ":" or not head.isascii():
            return None
        known = self._hours.get(head[:14])
        if known is None:
            known = self._hour(head[:14])
        minute, second = head[14:16], head[17:19]
        if known is None or not (minute.isdigit() and second.isdigit()):
            return None
        m, s = int(minute), int(second)
        if m >= 60 or s >= 60:
            return None
        if len(self._seconds) > 65536:
            self._seconds.clear()
        found = self._seconds[head] = (known[0] + m * 60_000 + s * 1000, known[1])
        return found

    def _hour(self, head: str) -> tuple[int, bool] | None:
        """(ms, canonical) of a "YYYY-MM-DDTHH:" prefix, or None if it is not one."""
        try:
            ms = wire_ts_ns(head + "00:00.000Z") // 1_000_000
        except ValueError:
            return None
        if len(self._hours) > 8192:
            self._hours.clear()
        known = self._hours[head] = (ms, iso(ms)[:14] == head)
        return known

    def split(self, r: Mapping[str, Any]) -> tuple[int, str, str | None, str | None]:
        """(ts_ms, template JSON, nums, extra) of a measurement; the template is "" for one
        stored whole. Raises ValueError if its ts is not a time."""
        ms, template, nums, extra, _ = self.parts(r)
        return ms, template, nums, extra

    def parts(self, r: Mapping[str, Any]) -> tuple[int, str, str | None, str | None, list[Any]]:
        """:meth:`split`, and the numbers themselves."""
        ms, canonical = self.instant(r["ts"])
        template: dict[str, Any] = {}
        nums: list[Any] = []
        extra: dict[str, Any] | None = None if canonical else {"ts": r["ts"]}
        for key, value in r.items():
            if key in _FIXED:
                continue
            if type(value) is dict:
                if key in _NUMERIC:
                    template[key] = list(value)
                    nums += value.values()
                    continue
                if key in _STRING:
                    template[key] = value
                    continue
            elif key == "ets" and type(value) is str:
                extra = {**(extra or {}), "ets": value}
                continue
            if key in EXTENSIONS:
                extra = {**(extra or {}), key: value}
                continue
            return ms, "", None, _whole(r), []
        text = None
        if nums:
            text = self._spelled(nums)
            if text is None:  # a number field holding something not a finite int or float
                return ms, "", None, _whole(r), []
        try:
            shape = orjson.dumps(template).decode()
            more = None if extra is None else orjson.dumps(extra).decode()
        except TypeError:  # a key that is not a string, a value JSON cannot hold
            return ms, "", None, _whole(r), []
        return ms, shape, text, more, nums

    def _spelled(self, nums: list[Any]) -> str | None:
        """The ``nums`` text (each number's ``repr``), or None if one is not a finite int or
        float. Float spellings are cached (``repr`` of a float is the slow part); zero is
        not, since 0.0 and -0.0 are one key but two spellings."""
        known = self._floats
        out = []
        for n in nums:
            kind = type(n)
            if kind is int:
                out.append(str(n))
            elif kind is float:
                text = known.get(n)
                if text is None:
                    if not math.isfinite(n):
                        return None
                    text = repr(n)
                    if n:
                        if len(known) > 65536:
                            known.clear()
                        known[n] = text
                out.append(text)
            else:
                return None
        return ",".join(out)


_LOWER_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def uid_key(uid: str) -> str | bytes:
    """How SQLite stores a uid: a lowercase UUID as its 16 bytes (the SDK's uids are),
    anything else as its text."""
    if _LOWER_UUID(uid):
        return bytes.fromhex(uid.replace("-", ""))
    return uid


def uid_text(stored: str | bytes) -> str:
    if type(stored) is bytes:
        h = stored.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    assert isinstance(stored, str)
    return stored


def _whole(r: Mapping[str, Any]) -> str:
    return orjson.dumps({"body": r}).decode()


def numbers(text: str | None) -> list[int | float]:
    """The numbers of a ``nums`` column, each with the type it was stored with."""
    if not text:
        return []
    return [float(t) if _FLOAT_MARKS.intersection(t) else int(t) for t in text.split(",")]


def decode(
    uid: str, meter: str, account: str, ts_ms: int, shape: Shape, nums: str | None, extra: str | None
) -> dict[str, Any]:
    """The measurement as it was stored."""
    out: dict[str, Any] = {"uid": uid, "meter": meter, "account": account, "ts": None}
    more: dict[str, Any] = {} if extra is None else orjson.loads(extra)
    if "body" in more:
        body: dict[str, Any] = more["body"]
        return body
    out["ts"] = more.get("ts") or iso(ts_ms)
    if "ets" in more:
        out["ets"] = more["ets"]
    values = numbers(nums)
    at = 0
    for category, spec in shape.template.items():
        if type(spec) is list:
            out[category] = dict(zip(spec, values[at : at + len(spec)], strict=True))
            at += len(spec)
        else:
            out[category] = dict(spec)
    for key in EXTENSIONS:  # where validation puts them: after the categories
        if key in more:
            out[key] = more[key]
    return out
