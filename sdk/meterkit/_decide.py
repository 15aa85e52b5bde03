"""``meterkit.allow()``'s deciders: rate limits and caps decided in the application process.

Each (meter, account) has a *route* (made by ``_allow.Engine.route`` from the plan the
account is on now, ``_plans``, and kept until that attachment ends) whose decider is one
of: nothing to decide (``"no limit"``); one rate limit alone, the usual case, decided by
:func:`process_decider` in this process or :class:`RateCheck` for the host
(``_hostshare``) and every host (``_redislimit``); or a :class:`Composite` that checks the
caps on the meter (:class:`CapCheck`, ``_caps``; no side effect), then the rate limits.
Everything must allow; what a cap allowed is then counted.

When a decision cannot be made as configured (no fresh balance snapshot, Redis down, the
host table full, any error inside meterkit) the configured policy decides: ``fail_open``
(the default, as Envoy's global rate limit fails open) allows, ``fail_closed`` refuses. The
decision says ``fallback=True`` and its reason names the cause; each is counted under a
stable reason (``_allow.Engine.counts``). In production mode ``allow`` never raises.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _guard
from ._caps import BalanceKey
from ._hostshare import HostTableFull
from ._redislimit import RedisUnavailable

if TYPE_CHECKING:
    from ._allow import Engine
    from ._gcra import ProcessGcra
    from ._planlimits import Cap, RateLimit

_time_ns = time.time_ns
_monotonic_ns = time.monotonic_ns


class Decision(NamedTuple):
    """What :func:`meterkit.allow` decided. ``remaining``: units still allowed now (None:
    no limit); ``retry_after``: seconds until the same request would be allowed (0 when
    allowed, ``inf`` when waiting cannot help); ``fallback``: decided by the fallback
    policy, not by a limit; ``limit``: which limit decided.

    A named tuple because it is made on nearly every decision: a frozen dataclass costs
    three times as much to build (``object.__setattr__`` per field). Immutable, so the
    allowed ones are shared (:class:`SharedDecisions`)."""

    allowed: bool
    remaining: int | None
    retry_after: float
    reason: str
    fallback: bool = False
    limit: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


NO_LIMIT = Decision(True, None, 0.0, "no limit")
NO_ACCOUNT = Decision(True, None, 0.0, "no account")


#: A decider: (account, quantity, amounts) -> Decision, one per route.
Decider = Callable[[str, int, Mapping[str, Any] | None], Decision]
#: What :func:`meterkit.allow` finds for a (meter, account): the wall-clock span [lo, hi)
#: in ns over which the account stays on the same plan, the route's decider, its caps.
Route = tuple[int, int, Decider, "tuple[CapCheck, ...]"]
#: No route yet: a span that holds no instant.
NO_ROUTE: Route = (1, 0, lambda account, quantity, amounts: NO_LIMIT, ())
#: The end of a span that does not end.
FOREVER = 2**63
_new = tuple.__new__
_ONE = 1
#: Allowed decisions a rate limit keeps to share (:class:`SharedDecisions`).
SHARED_DECISIONS = 1024


def odd_quantity(
    engine: Engine, decide: Decider, account: str, quantity: Any, amounts: Any, burst: int | None, text: str | None
) -> Decision:
    """A quantity the fast paths leave out: more than the burst (never allowed), a
    subclass of int (decided as the int), or no whole number of at least 1 (strict
    mode raised for it already; here the fallback policy decides, cause
    ``"bad quantity"``: a quantity below 1 would hand units back)."""
    if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 1:
        if burst is not None and quantity > burst:
            return _new(Decision, (False, None, math.inf, "quantity above burst", False, text))
        return decide(account, int(quantity), amounts)
    return engine.fallback("bad quantity", text)


class SharedDecisions:
    """The allowed decisions of one rate limit, by units remaining, made once and shared:
    a :class:`Decision` is immutable, and making one (a tuple subclass, allocated and
    freed) is the largest single cost of an in-process decision. At most
    :data:`SHARED_DECISIONS` are kept, then they are forgotten and made again."""

    __slots__ = ("made", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.made: dict[int, Decision] = {}

    def make(self, remaining: int) -> Decision:
        made = self.made
        if len(made) >= SHARED_DECISIONS:
            made.clear()
        decision = made[remaining] = _new(Decision, (True, remaining, 0.0, "allowed", False, self.text))
        return decision


class CapCheck:
    """One cap of a route, with what each decision needs worked out once."""

    __slots__ = ("cap", "engine", "hard", "limit", "text")

    def __init__(self, engine: Engine, cap: Cap) -> None:
        self.engine, self.cap, self.hard, self.text = engine, cap, cap.mode == "hard", cap.describe()
        limit = cap.limit
        # an int when whole: int arithmetic is several times cheaper than Decimal's, and exact
        self.limit: int | Decimal = int(limit) if limit == limit.to_integral_value() else limit

    def decide(
        self, account: str, quantity: int, fields: dict[str, Any] | None, now_ms: int
    ) -> tuple[Decision, BalanceKey, Any]:
        """The cap's decision, its balance key, and the amount to count if all allow."""
        cap, engine = self.cap, self.engine
        start, end = engine.period(cap.period, now_ms)
        key = (cap.plan, cap.meter, cap.field, account, start)
        snapshot = engine.snapshots.current(now_ms)
        if snapshot is None:
            return engine.fallback(engine.snapshots.problem, self.text), key, 0
        used = engine.local.total(key)
        if snapshot.as_of_ms > start:  # a snapshot from an earlier period holds nothing of this one
            used += snapshot.balances.get(key, 0)
        amount: Any = quantity if cap.field is None else counted_amount((fields or {}).get(cap.field, 0))
        if amount is None:  # a negative amount would hand units back; NaN or text would pass any cap
            return engine.fallback("bad amount", self.text), key, 0
        limit = self.limit
        over = used + amount > limit if amount else used >= limit
        if over and self.hard:
            remaining = max(int(limit - used), 0)
            refused = _new(Decision, (False, remaining, (end - now_ms) / 1000, "hard cap reached", False, self.text))
            return refused, key, 0
        remaining = max(int(limit - used - amount), 0)  # after this request
        reason = "soft cap exceeded" if over else "allowed"
        return _new(Decision, (True, remaining, 0.0, reason, False, self.text)), key, amount


