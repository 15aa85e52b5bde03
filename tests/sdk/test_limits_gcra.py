"""GCRA (``meterkit._gcra``, and the engine's inlined copy of it) against a reference token
bucket in exact fractions: the same allow/deny, remaining and retry_after for any sequence
of (time, quantity); and the in-process state under threads and pruning."""

from __future__ import annotations

import sys
import threading
from fractions import Fraction
from math import ceil
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit import _decide, _gcra
from meterkit._allow import Engine
from meterkit._decide import process_decider
from meterkit._gcra import ProcessGcra, Rate, gcra
from meterkit._plans import LimitPlans
from meterkit._settings import resolve_limits

SECOND = 1_000_000_000


class Bucket:
    """The naive reference: tokens refill continuously at rate/per, up to burst."""

    def __init__(self, rate: int, per: int, burst: int) -> None:
        self.rate, self.per, self.burst = Fraction(rate), per, burst
        self.tokens, self.at = Fraction(burst), None

    def decide(self, t: int, q: int) -> tuple[bool, int, int]:
        if self.at is not None:
            self.tokens = min(Fraction(self.burst), self.tokens + (t - self.at) * self.rate / self.per)
        self.at = t
        if self.tokens >= q:
            self.tokens -= q
            return True, int(self.tokens), 0
        return False, int(self.tokens), ceil((q - self.tokens) * self.per / self.rate)


def run_gcra(rate: Rate, steps: list[tuple[int, int]]) -> list[tuple[bool, int, int]]:
    tat, out = 0, []
    for t, q in steps:
        now = t * rate.denom
        allowed, new, remaining, excess = gcra(rate, tat if tat else now, now, q)
        if allowed:
            tat = new
        out.append((allowed, remaining, rate.retry_units(excess) if excess else 0))
    return out


