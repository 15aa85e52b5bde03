"""Sudden drops (churn risk) and spikes (upsell) in an account's usage of a meter.

Usage is cut into UTC buckets (hours or days). A bucket is compared with the median of
the ``window`` buckets just before it: a **drop** is usage below ``median / factor``, a
**spike** usage above ``median * factor`` (strictly: exactly ``factor`` times is neither).
The median, not the mean, so one earlier spike does not hide the next drop.

- Buckets without usage count as zero: an account that stops using a meter altogether is
  the drop that matters most. The caller says where the series starts (the account's
  first usage, say) so the zeros before it are not history.
- A bucket needs ``window`` buckets of history before it; with fewer, nothing is said.
- A baseline of nothing is no baseline: with a median of zero, nothing is said either
  (usage after silence is not a spike of any factor).
- Only whole buckets are judged: a bucket still under way would look like a drop.

Arithmetic is exact (:class:`~fractions.Fraction`). Each signal is an event whose period
is its bucket, so it is notified once per bucket.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from ..billing.money import as_decimal
from ..instants import DAY_MS, HOUR_MS
from .events import Event, decimal_text
from .settings import TrendSettings

Number = Decimal | int
Kind = Literal["usage_drop", "usage_spike"]

BUCKET_MS = {"hour": HOUR_MS, "day": DAY_MS}


@dataclass(frozen=True)
class Signal:
    """Bucket ``index`` of the series is a drop or a spike against ``median``."""

    index: int
    kind: Kind
    value: Fraction
    median: Fraction


def median(values: Sequence[Fraction]) -> Fraction:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def judge(value: Fraction, baseline: Fraction, factor: Fraction) -> Kind | None:
    """A drop, a spike, or nothing: ``value`` against the trailing ``baseline``."""
    if baseline <= 0:
        return None
    if value * factor < baseline:
        return "usage_drop"
    if value > baseline * factor:
        return "usage_spike"
    return None


def detect(series: Sequence[Number], window: int, factor: Number, start: int = 0) -> list[Signal]:
    """Every drop and spike in ``series`` (consecutive buckets, oldest first) from index
    ``max(start, window)`` on."""
    values = [Fraction(v) for v in series]
    k = Fraction(factor)
    found = []
    for i in range(max(start, window), len(values)):
        baseline = median(values[i - window : i])
        kind = judge(values[i], baseline, k)
        if kind is not None:
            found.append(Signal(i, kind, values[i], baseline))
    return found


def dense(values: Mapping[int, Number], first_ms: int, end_ms: int, bucket: str) -> list[tuple[int, Number]]:
    """``values`` (bucket start → usage) as consecutive buckets from the one holding
    ``first_ms`` up to the last that ends by ``end_ms``, zero where nothing was used."""
    size = BUCKET_MS[bucket]
    out: list[tuple[int, Number]] = []
    start = first_ms - first_ms % size
    while start + size <= end_ms:
        out.append((start, values.get(start, 0)))
        start += size
    return out


def trend_events(
    org: str,
    account: str,
    meter: str,
    measure: str,
    series: Sequence[tuple[int, Number]],
    settings: TrendSettings,
    now_ms: int,
    start: int = 0,
) -> list[Event]:
    """The drop and spike events of ``series`` (from :func:`dense`: consecutive whole
    buckets), judging buckets from index ``start`` on."""
    size = BUCKET_MS[settings.bucket]
    if any(b - a != size for (a, _), (b, _) in itertools.pairwise(series)):
        raise ValueError("series must be consecutive buckets of the configured size")
    whole = [(s, v) for s, v in series if s + size <= now_ms]
    events = []
    for signal in detect([v for _, v in whole], settings.window, settings.factor, start):
        bucket_start = whole[signal.index][0]
        data = {
            "value": decimal_text(as_decimal(signal.value)),
            "median": decimal_text(as_decimal(signal.median)),
            "factor": decimal_text(settings.factor),
            "window": settings.window,
            "bucket": settings.bucket,
        }
        events.append(
            Event(
                org,
                account,
                meter,
                measure,
                signal.kind,
                decimal_text(settings.factor),
                (bucket_start, bucket_start + size),
                now_ms,
                data,
            )
        )
    return events