class RateCheck:
    """A host or global rate limit: its limiter, and its decisions made cheaply."""

    __slots__ = ("burst", "engine", "is_global", "limiter", "shared", "text")

    def __init__(self, engine: Engine, limit: RateLimit, limiter: Any) -> None:
        self.engine, self.limiter, self.burst = engine, limiter, limit.burst
        self.is_global = limit.scope == "global"
        self.text = limit.describe()
        self.shared = SharedDecisions(self.text)

    def decide(self, account: str, quantity: int, amounts: Mapping[str, Any] | None = None) -> Decision:
        engine = self.engine
        if type(quantity) is not int or not 0 < quantity <= self.burst:
            return odd_quantity(engine, self.decide, account, quantity, amounts, self.burst, self.text)
        if self.is_global and time.monotonic() < engine.redis_down_until:
            return engine.fallback("redis unavailable", self.text)
        try:
            allowed, remaining, retry_ns = self.limiter.decide(account, quantity)
        except HostTableFull:
            return engine.fallback("host table full", self.text)
        except RedisUnavailable as exc:
            engine.redis_down_until = time.monotonic() + 1.0
            _guard.log_once(("redis", str(exc)), logging.WARNING, "meterkit: global limits: %s", exc)
            return engine.fallback("redis unavailable", self.text)
        if allowed:
            made = self.shared.made.get(remaining)
            return made if made is not None else self.shared.make(remaining)
        return _new(Decision, (False, remaining, retry_ns / 1e9, "rate limited", False, self.text))


class Composite:
    """A route with caps or with several rate limits. Caps are checked first (they change
    nothing), then rate limits; every one must allow, and what the caps allowed is then
    counted. The decision reported is the tightest (:func:`_tighter`)."""

    __slots__ = ("caps", "engine", "rates")

    def __init__(self, engine: Engine, caps: tuple[CapCheck, ...], rates: tuple[Decider, ...]) -> None:
        self.engine, self.caps, self.rates = engine, caps, rates

    def decide(self, account: str, quantity: int, amounts: Mapping[str, Any] | None) -> Decision:
        if type(quantity) is not int or quantity < 1:
            return odd_quantity(self.engine, self.decide, account, quantity, amounts, None, None)
        now_ms = _time_ns() // 1_000_000
        fields = dict(amounts) if amounts else None
        result: Decision | None = None
        counted: list[tuple[BalanceKey, Any]] = []
        for cap in self.caps:
            decision, key, amount = cap.decide(account, quantity, fields, now_ms)
            if not decision.allowed:
                return decision
            if amount:
                counted.append((key, amount))
            result = _tighter(result, decision)
        for rate in self.rates:
            decision = rate(account, quantity, None)
            if not decision.allowed:
                return decision
            result = _tighter(result, decision)
        for key, amount in counted:
            self.engine.local.add(key, amount, now_ms)
        return result or NO_LIMIT


