"""The limits of one plan in ``plans.yaml``: rate limits, caps and thresholds, checked.

::

    limits:
      - {meter: api_calls, rate: 100, per: second, burst: 200}      # scope: host (default)
      - {meter: api_calls, cap: 1000000, period: month, mode: hard, grace_percent: 5}
      - {meter: data_downloaded, field: bytes, cap: 10737418240, period: month, mode: soft}
    thresholds: [80, 100]

The SDK (``_plans``) and the agent's plans reader (``meterkit_agent.billing.planfields``)
both call :func:`check_plan_limits`, so one set of rules decides what a limit means. Every
limit is checked on its own and each problem is reported through ``report`` with its line
and field path (``limits[1].burst``), so one pass names them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from ._model import NUMERIC_CATEGORIES
from ._yaml import LINE_KEY

if TYPE_CHECKING:
    from ._catalog import Catalog

#: ``per`` of a rate limit, in seconds.
PER_SECONDS = {"second": 1, "minute": 60, "hour": 3_600, "day": 86_400}
#: ``period`` of a cap: calendar periods in UTC, as bill periods are.
CAP_PERIODS = ("day", "month", "quarter", "year")
SCOPES = ("host", "process", "global")
MODES = ("hard", "soft")
#: Limits a plan may have; far more than any plan needs.
MAX_LIMITS = 100
#: Largest rate and burst: past a billion a second no counter is a limit any more.
MAX_RATE = 10**9
#: Redis runs Lua 5.1, whose numbers are doubles: a global limit's tick arithmetic must
#: stay below 2**53 to be exact (``_redislimit``).
MAX_LUA_INTEGER = 2**53
_RATE_KEYS = ("meter", "rate", "per", "burst", "scope")
_CAP_KEYS = ("meter", "field", "cap", "period", "mode", "grace_percent")

#: report(reason, message, line, field)
Report = Callable[[str, str, "int | None", str], None]


@dataclass(frozen=True)
class RateLimit:
    """``rate`` units of ``meter`` per ``per``, bursting to ``burst``, shared by ``scope``."""

    plan: str
    index: int
    meter: str
    rate: int
    per: str
    burst: int
    scope: str = "host"

    @property
    def key(self) -> str:
        """Names this limit's state: a changed rate or burst starts from a full bucket."""
        return f"{self.plan}/{self.index}/{self.meter}/{self.rate}/{self.per}/{self.burst}"

    def describe(self) -> str:
        return f"{self.plan}: {self.meter} {self.rate} per {self.per}, burst {self.burst} ({self.scope})"


@dataclass(frozen=True)
class Cap:
    """At most ``cap`` of ``meter`` (its ``field``'s sum, or its count) per calendar ``period``."""

    plan: str
    index: int
    meter: str
    field: str | None
    cap: Decimal
    period: str
    mode: str = "hard"
    grace_percent: Decimal = Decimal(0)

    @property
    def hard_limit(self) -> Decimal:
        """Where a hard cap refuses: the cap plus its grace."""
        return self.cap * (1 + self.grace_percent / 100)

    @property
    def limit(self) -> Decimal:
        """Where the cap is over: a hard cap's :attr:`hard_limit`, a soft cap itself."""
        return self.hard_limit if self.mode == "hard" else self.cap

    def describe(self) -> str:
        what = f"{self.meter}.{self.field}" if self.field else self.meter
        grace = f" + {self.grace_percent}%" if self.grace_percent else ""
        return f"{self.plan}: {what} cap {self.cap}{grace} per {self.period} ({self.mode})"


@dataclass(frozen=True)
class PlanLimits:
    plan: str
    rates: tuple[RateLimit, ...] = ()
    caps: tuple[Cap, ...] = ()
    thresholds: tuple[Decimal, ...] = ()


def _line(value: Any, default: int | None) -> int | None:
    return value.get(LINE_KEY, default) if isinstance(value, dict) else default


