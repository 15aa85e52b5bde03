"""GCRA, the generic cell rate algorithm, in exact integers.

A rate limit of ``rate`` per ``per`` with a bucket of ``burst`` is Brandur Leach's and
Tyler's formulation (throttled, redis-gcra): the emission interval is ``T = per / rate``,
the tolerance ``τ = T × (burst − 1)``, and the only state kept is the theoretical arrival
time (TAT) of the next unit. A request for ``n`` units at ``now`` is allowed when
``max(TAT, now) + n·T − now ≤ τ + T``; the TAT then moves to ``max(TAT, now) + n·T``.

So from a full bucket (no state, or a TAT in the past) exactly ``burst`` single units are
allowed at once, then one every ``T``: ``rate`` per ``per``. Nothing is rounded: ``T`` is
rarely a whole number of nanoseconds (100 per second is, 3 per second is not), so time is
counted in *ticks* of ``1/denom`` of the clock's unit, where ``denom = rate / gcd(rate,
per)``; in ticks ``T`` is the integer ``per / gcd(rate, per)``, and every comparison is
exact. ``retry_after`` is the exact wait, rounded up to the clock's unit, after which the
same request is allowed (if nothing else consumed the bucket meanwhile).

An expired TAT (``≤ now``) means the same as no state at all: a full bucket. That is what
lets the host-shared table (``_hostshare``) reuse slots and Redis (``_redislimit``) let
keys expire.
"""

from __future__ import annotations

import threading
from math import gcd
from time import monotonic_ns

__all__ = ["GcraOutcome", "ProcessGcra", "Rate", "gcra"]

#: (allowed, new TAT in ticks, units still allowed now, ticks to wait when refused)
GcraOutcome = tuple[bool, int, int, int]
#: Accounts a process limit remembers before it first drops those whose bucket is full again.
PRUNE_AT = 100_000


class Rate:
    """``rate`` units per ``per_units`` of a clock (ns in a process, µs in Redis), with a
    bucket of ``burst``, as integer ticks."""

    __slots__ = ("burst", "capacity", "denom", "interval", "per_units", "rate")

    def __init__(self, rate: int, per_units: int, burst: int) -> None:
        if rate <= 0 or per_units <= 0 or burst <= 0:
            raise ValueError("rate, per and burst must be positive")
        g = gcd(rate, per_units)
        self.rate, self.per_units, self.burst = rate, per_units, burst
        self.denom = rate // g  # ticks per clock unit
        self.interval = per_units // g  # T, in ticks
        self.capacity = self.interval * burst  # τ + T, in ticks

    def retry_units(self, excess_ticks: int) -> int:
        """Ticks to wait, as whole clock units, rounded up (waiting less would be refused)."""
        return -(-excess_ticks // self.denom)


def gcra(rate: Rate, tat: int, now: int, quantity: int) -> GcraOutcome:
    """Decide ``quantity`` units at ``now`` given the stored ``tat`` (both in ticks)."""
    if tat < now:
        tat = now
    new = tat + quantity * rate.interval
    excess = new - now - rate.capacity
    if excess <= 0:
        return True, new, (rate.capacity - (new - now)) // rate.interval, 0
    return False, tat, (rate.capacity - (tat - now)) // rate.interval, excess


class ProcessGcra:
    """One rate limit's state in this process: a TAT per account (``tats``), read and
    written under ``lock`` (two threads reading the same TAT would both be allowed).
    ``time.monotonic_ns`` is the clock: it never goes back when the wall clock is set.

    :meth:`decide` is the plain form; the engine decides with an inlined copy of it over
    the same ``tats`` and ``lock`` (``_decide.process_decider``), which is why
    ``tats`` is only ever changed in place."""

    __slots__ = ("lock", "prune_at", "rate", "tats")

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.tats: dict[str, int] = {}
        self.lock = threading.Lock()
        self.prune_at = PRUNE_AT  # the size at which a new account first prunes

    def decide(self, account: str, quantity: int) -> tuple[bool, int, int]:
        """(allowed, remaining, retry_after_ns)."""
        rate = self.rate
        now = monotonic_ns() * rate.denom
        with self.lock:
            tat = self.tats.get(account, now)
            allowed, new, remaining, excess = gcra(rate, tat, now, quantity)
            if allowed:
                if account not in self.tats and len(self.tats) >= self.prune_at:
                    self.prune(now)
                self.tats[account] = new
        return allowed, remaining, rate.retry_units(excess) if excess else 0

    def prune(self, now: int) -> None:
        """Forget accounts whose bucket is full again (no state means the same). Call
        under ``lock``; changes ``tats`` in place. The others must be kept (forgetting a
        TAT would refill its bucket), so the next prune waits until the table has doubled:
        pruning stays linear in the accounts added, however many are busy."""
        for account in [account for account, tat in self.tats.items() if tat <= now]:
            del self.tats[account]
        self.prune_at = max(PRUNE_AT, 2 * len(self.tats))

    def reset_after_fork(self) -> None:
        """A new lock: a thread of the parent may have held the old one at the fork."""
        self.lock = threading.Lock()
