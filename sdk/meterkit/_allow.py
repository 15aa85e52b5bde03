"""The process-wide decision engine behind :func:`meterkit.allow`.

:func:`meterkit.configure` makes it (``plans=`` or ``METERKIT_PLANS``); without that, the
first ``allow`` makes it from the environment. A plans file named only by the environment
that cannot be read does not raise into the application: it is logged, and every decision
is the fallback policy's, reason ``"plans file unusable"``.

A decision is one dictionary lookup and one call: ``allow`` finds the *route* of its
(meter, account), which holds while the account stays on one plan, and calls the route's
decider (``_decide``), made once per limit. The in-process decision has a 1.5 µs budget,
which is why nothing else happens on the way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _guard
from ._caps import LocalUsage, SnapshotReader
from ._decide import (
    FOREVER,
    NO_ACCOUNT,
    NO_ROUTE,
    CapCheck,
    Composite,
    Decider,
    Decision,
    RateCheck,
    Route,
    process_decider,
)
from ._errors import MeterkitError
from ._gcra import ProcessGcra, Rate
from ._hostshare import HostGcra, HostTable
from ._planlimits import PER_SECONDS, RateLimit
from ._plans import LimitPlans, load_limit_plans, period_bounds
from ._redislimit import RedisGcra, RedisUnavailable, connect
from ._scope import current_scope
from ._settings import LimitSettings, Settings, resolve, resolve_limits

if TYPE_CHECKING:
    from ._catalog import Catalog

engine: Engine | None = None
_lock = threading.Lock()
_EMPTY = LimitPlans({}, {})
_time_ns = time.time_ns


class Engine:
    """Decisions for one plans file and settings. Made by :func:`meterkit.configure`.

    :func:`meterkit.allow` looks its (meter, account) up in ``routes`` and calls the
    route's decider; :meth:`route` makes a route when there is none or the account's plan
    may have changed. ``broken`` (a plans file that could not be used) makes every route
    the fallback policy's."""

    def __init__(self, plans: LimitPlans, settings: LimitSettings, broken: str | None = None) -> None:
        self.plans, self.settings, self.broken = plans, settings, broken
        self.fail_open = settings.limits_fallback == "fail_open"
        self.strict = settings.mode == "strict"
        self.routes: dict[tuple[str, str], Route] = {}
        self.counts = _Counts(self)
        self.fallbacks: Counter[str] = Counter()
        self._deciders: dict[str, Decider] = {}  # per rate limit (its key), shared by its routes
        self._limiters: dict[str, Any] = {}
        self._host: HostTable | None = None
        self._redis: Any = None
        self.redis_down_until = 0.0
        self._periods: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.snapshots = SnapshotReader(settings.balances_path, settings.balances_max_age_seconds)
        self.local = LocalUsage()
        self.snapshots.listeners.append(self.local.drop_before)

    # -- what a decision needs beside its limits -------------------------------------------

    def fallback(self, cause: str, limit: str | None) -> Decision:
        """The configured policy's decision when ``cause`` stops the real one; counted."""
        with self._count_lock:
            self.fallbacks[cause] += 1
        if self.fail_open:
            return Decision(True, None, 0.0, f"{cause}; fail_open", True, limit)
        return Decision(False, None, 1.0, f"{cause}; fail_closed", True, limit)

    def current_counts(self) -> dict[str, int]:
        """Fallback decisions by cause, and the host table's lock take-overs (``counts``)."""
        with self._count_lock:
            counts = dict(self.fallbacks)
        counts["host_lock_recovered"] = self._host.recovered if self._host is not None else 0
        return counts

    def period(self, period: str, now_ms: int) -> tuple[int, int]:
        """The calendar period holding ``now_ms``, cached until it ends."""
        bounds = self._periods.get(period)
        if bounds is None or not bounds[0] <= now_ms < bounds[1]:
            bounds = self._periods[period] = period_bounds(now_ms, period)
        return bounds

    def record_amounts(self, meter: str, account: str, amounts: dict[str, Any]) -> None:
        """Count what a ``limit=True`` call recorded toward the caps on its fields."""
        now_ns = _time_ns()
        lo, hi, _, caps = self.routes.get((meter, account), NO_ROUTE)
        if not lo <= now_ns < hi:
            caps = self.route(meter, account, now_ns)[3]
        now_ms = now_ns // 1_000_000
        for check in caps:
            cap = check.cap
            value = amounts.get(cap.field) if cap.field else None
            if isinstance(value, int | Decimal) and not isinstance(value, bool) and value > 0:
                start = self.period(cap.period, now_ms)[0]
                self.local.add((cap.plan, cap.meter, cap.field, account, start), value, now_ms)

    # -- routes, deciders and limiters -----------------------------------------------------

    def route(self, meter: str, account: str, now_ns: int) -> Route:
        """The route of (meter, account) at ``now_ns`` (wall clock), kept in ``routes``."""
        if self.broken is not None:
            cause = self.broken
            route: Route = (0, FOREVER, lambda account, quantity, amounts: self.fallback(cause, None), ())
        else:
            plan, lo, hi = self.plans.plan_at(account, now_ns // 1_000_000)
            limits = self.plans.plans.get(plan) if plan is not None else None
            caps = tuple(CapCheck(self, c) for c in limits.caps if c.meter == meter) if limits else ()
            rates = tuple(self._decider(r) for r in limits.rates if r.meter == meter) if limits else ()
            if len(rates) == 1 and not caps:
                decide = rates[0]  # the common case: one rate limit, decided with no loop
            elif caps or rates:
                decide = Composite(self, caps, rates).decide
            else:
                decide = NO_ROUTE[2]
            route = (lo * 1_000_000, FOREVER if hi is None else hi * 1_000_000, decide, caps)
        if len(self.routes) > 100_000:
            self.routes.clear()
        self.routes[(meter, account)] = route
        return route

    def _decider(self, limit: RateLimit) -> Decider:
        found = self._deciders.get(limit.key)
        if found is None:
            limiter = self._limiter(limit)
            if isinstance(limiter, ProcessGcra):
                found = process_decider(self, limiter, limit.describe())
            else:
                found = RateCheck(self, limit, limiter).decide
            self._deciders[limit.key] = found
        return found

    def _limiter(self, limit: RateLimit) -> Any:
        """The one limiter (the state) of ``limit``: made once, under the lock, so two
        threads making their first routes at once cannot each get a bucket of their own."""
        found = self._limiters.get(limit.key)
        if found is not None:
            return found
        with self._lock:
            found = self._limiters.get(limit.key)
            if found is not None:
                return found
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
        """New locks in the child; the process deciders captured the old ones, so every
        route is made again."""
        for limiter in self._limiters.values():
            if isinstance(limiter, ProcessGcra):
                limiter.reset_after_fork()
        self._lock, self._count_lock = threading.Lock(), threading.Lock()
        self.snapshots.after_fork()
        self.local.after_fork()
        self._deciders.clear()
        self.routes.clear()


class _Counts(Mapping[str, int]):
    """``Engine.counts``, which ``meterkit.stats()["limits"]`` copies: fallback decisions
    by cause, and ``host_lock_recovered``, how often this process took the host table's
    lock over from a holder that had died (``_hostshare``). Read when asked."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getitem__(self, key: str) -> int:
        return self._engine.current_counts()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._engine.current_counts())

    def __len__(self) -> int:
        return len(self._engine.current_counts())


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


def make_engine(settings: Settings, catalog: Catalog | None, plans: str | Path | None = None, **given: Any) -> Engine:
    """An engine for these settings; raises :class:`PlansFileError` for a bad plans file."""
    limit_settings = resolve_limits(settings.spool_dir, settings.mode, plans=plans, **given)
    loaded = load_limit_plans(limit_settings.plans, catalog) if limit_settings.plans else _EMPTY
    return Engine(loaded, limit_settings)


def install(new: Engine | None) -> None:
    global engine
    engine = new


def _from_environment() -> Engine:
    global engine
    with _lock:
        if engine is not None:
            return engine
        settings = resolve()
        try:
            engine = make_engine(settings, None)
        except MeterkitError as exc:
            _guard.logger.error("meterkit: limits: %s; every decision follows the fallback policy", exc)
            # broken from the start: another thread may decide with it as soon as it is set
            engine = Engine(_EMPTY, resolve_limits(settings.spool_dir, settings.mode), broken="plans file unusable")
        return engine


def allow(
    meter: str, account: str | None = None, quantity: int = 1, amounts: Mapping[str, Any] | None = None
) -> Decision:
    """Whether ``account`` may use ``quantity`` more of ``meter`` now: a
    :class:`meterkit.Decision` (allowed, remaining, retry_after, reason, fallback, limit).

    ``account`` defaults to the one of :func:`meterkit.context`. ``quantity`` counts
    toward rate limits and toward caps on the meter itself (a count); ``amounts`` gives
    the fields' values (``{"bytes": 4096}``) for caps on a field. No plan or no limit:
    allowed, reason ``"no limit"``. Production mode never raises: an error inside
    meterkit is decided by the fallback policy and counted. Strict mode raises
    ``TypeError`` or ``ValueError`` for a bad argument.
    """
    current = engine or _from_environment()
    if account is None:
        account = current_scope.get().account
        if account is None:
            return NO_ACCOUNT
    if current.strict:
        _check(meter, account, quantity, amounts)
    try:
        # The route of (meter, account) holds while the wall clock is in [lo, hi): the
        # account stays on one plan. The decider does the rest (``_decide``).
        lo, hi, decide, _ = current.routes.get((meter, account), NO_ROUTE)
        now = _time_ns()
        if not lo <= now < hi:
            decide = current.route(meter, account, now)[2]
        return decide(account, quantity, amounts)
    except Exception as exc:  # never raise into the application after setup
        if current.strict:
            raise
        _guard.log_once(("allow", type(exc)), logging.ERROR, "meterkit: error deciding a limit", exc_info=exc)
        return current.fallback(f"internal error ({type(exc).__name__})", None)


def _check(meter: Any, account: Any, quantity: Any, amounts: Any) -> None:
    if not isinstance(meter, str) or not isinstance(account, str):
        raise TypeError("allow(meter, account=...): meter and account must be text")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise ValueError(f"allow(quantity={quantity!r}): quantity must be a whole number of at least 1")
    if amounts is not None and not isinstance(amounts, Mapping):
        raise TypeError("allow(amounts=...) maps field codes to numbers")


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    if engine is not None:
        engine.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