def process_decider(engine: Engine, limiter: ProcessGcra, text: str) -> Decider:
    """A ``scope: process`` limit's decider. This is the decision with a 1.5 µs budget,
    where a Python call, an attribute lookup or a new :class:`Decision` is each some
    3-10 % of it, so a request for one unit (nearly all of them) is decided by
    ``ProcessGcra.decide`` inlined with ``n = 1``, what it needs bound as local names,
    and an allowed decision is shared (:class:`SharedDecisions`); any other quantity is
    checked and decided by ``ProcessGcra.decide`` itself, on the same state.

    Exact as ``_gcra.gcra``: integer ticks; for one unit ``slack = now + τ − TAT`` is
    the room left (allowed when ≥ 0, ``slack // T`` units then remain) and a refusal
    waits ``⌈−slack / denom⌉`` ns. The read and the write of the account's TAT happen
    under the limiter's lock: without it two threads could read the same TAT and both
    be allowed on it. Captures the lock: made again after a fork (``Engine.after_fork``)."""
    rate, tats, prune = limiter.rate, limiter.tats, limiter.prune
    interval, denom, burst = rate.interval, rate.denom, rate.burst
    tolerance = rate.capacity - interval  # τ = T × (burst − 1)
    acquire, release = limiter.lock.acquire, limiter.lock.release
    shared = SharedDecisions(text)
    allowed = shared.made

    def decide(account: str, quantity: int, amounts: Mapping[str, Any] | None) -> Decision:
        if quantity is not _ONE:  # CPython has one int 1; any other 1 takes the longer way, as exact
            return other(account, quantity, amounts)
        now = _monotonic_ns() * denom
        acquire()  # not `with`: its special-method lookups cost 0.1 µs
        try:
            tat = tats.get(account)
            if tat is None or tat < now:
                if tat is None and len(tats) >= limiter.prune_at:
                    prune(now)
                tat = now
            slack = now + tolerance - tat
            if slack >= 0:
                tats[account] = tat + interval
        finally:
            release()
        if slack >= 0:
            made = allowed.get(slack // interval)
            return made if made is not None else shared.make(slack // interval)
        left = (slack + interval) // interval
        return _new(Decision, (False, left, -(slack // denom) / 1e9, "rate limited", False, text))

    def other(account: str, quantity: int, amounts: Mapping[str, Any] | None) -> Decision:
        if type(quantity) is not int or not 0 < quantity <= burst:
            return odd_quantity(engine, decide, account, quantity, amounts, burst, text)
        ok, left, retry_ns = limiter.decide(account, quantity)
        if ok:
            return shared.make(left)
        return _new(Decision, (False, left, retry_ns / 1e9, "rate limited", False, text))

    return decide


def _soft_exceeded(decision: Decision) -> bool:
    return decision.reason == "soft cap exceeded"


def _fallback(decision: Decision) -> bool:
    return decision.fallback


def _tighter(current: Decision | None, new: Decision) -> Decision:
    """Of two allowing decisions, the one to report: a soft cap exceeded, then one made by
    the fallback policy (the caller must know), then the one with the fewest units left."""
    if current is None:
        return new
    for marked in (_soft_exceeded, _fallback):
        if marked(current) or marked(new):
            return current if marked(current) else new
    if new.remaining is None:
        return current
    return new if current.remaining is None or new.remaining < current.remaining else current


def counted_amount(value: Any) -> int | Decimal | None:
    """A field amount as a cap counts it: a whole number or a finite decimal, at least 0 (a
    float as the decimal it was written as), or None when it cannot be counted."""
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return Decimal(repr(value))
    if isinstance(value, Decimal) and value.is_finite() and value >= 0:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return None
