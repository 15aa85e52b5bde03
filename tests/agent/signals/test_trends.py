"""Drops and spikes against a trailing median: properties on synthetic series."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterkit_agent.billing.periods import instant_ms
from meterkit_agent.signals import TrendSettings, dense, detect, trend_events

factors = st.decimals(min_value=Decimal("1.01"), max_value=Decimal(100), places=2)
windows = st.integers(min_value=1, max_value=30)
bases = st.integers(min_value=1, max_value=10**9)


@st.composite
def steady(draw: st.DrawFn, window: int, factor: Decimal, base: int) -> list[int]:
    """A history of at least ``window`` buckets within ``[base, base * factor]``: no two
    of its values are more than ``factor`` apart, so none of it is a drop or a spike."""
    top = math.floor(Fraction(base) * Fraction(factor))
    return draw(st.lists(st.integers(base, top), min_size=window, max_size=window + 20))


@given(st.integers(0, 10**12), st.integers(0, 60), windows, factors)
def test_a_constant_series_never_signals(value: int, length: int, window: int, factor: Decimal) -> None:
    assert detect([value] * length, window, factor) == []


@given(st.data(), windows, factors, bases)
def test_a_drop_by_more_than_the_factor_signals_exactly_at_that_bucket(
    data: st.DataObject, window: int, factor: Decimal, base: int
) -> None:
    history = data.draw(steady(window, factor, base))
    # below base / factor, so below every median of the history divided by the factor
    highest = math.ceil(Fraction(base) / Fraction(factor)) - 1
    dropped = data.draw(st.integers(0, highest))
    signals = detect([*history, dropped], window, factor)
    assert [(s.index, s.kind) for s in signals] == [(len(history), "usage_drop")]


@given(st.data(), windows, factors, bases)
def test_a_spike_by_more_than_the_factor_signals_exactly_at_that_bucket(
    data: st.DataObject, window: int, factor: Decimal, base: int
) -> None:
    history = data.draw(steady(window, factor, base))
    # above base * factor * factor, so above every median of the history times the factor
    lowest = math.floor(Fraction(base) * Fraction(factor) ** 2) + 1
    spiked = data.draw(st.integers(lowest, lowest * 10))
    signals = detect([*history, spiked], window, factor)
    assert [(s.index, s.kind) for s in signals] == [(len(history), "usage_spike")]


@given(st.data(), windows, factors)
def test_exactly_the_factor_is_neither(data: st.DataObject, window: int, factor: Decimal) -> None:
    base = data.draw(st.integers(1, 10**6)) * 100  # factor has two places: base * factor is whole
    median = Fraction(base)
    at_drop, at_spike = median / Fraction(factor), median * Fraction(factor)
    assert detect([Decimal(base)] * window + [Decimal(at_spike.numerator) / at_spike.denominator], window, factor) == []
    if at_drop.denominator == 1:
        assert detect([base] * window + [int(at_drop)], window, factor) == []


@given(st.lists(st.integers(0, 10**6), max_size=30), st.integers(1, 40), factors)
def test_with_less_history_than_the_window_nothing_is_said(values: list[int], window: int, factor: Decimal) -> None:
    series = values[:window]  # at most `window` buckets: no bucket has `window` before it
    assert detect(series, window, factor) == []


def test_a_baseline_of_nothing_is_no_baseline() -> None:
    assert detect([0, 0, 0, 5000], 3, 2) == []


def test_the_median_ignores_one_earlier_outlier() -> None:
    # mean of [10, 10, 1000] is 340: 30 would look like a drop; the median (10) says it is not
    assert detect([10, 10, 1000, 30], 3, 4) == []
    assert [s.kind for s in detect([10, 1000, 10, 2], 3, 4)] == ["usage_drop"]


DAY = 86_400_000
D1 = instant_ms("2026-03-01")


def test_missing_days_are_zero_and_only_whole_buckets_are_judged() -> None:
    usage = {D1 + i * DAY: Decimal(100) for i in range(7)}  # a week of 100, then nothing
    now = D1 + 8 * DAY + DAY // 2  # the 9th day is under way
    series = dense(usage, D1 + DAY // 2, now, "day")  # first usage mid-day: its day counts
    assert [s for s, _ in series] == [D1 + i * DAY for i in range(8)]  # the 9th is not whole
    settings = TrendSettings(bucket="day", window=7, factor=Decimal(3))
    (event,) = trend_events("org1", "acme", "api_calls", "", series, settings, now)
    assert event.kind == "usage_drop" and event.period == (D1 + 7 * DAY, D1 + 8 * DAY)
    assert event.threshold == "3" and event.data == {
        "value": "0",
        "median": "100",
        "factor": "3",
        "window": 7,
        "bucket": "day",
    }
    # judged again from the next evaluation on: the same event, so the outbox keeps one
    (again,) = trend_events("org1", "acme", "api_calls", "", series, settings, now + 1000)
    assert again.id == event.id


def test_hourly_spikes_and_a_judging_start() -> None:
    hour = 3_600_000
    series = [(D1 + i * hour, v) for i, v in enumerate([5, 5, 5, 50, 5, 5, 60])]
    settings = TrendSettings(bucket="hour", window=3, factor=Decimal(2))
    events = trend_events("o", "a", "m", "", series, settings, D1 + 7 * hour)
    assert [(e.kind, e.period[0]) for e in events] == [("usage_spike", D1 + 3 * hour), ("usage_spike", D1 + 6 * hour)]
    later = trend_events("o", "a", "m", "", series, settings, D1 + 7 * hour, start=4)
    assert [e.period[0] for e in later] == [D1 + 6 * hour]
    with pytest.raises(ValueError, match="consecutive"):
        trend_events("o", "a", "m", "", [series[0], series[2]], settings, D1 + 7 * hour)