def _number(value: Any) -> Decimal | None:
    """A number written in the file (the loader hands floats over as their text)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _whole(value: Any, name: str, error: Callable[[str, str, str], None], maximum: int = MAX_RATE) -> int | None:
    number = _number(value)
    if number is None or number != number.to_integral_value() or not 1 <= number <= maximum:
        error(name, "bad_value", f"{name} must be a whole number from 1 to {maximum:,}, got {value!r:.40}")
        return None
    return int(number)


def check_plan_limits(raw: dict[str, Any], plan: str, report: Report, catalog: Catalog | None = None) -> PlanLimits:
    """The ``limits`` and ``thresholds`` of the plan ``raw`` (code ``plan``). Each problem
    goes to ``report``; the limits without problems are returned."""
    at = _line(raw, None)
    rates: list[RateLimit] = []
    caps: list[Cap] = []
    items = raw.get("limits", [])
    if not isinstance(items, list):
        report("bad_shape", "limits must be a list of rate limits and caps", _line(items, at), "limits")
        items = []
    elif len(items) > MAX_LIMITS:
        report("bad_shape", f"{len(items)} limits; at most {MAX_LIMITS}", at, "limits")
        items = []
    for n, item in enumerate(items):
        line = _line(item, at)
        name = f"limits[{n}]"

        def error(field: str, reason: str, message: str, line: int | None = line, name: str = name) -> None:
            report(reason, message, line, f"{name}.{field}" if field else name)

        limit = _check_limit(item, plan, n, error, catalog)
        if isinstance(limit, RateLimit):
            rates.append(limit)
        elif isinstance(limit, Cap):
            caps.append(limit)
    thresholds = _check_thresholds(raw.get("thresholds"), at, report)
    return PlanLimits(plan, tuple(rates), tuple(caps), thresholds)


def _check_limit(
    item: Any, plan: str, n: int, error: Callable[[str, str, str], None], catalog: Catalog | None
) -> RateLimit | Cap | None:
    if not isinstance(item, dict) or ("rate" in item) == ("cap" in item):
        error("", "bad_shape", "a limit is a mapping with either rate (a rate limit) or cap (a usage cap)")
        return None
    kind, allowed = ("rate limit", _RATE_KEYS) if "rate" in item else ("cap", _CAP_KEYS)
    ok = True
    for key in sorted((k for k in item if k not in (*allowed, LINE_KEY)), key=repr):
        error(str(key), "unknown_key", f"unknown key {key!r:.60}; a {kind} has {', '.join(allowed)}")
        ok = False
    meter = item.get("meter")
    if not isinstance(meter, str) or not meter:
        error("meter", "bad_value", "meter must be a meter code")
        ok = False
    field = item.get("field")
    if field is not None and (not isinstance(field, str) or not field):
        error("field", "bad_value", "field must be a field code")
        ok = False
    if ok and catalog is not None:
        for problem in _catalog_problems(catalog, str(meter), field):
            error("field" if field and "field" in problem else "meter", "not_in_catalog", problem)
            ok = False
    limit = _rate(item, plan, n, error) if "rate" in item else _cap(item, plan, n, error)
    return limit if ok else None


def _catalog_problems(catalog: Catalog, meter: str, field: str | None) -> list[str]:
    found = catalog.meters.get(meter)
    if found is None:
        return [f"meter {meter!r:.80} is not in the catalog {catalog.source}"]
    if field is not None:
        category = found.wire_categories.get(field)
        if category is None:
            return [f"meter {meter!r} has no field {field!r:.80}"]
        if category not in NUMERIC_CATEGORIES:
            return [f"field {field!r} is a {category.upper()} field; a cap sums a MEASURE, INCOME or COST field"]
    return []


def _rate(item: dict[str, Any], plan: str, n: int, error: Callable[[str, str, str], None]) -> RateLimit | None:
    rate = _whole(item.get("rate"), "rate", error)
    per = item.get("per", "second")
    if per not in PER_SECONDS:
        error("per", "bad_value", f"per must be one of {', '.join(PER_SECONDS)}, got {per!r:.40}")
    burst = _whole(item.get("burst"), "burst", error) if "burst" in item else rate
    scope = item.get("scope", "host")
    if scope not in SCOPES:
        error("scope", "bad_value", f"scope must be one of {', '.join(SCOPES)}, got {scope!r:.40}")
    if rate is None or burst is None or per not in PER_SECONDS or scope not in SCOPES:
        return None
    limit = RateLimit(plan, n, str(item["meter"]), rate, str(per), burst, str(scope))
    if scope == "global":
        from ._gcra import Rate  # a leaf module; here so this one stays about the file

        ticks = Rate(rate, PER_SECONDS[str(per)] * 1_000_000, burst).capacity
        if 2 * ticks >= MAX_LUA_INTEGER:
            error(
                "burst",
                "too_large",
                f"burst {burst} at {rate} per {per} needs integers past 2**53 in Redis's Lua;"
                " lower the burst or use a shorter per",
            )
            return None
    return limit


def _cap(item: dict[str, Any], plan: str, n: int, error: Callable[[str, str, str], None]) -> Cap | None:
    cap = _number(item.get("cap"))
    if cap is None or cap <= 0:
        error("cap", "bad_value", f"cap must be a number above zero, got {item.get('cap')!r:.40}")
    period = item.get("period", "month")
    if period not in CAP_PERIODS:
        error("period", "bad_value", f"period must be one of {', '.join(CAP_PERIODS)}, got {period!r:.40}")
    mode = item.get("mode", "hard")
    if mode not in MODES:
        error("mode", "bad_value", f"mode must be hard or soft, got {mode!r:.40}")
    grace = _number(item.get("grace_percent", 0))
    if grace is None or not 0 <= grace <= 1000:
        error(
            "grace_percent", "bad_value", f"grace_percent must be from 0 to 1000, got {item.get('grace_percent')!r:.40}"
        )
    elif grace and mode == "soft":
        error("grace_percent", "bad_value", "grace_percent is for hard caps: a soft cap never refuses")
        grace = None
    if cap is None or cap <= 0 or grace is None or period not in CAP_PERIODS or mode not in MODES:
        return None
    field = item.get("field")
    return Cap(
        plan, n, str(item["meter"]), field if isinstance(field, str) else None, cap, str(period), str(mode), grace
    )


def _check_thresholds(raw: Any, at: int | None, report: Report) -> tuple[Decimal, ...]:
    """Percents of each cap, rising, each above 0 and at most 1000."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        report("bad_shape", "thresholds must be a list of percents, such as [80, 100]", at, "thresholds")
        return ()
    out: list[Decimal] = []
    for k, value in enumerate(raw):
        number = _number(value)
        if number is None or not 0 < number <= 1000:
            report(
                "bad_value",
                f"a threshold is a percent above 0, at most 1000, got {value!r:.40}",
                at,
                f"thresholds[{k}]",
            )
            return ()
        if out and number <= out[-1]:
            report("bad_value", f"thresholds must rise: {value} follows {out[-1]}", at, f"thresholds[{k}]")
            return ()
        out.append(number)
    return tuple(out)
