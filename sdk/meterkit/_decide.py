"""``meterkit.allow()``: rate limits and caps decided in the application process.

A decision finds the plan the account is on now (``_plans``; cached per account until the
attachment ends), then checks that plan's caps on the meter (``_caps``; no side effect)
and its rate limits (``_gcra`` in this process, ``_hostshare`` for the host, ``_redislimit``
for every host). Everything must allow; what a cap allowed is then counted. No plan or no
limit for the meter: allowed, reason ``"no limit"``.

When a decision cannot be made as configured (no fresh balance snapshot, Redis down, the
host table full, any error inside meterkit) the configured policy decides: ``fail_open``
(the default, as Envoy's global rate limit fails open) allows, ``fail_closed`` refuses. The
decision says ``fallback=True`` and its reason names the cause; each is counted under a
stable reason (``Engine.counts``). In production mode ``allow`` never raises.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from decimal import Decimal
from typing import Any, NamedTuple

from . import _guard
from ._caps import BalanceKey, LocalUsage, SnapshotReader
from ._gcra import PRUNE_AT, ProcessGcra, Rate
from ._hostshare import HostGcra, HostTable, HostTableFull
from ._planlimits import PER_SECONDS, Cap, RateLimit
from ._plans import LimitPlans, period_bounds
from ._redislimit import RedisGcra, RedisUnavailable, connect
from ._settings import LimitSettings

_time_ns = time.time_ns
_monotonic_ns = time.monotonic_ns


class Decision(NamedTuple):
    """What :func:`meterkit.allow` decided. ``remaining``: units still allowed now (None:
    no limit); ``retry_after``: seconds until the same request would be allowed (0 when
    allowed, ``inf`` when waiting cannot help); ``fallback``: decided by the fallback
    policy, not by a limit; ``limit``: which limit decided.

    A named tuple because it is made on every decision: a frozen dataclass costs three
    times as much to build (``object.__setattr__`` per field)."""

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


class _Route:
    """The limits of one (meter, account) while the account stays on one plan."""

    __slots__ = ("caps", "hi", "lo", "plan", "rates", "single")

    def __init__(
        self,
        plan: str | None,
        lo: int,
        hi: int | None,
        caps: tuple[_CapCheck, ...],
        rates: tuple[_RateCheck | _ProcessCheck, ...],
    ) -> None:
        self.plan, self.lo, self.hi, self.caps, self.rates = plan, lo, hi if hi is not None else 2**62, caps, rates
        #: the common case, one rate limit and no cap: decided with no loop
        self.single = rates[0] if len(rates) == 1 and not caps else None


_new = tuple.__new__


class _CapCheck:
    """One cap of a route, with what each decision needs worked out once."""

    __slots__ = ("cap", "hard", "limit", "text")

    def __init__(self, cap: Cap) -> None:
        self.cap, self.hard, self.text = cap, cap.mode == "hard", cap.describe()
        limit = cap.hard_limit if self.hard else cap.cap
        # an int when whole: int arithmetic is several times cheaper than Decimal's, and exact
        self.limit: int | Decimal = int(limit) if limit == limit.to_integral_value() else limit


class _ProcessCheck:
    """A ``scope: process`` rate limit with the GCRA inlined: the in-process decision is
    the one with a 1.5 µs budget, and each Python call saved is about 0.1 µs of it."""

    __slots__ = ("burst", "limiter", "text")

    def __init__(self, limit: RateLimit, limiter: ProcessGcra) -> None:
        self.limiter, self.burst, self.text = limiter, limit.burst, limit.describe()

    def decide(self, account: str, quantity: int) -> Decision:
        if quantity > self.burst:
            return _new(Decision, (False, None, math.inf, "quantity above burst", False, self.text))
        limiter = self.limiter
        rate = limiter.rate
        interval, capacity = rate.interval, rate.capacity
        now = _monotonic_ns() * rate.denom
        with limiter._lock:
            tats = limiter._tat
            tat = tats.get(account, now)
            if tat < now:
                tat = now
            new = tat + quantity * interval
            if new - now <= capacity:
                tats[account] = new
                if len(tats) > PRUNE_AT:
                    limiter._prune(now)
                return _new(Decision, (True, (capacity - new + now) // interval, 0.0, "allowed", False, self.text))
        excess = new - now - capacity
        remaining = (capacity - tat + now) // interval
        return _new(Decision, (False, remaining, rate.retry_units(excess) / 1e9, "rate limited", False, self.text))


class _RateCheck:
    """One rate limit of a route: its limiter, and its decisions made cheaply."""

    __slots__ = ("burst", "engine", "is_global", "limiter", "text")

    def __init__(self, engine: Engine, limit: RateLimit, limiter: Any) -> None:
        self.engine, self.limiter, self.burst = engine, limiter, limit.burst
        self.is_global = limit.scope == "global"
        self.text = limit.describe()

    def decide(self, account: str, quantity: int) -> Decision:
        if quantity > self.burst:
            return Decision(False, None, math.inf, "quantity above burst", False, self.text)
        engine = self.engine
        if self.is_global and time.monotonic() < engine._redis_down_until:
            return engine.fallback("redis unavailable", self.text)
        try:
            allowed, remaining, retry_ns = self.limiter.decide(account, quantity)
        except HostTableFull:
            return engine.fallback("host table full", self.text)
        except RedisUnavailable as exc:
            engine._redis_down_until = time.monotonic() + 1.0
            _guard.log_once(("redis", str(exc)), logging.WARNING, "meterkit: global limits: %s", exc)
            return engine.fallback("redis unavailable", self.text)
        if allowed:
            return Decision(True, remaining, 0.0, "allowed", False, self.text)
        return Decision(False, remaining, retry_ns / 1e9, "rate limited", False, self.text)


class Engine:
    """Decisions for one plans file and settings. Made by :func:`meterkit.configure`."""

    def __init__(self, plans: LimitPlans, settings: LimitSettings) -> None:
        self.plans, self.settings = plans, settings
        self.fail_open = settings.limits_fallback == "fail_open"
        self.strict = settings.mode == "strict"
        self.broken: str | None = None  # set when the plans file could not be used
        self.counts: Counter[str] = Counter()
        self._routes: dict[tuple[str, str], _Route] = {}
        self._limiters: dict[str, Any] = {}
        self._host: HostTable | None = None
        self._redis: Any = None
        self._redis_down_until = 0.0
        self._periods: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.snapshots = SnapshotReader(settings.balances_path, settings.balances_max_age_seconds)
        self.local = LocalUsage()
        self.snapshots.listeners.append(self.local.drop_before)

    # -- the decision ----------------------------------------------------------------------

    def allow(self, meter: str, account: str, quantity: int, amounts: dict[str, Any] | None) -> Decision:
        now_ms = _time_ns() // 1_000_000
        route = self._routes.get((meter, account))
        if route is None or not (route.lo <= now_ms < route.hi):
            route = self._route(meter, account, now_ms)
        if route.plan is None:
            return NO_LIMIT
        if route.single is not None:
            return route.single.decide(account, quantity)
        result: Decision | None = None
        counted: list[tuple[tuple[str, str, str | None, str, int], Any]] = []
        for cap in route.caps:
            decision, key, amount = self._cap(cap, account, quantity, amounts, now_ms)
            if not decision.allowed:
                return decision
            if amount:
                counted.append((key, amount))
            result = _tighter(result, decision)
        for check in route.rates:
            decision = check.decide(account, quantity)
            if not decision.allowed:
                return decision
            result = _tighter(result, decision)
        for key, amount in counted:
            self.local.add(key, amount, now_ms)
        return result or NO_LIMIT

    def _cap(
        self, check: _CapCheck, account: str, quantity: int, amounts: dict[str, Any] | None, now_ms: int
    ) -> tuple[Decision, BalanceKey, Any]:
        """The cap's decision, its balance key, and the amount to count if all allow."""
        cap = check.cap
        start, end = self._period(cap.period, now_ms)
        key = (cap.plan, cap.meter, cap.field, account, start)
        snapshot = self.snapshots.current(now_ms)
        if snapshot is None:
            return self.fallback(self.snapshots.problem, check.text), key, 0
        used = self.local.total(key)
        if snapshot.as_of_ms > start:  # a snapshot from an earlier period holds nothing of this one
            used += snapshot.balances.get(key, 0)
        amount: Any = quantity if cap.field is None else (amounts or {}).get(cap.field, 0)
        limit = check.limit
        over = used + amount > limit if amount else used >= limit
        if over and check.hard:
            remaining = max(int(limit - used), 0)
            return (
                _new(Decision, (False, remaining, (end - now_ms) / 1000, "hard cap reached", False, check.text)),
                key,
                0,
            )
        remaining = max(int(limit - used - amount), 0)  # after this request
        reason = "soft cap exceeded" if over else "allowed"
        return _new(Decision, (True, remaining, 0.0, reason, False, check.text)), key, amount

    def _period(self, period: str, now_ms: int) -> tuple[int, int]:
        """The calendar period holding ``now_ms``, cached until it ends."""
        bounds = self._periods.get(period)
        if bounds is None or not bounds[0] <= now_ms < bounds[1]:
            bounds = self._periods[period] = period_bounds(now_ms, period)
        return bounds

    def fallback(self, cause: str, limit: str | None) -> Decision:
        """The configured policy's decision when ``cause`` stops the real one; counted."""
        self.counts[cause] += 1
        if self.fail_open:
            return Decision(True, None, 0.0, f"{cause}; fail_open", True, limit)
        return Decision(False, None, 1.0, f"{cause}; fail_closed", True, limit)

    def record_amounts(self, meter: str, account: str, amounts: dict[str, Any]) -> None:
        """Count what a ``limit=True`` call recorded toward the caps on its fields."""
        now_ms = _time_ns() // 1_000_000
        route = self._routes.get((meter, account)) or self._route(meter, account, now_ms)
        for check in route.caps:
            cap = check.cap
            value = amounts.get(cap.field) if cap.field else None
            if isinstance(value, int | Decimal) and not isinstance(value, bool) and value > 0:
                start = self._period(cap.period, now_ms)[0]
                self.local.add((cap.plan, cap.meter, cap.field, account, start), value, now_ms)

    # -- routes and limiters ---------------------------------------------------------------

    def _route(self, meter: str, account: str, now_ms: int) -> _Route:
        plan, lo, hi = self.plans.plan_at(account, now_ms)
        limits = self.plans.plans.get(plan) if plan is not None else None
        if limits is None:
            route = _Route(None, lo, hi, (), ())
        else:
            caps = tuple(_CapCheck(c) for c in limits.caps if c.meter == meter)
            rates = tuple(self._check(r) for r in limits.rates if r.meter == meter)
            route = _Route(plan if caps or rates else None, lo, hi, caps, rates)
        if len(self._routes) > 100_000:
            self._routes.clear()
        self._routes[(meter, account)] = route
        return route

    def _check(self, limit: RateLimit) -> _RateCheck | _ProcessCheck:
        limiter = self._limiter(limit)
        if isinstance(limiter, ProcessGcra):
            return _ProcessCheck(limit, limiter)
        return _RateCheck(self, limit, limiter)

    def _limiter(self, limit: RateLimit) -> Any:
        found = self._limiters.get(limit.key)
        if found is not None:
            return found
        with self._lock:
            per = PER_SECONDS[limit.per]
            if limit.scope == "process":
                made: Any = ProcessGcra(Rate(limit.rate, per * 1_000_000_000, limit.burst))
            elif limit.scope == "host":
                if self._host is None:
                    self._host = HostTable(self.settings.limits_state_dir)
                made = HostGcra(Rate(limit.rate, per * 1_000_000_000, limit.burst), limit.key, self._host)
            else:
                if self._redis is None:
                    self._redis = _redis_client(self.settings)
                if isinstance(self._redis, RedisUnavailable):
                    made = _Unavailable(self._redis)
                    self._limiters[limit.key] = made
                    return made
                made = RedisGcra(Rate(limit.rate, per * 1_000_000, limit.burst), limit.key, self._redis)
            self._limiters[limit.key] = made
        return made

    def after_fork(self) -> None:
        for limiter in self._limiters.values():
            if isinstance(limiter, ProcessGcra):
                limiter.reset_after_fork()
        self._lock = threading.Lock()


def _redis_client(settings: LimitSettings) -> Any:
    """A redis-py client, or the reason there is none (every global decision falls back)."""
    if not settings.redis_url:
        return RedisUnavailable("a global limit needs redis_url (METERKIT_REDIS_URL)")
    try:
        return connect(settings.redis_url, settings.redis_timeout_millis)
    except RedisUnavailable as exc:
        return exc


class _Unavailable:
    """A global limit with no Redis to ask: every decision is the fallback's."""

    def __init__(self, reason: RedisUnavailable) -> None:
        self.reason = reason

    def decide(self, account: str, quantity: int) -> tuple[bool, int, int]:
        raise self.reason


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