@settings(max_examples=150, deadline=None)
@given(
    rate=st.integers(1, 1000),
    per=st.sampled_from([SECOND, 60 * SECOND, 7, 3 * SECOND]),
    burst=st.integers(1, 50),
    data=st.data(),
)
def test_gcra_matches_a_token_bucket(rate: int, per: int, burst: int, data: st.DataObject) -> None:
    gaps = data.draw(st.lists(st.integers(0, 2 * per // rate + 2), min_size=1, max_size=60))
    quantities = data.draw(st.lists(st.integers(1, burst), min_size=len(gaps), max_size=len(gaps)))
    times, t = [], 10**12
    for gap in gaps:
        t += gap
        times.append(t)
    steps = list(zip(times, quantities, strict=True))
    bucket = Bucket(rate, per, burst)
    assert run_gcra(Rate(rate, per, burst), steps) == [bucket.decide(t, q) for t, q in steps]


def test_burst_at_once_then_rate_per_period() -> None:
    """From a full bucket: burst at once, then exactly rate per per (3 a second: T is not
    a whole number of nanoseconds, and nothing drifts)."""
    rate = Rate(3, SECOND, 5)
    start = 10**12
    burst = run_gcra(rate, [(start, 1)] * 6)
    assert [a for a, _, _ in burst] == [True] * 5 + [False]
    allowed = sum(a for a, _, _ in run_gcra(rate, [(start + i * SECOND // 1000, 1) for i in range(100_001)]))
    assert allowed == 5 + 3 * 100  # 100 seconds after the burst: 300 more, not 299 or 301


def test_retry_after_is_exact() -> None:
    rate = Rate(10, SECOND, 2)
    start = 5 * SECOND
    steps = [(start, 1), (start, 1), (start, 1)]
    *_, (allowed, _, retry) = run_gcra(rate, steps)
    assert not allowed and retry == SECOND // 10
    assert not run_gcra(rate, [*steps[:2], (start + retry - 1, 1)])[-1][0]  # a nanosecond early: refused
    assert run_gcra(rate, [*steps[:2], (start + retry, 1)])[-1][0]  # on time: allowed


def test_quantity_consumes_that_many_units() -> None:
    rate = Rate(100, SECOND, 10)
    out = run_gcra(rate, [(SECOND, 7), (SECOND, 3), (SECOND, 1)])
    assert out[0] == (True, 3, 0) and out[1] == (True, 0, 0) and out[2] == (False, 0, SECOND // 100)


def test_process_limit_keeps_one_state_per_account() -> None:
    limiter = ProcessGcra(Rate(1, 3600 * SECOND, 2))
    assert [limiter.decide("a", 1)[0] for _ in range(3)] == [True, True, False]
    assert limiter.decide("b", 1)[0]
    refused = limiter.decide("a", 1)
    assert refused[2] > 0 and refused[1] == 0


# -- the engine's inlined decider (``_decide.process_decider``) -------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(LimitPlans({}, {}), resolve_limits(tmp_path_factory.mktemp("spool"), "production"))


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 1000),
    per=st.sampled_from([SECOND, 60 * SECOND, 7, 3 * SECOND]),
    burst=st.integers(1, 20),
    data=st.data(),
)
def test_the_engines_process_decider_matches_a_token_bucket(
    engine: Engine, rate: int, per: int, burst: int, data: st.DataObject
) -> None:
    """Every field of every decision, for one unit (decided inline) and for more (decided
    by ``ProcessGcra.decide``), on a clock the test moves."""
    gaps = data.draw(st.lists(st.integers(0, 2 * per // rate + 2), min_size=1, max_size=40))
    one_or_more = st.one_of(st.just(1), st.integers(1, burst))  # one unit, the usual request, half the time
    quantities = data.draw(st.lists(one_or_more, min_size=len(gaps), max_size=len(gaps)))
    clock = [10**12]
    decide = process_decider(engine, ProcessGcra(Rate(rate, per, burst)), "the limit")
    bucket = Bucket(rate, per, burst)
    with (
        patch.object(_decide, "_monotonic_ns", lambda: clock[0]),
        patch.object(_gcra, "monotonic_ns", lambda: clock[0]),
    ):
        for gap, quantity in zip(gaps, quantities, strict=True):
            clock[0] += gap
            allowed, remaining, retry = bucket.decide(clock[0], quantity)
            reason = "allowed" if allowed else "rate limited"
            assert decide("acme", quantity, None) == (allowed, remaining, retry / 1e9, reason, False, "the limit")


def test_threads_deciding_at_once_are_never_allowed_past_the_burst(engine: Engine) -> None:
    """A bucket that does not refill within the test: exactly ``burst`` allowed in all,
    with the interpreter switching threads as often as it can."""
    decide = process_decider(engine, ProcessGcra(Rate(1, 3600 * SECOND, 2000)), "the limit")
    allowed = []

    def hammer() -> None:
        allowed.append(sum(decide("acme", 1, None).allowed for _ in range(1000)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(allowed) == 2000  # without the lock, more in about one run of two


def test_pruning_forgets_only_full_buckets_and_waits_for_the_table_to_double(engine: Engine) -> None:
    limiter = ProcessGcra(Rate(1, 3600 * SECOND, 1))
    decide = process_decider(engine, limiter, "the limit")
    clock = [10**12]
    with patch.object(_gcra, "PRUNE_AT", 4), patch.object(_decide, "_monotonic_ns", lambda: clock[0]):
        limiter.prune_at = 4
        for account in "abcd":
            assert decide(account, 1, None).allowed
        clock[0] += 3600 * SECOND  # a, b, c and d are full again
        assert decide("a", 1, None).allowed and decide("b", 1, None).allowed  # busy again
        assert decide("e", 1, None).allowed  # the fifth account: c and d forgotten
        assert sorted(limiter.tats) == ["a", "b", "e"] and limiter.prune_at == 4
        for account in "fg":
            assert decide(account, 1, None).allowed
        assert not decide("a", 1, None).allowed  # its bucket was kept, not refilled
        assert limiter.prune_at == 4 * 2  # four busy at the last prune: the next at twice that
