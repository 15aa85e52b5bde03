"""Checking one plan of ``plans.yaml``: its keys, its pricing lines, their bands, and
(with a meter catalog) what each aggregation reads. Each plan, pricing line and band is
checked on its own and every problem is reported, so a bad band hides nothing else."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from meterkit._model import NUMERIC_CATEGORIES
from meterkit._planlimits import check_plan_limits
from meterkit._yaml import LINE_KEY

from .errors import PlanProblem
from .model import ADDITIVE_FUNCTIONS, FUNCTIONS, NUMERIC_FUNCTIONS, ROUNDINGS, Aggregation, Band, Plan, PricingLine
from .money import decimal_from_text, places
from .periods import BILL_PERIODS

if TYPE_CHECKING:
    from meterkit import Catalog

#: a plan code: as m3ter's codes, 1-80 letters, digits or _$.:- characters
PLAN_CODE_RE = re.compile(r"[A-Za-z0-9_$.:-]{1,80}\Z")
#: quantity_per_unit's range, as the ledger's: outside it a typo is likelier than a price
MIN_PER_UNIT, MAX_PER_UNIT = Decimal("1e-9"), Decimal("1e18")
#: bands a pricing line may have; m3ter's pricing editor shows a handful
MAX_BANDS = 100
# limits and thresholds are checked by the SDK's rules (meterkit._planlimits), the ones
# the application decides by: one reading of a limit, not two
_PLAN_KEYS = (
    "code",
    "bill_period",
    "standing_charge",
    "minimum_spend",
    "pricing",
    "limits",
    "thresholds",
    "spend_thresholds",
)
_LINE_KEYS = ("aggregation", "quantity_per_unit", "rounding", "cumulative", "tiers_span_plan", "bands", "description")
_BAND_KEYS = ("lower_limit", "unit_price", "fixed_price")

Error = Callable[[str, str], None]


class Checker:
    """Collects problems for one file; knows the currency's minor units once read."""

    def __init__(self, file: str | None, catalog: Catalog | None) -> None:
        self.file, self.catalog = file, catalog
        self.problems: list[PlanProblem] = []
        self.minor_units: int | None = None

    def report(
        self,
        reason: str,
        message: str,
        line: int | None,
        *,
        plan: str | None = None,
        account: str | None = None,
        field: str | None = None,
    ) -> None:
        self.problems.append(PlanProblem(reason, message, self.file, line, plan, account, field))

    def money(
        self,
        value: Any,
        error: Error,
        *,
        positive: bool = False,
        any_places: bool = False,
        default: Decimal | None = None,
    ) -> Decimal | None:
        """An amount: a decimal, not negative (``positive``: above zero), and unless
        ``any_places`` (a unit price) with no more decimals than the currency has."""
        if value is None and default is not None:
            return default
        try:
            amount = decimal_from_text(value)
        except ValueError as exc:
            error("bad_money", str(exc))
            return None
        if amount < 0 or (positive and amount == 0):
            error("bad_money", f"{value} must be {'above' if positive else 'at least'} zero")
            return None
        if not any_places and self.minor_units is not None and places(amount) > self.minor_units:
            error("bad_money", f"{value} has more decimals than the currency's {self.minor_units}")
            return None
        return amount


def _line(value: Any, default: int | None = None) -> int | None:
    return value.get(LINE_KEY, default) if isinstance(value, dict) else default


def _unknown_keys(raw: dict[str, Any], allowed: tuple[str, ...], what: str, error: Error) -> None:
    for key in sorted((k for k in raw if k not in (*allowed, LINE_KEY)), key=repr):
        error("unknown_key", f"unknown key {key!r:.60}; {what} has {', '.join(allowed)}")


def check_plan(raw: Any, index: int, c: Checker) -> Plan | None:
    """One plan, or None after reporting each of its problems."""
    at = _line(raw)
    code = raw.get("code") if isinstance(raw, dict) else None
    label = code if isinstance(code, str) else f"#{index + 1}"

    def error_at(line: int | None, field: str | None) -> Error:
        def error(reason: str, message: str) -> None:
            c.report(reason, message, line, plan=label, field=field)

        return error

    if not isinstance(raw, dict):
        error_at(at, None)("bad_shape", "a plan is a mapping with code, bill_period, pricing, ...")
        return None
    before = len(c.problems)
    _unknown_keys(raw, _PLAN_KEYS, "a plan", error_at(at, None))
    if not isinstance(code, str) or not PLAN_CODE_RE.match(code):
        error_at(at, "code")("bad_code", "a plan code is 1-80 letters, digits or _$.:- characters")
    bill_period = raw.get("bill_period")
    if bill_period not in BILL_PERIODS:
        error_at(at, "bill_period")(
            "bad_value", f"bill_period must be one of {', '.join(BILL_PERIODS)}, got {bill_period!r:.40}"
        )
    standing = c.money(raw.get("standing_charge"), error_at(at, "standing_charge"), default=Decimal(0))
    minimum = c.money(raw.get("minimum_spend"), error_at(at, "minimum_spend"), default=Decimal(0))
    raw_pricing = raw.get("pricing", [])
    if not isinstance(raw_pricing, list):
        error_at(at, "pricing")("bad_shape", "pricing must be a list of pricing lines")
        raw_pricing = []
    pricing = [_check_line(item, n, c, error_at) for n, item in enumerate(raw_pricing)]
    limits = check_plan_limits(
        raw, label, lambda reason, text, line, field: error_at(line, field)(reason, text), c.catalog
    )
    spend = _check_spend(
        raw.get("spend_thresholds"), c, at, error_at, max(standing or Decimal(0), minimum or Decimal(0))
    )
    if len(c.problems) > before or standing is None or minimum is None:
        return None
    assert isinstance(code, str) and isinstance(bill_period, str)
    return Plan(code, bill_period, standing, minimum, tuple(p for p in pricing if p is not None), limits, spend)


ErrorAt = Callable[[int | None, str | None], Error]


def _check_spend(raw: Any, c: Checker, at: int | None, error_at: ErrorAt, floor: Decimal) -> tuple[Decimal, ...]:
    """``spend_thresholds``: amounts of the bill period's total, exact, rising, each above
    ``floor`` (the standing charge and the minimum spend, which every period's bill
    reaches as it starts: a level at or below them would notify every period, always)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        error_at(_line(raw, at), "spend_thresholds")(
            "bad_shape", 'spend_thresholds must be a list of amounts, such as ["500.00", "1000.00"]'
        )
        return ()
    out: list[Decimal] = []
    for k, value in enumerate(raw):
        error = error_at(at, f"spend_thresholds[{k}]")
        amount = c.money(value, error, positive=True)
        if amount is None:
            return ()
        if amount <= floor:
            error(
                "bad_value",
                f"{value} is not above the plan's standing charge and minimum spend ({floor}):"
                " every bill period would reach it as it starts",
            )
            return ()
        if out and amount <= out[-1]:
            error("bad_value", f"spend_thresholds must rise: {value} follows {out[-1]}")
            return ()
        out.append(amount)
    return tuple(out)


def _check_line(raw: Any, n: int, c: Checker, error_at: ErrorAt) -> PricingLine | None:
    name = f"pricing[{n}]"
    at = _line(raw)
    if not isinstance(raw, dict):
        error_at(at, name)("bad_shape", "a pricing line is a mapping with aggregation and bands")
        return None
    _unknown_keys(raw, _LINE_KEYS, "a pricing line", error_at(at, name))
    aggregation = _check_aggregation(
        raw.get("aggregation"), c, error_at(_line(raw.get("aggregation"), at), f"{name}.aggregation")
    )
    unit = _per_unit(raw.get("quantity_per_unit", 1), error_at(at, f"{name}.quantity_per_unit"))
    rounding = raw.get("rounding", "NONE")
    if rounding not in ROUNDINGS:
        error_at(at, f"{name}.rounding")(
            "bad_value", f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r:.40}"
        )
    flags = {}
    for key, default in (("cumulative", True), ("tiers_span_plan", False)):
        flags[key] = raw.get(key, default)
        if not isinstance(flags[key], bool):
            error_at(at, f"{name}.{key}")("bad_value", f"{key} must be true or false")
    if flags["tiers_span_plan"] is True and aggregation is not None and aggregation.function not in ADDITIVE_FUNCTIONS:
        error_at(at, f"{name}.tiers_span_plan")(
            "bad_value",
            f"tiers_span_plan counts usage since the plan was attached, which only SUM and COUNT"
            f" can add up; {aggregation.function} over a plan's life is not the sum of its periods",
        )
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        error_at(at, f"{name}.description")("bad_value", "description must be text")
    bands = _check_bands(raw.get("bands"), c, at, name, error_at)
    if aggregation is None or unit is None or bands is None or rounding not in ROUNDINGS:
        return None
    if not all(isinstance(v, bool) for v in flags.values()) or not isinstance(description, str | None):
        return None
    return PricingLine(
        aggregation, bands, unit, str(rounding), bool(flags["cumulative"]), bool(flags["tiers_span_plan"]), description
    )


def _check_aggregation(raw: Any, c: Checker, error: Error) -> Aggregation | None:
    if not isinstance(raw, dict):
        error("bad_shape", "aggregation is a mapping {meter, field, function}")
        return None
    _unknown_keys(raw, ("meter", "field", "function"), "an aggregation", error)
    meter, field, function = raw.get("meter"), raw.get("field"), raw.get("function")
    ok = True
    if not isinstance(meter, str) or not meter:
        error("bad_value", "aggregation.meter must be a meter code")
        ok = False
    if function not in FUNCTIONS:
        error("bad_value", f"aggregation.function must be one of {', '.join(FUNCTIONS)}, got {function!r:.40}")
        ok = False
    if field is None and function != "COUNT":
        error("bad_value", f"{function} needs aggregation.field" if function in FUNCTIONS else "field is missing")
        ok = False
    elif field is not None and (not isinstance(field, str) or not field):
        error("bad_value", "aggregation.field must be a field code")
        ok = False
    if not ok:
        return None
    assert isinstance(meter, str) and isinstance(function, str)
    aggregation = Aggregation(meter, field, function)
    if c.catalog is not None:
        for problem in catalog_problems(aggregation, c.catalog):
            error("not_in_catalog", problem)
            ok = False
    return aggregation if ok else None


def catalog_problems(aggregation: Aggregation, catalog: Catalog) -> list[str]:
    """What ``aggregation`` reads that ``catalog`` does not have, or has of the wrong kind."""
    meter = catalog.meters.get(aggregation.meter)
    if meter is None:
        return [f"meter {aggregation.meter!r:.80} is not in the catalog {catalog.source}"]
    if aggregation.field is None:
        return []
    category = meter.wire_categories.get(aggregation.field)
    if category is None:
        return [f"meter {aggregation.meter!r} has no field {aggregation.field!r:.80}"]
    if aggregation.function in NUMERIC_FUNCTIONS and category not in NUMERIC_CATEGORIES:
        return [
            f"{aggregation.field!r} is a {category.upper()} field of meter {aggregation.meter!r};"
            f" {aggregation.function} needs a MEASURE, INCOME or COST field"
        ]
    return []


def _per_unit(value: Any, error: Error) -> Decimal | None:
    try:
        unit = decimal_from_text(value)
    except ValueError as exc:
        error("bad_value", str(exc))
        return None
    if not MIN_PER_UNIT <= unit <= MAX_PER_UNIT:
        error("bad_value", f"quantity_per_unit is {value}; it must be from 1e-9 to 1e18")
        return None
    return unit


def _check_bands(raw: Any, c: Checker, at: int | None, name: str, error_at: ErrorAt) -> tuple[Band, ...] | None:
    if not isinstance(raw, list) or not raw:
        error_at(_line(raw, at), f"{name}.bands")("bad_shape", "bands must be a list of at least one band")
        return None
    if len(raw) > MAX_BANDS:
        error_at(at, f"{name}.bands")("bad_shape", f"{len(raw)} bands; at most {MAX_BANDS}")
        return None
    bands: list[Band | None] = []
    for k, item in enumerate(raw):
        where = f"{name}.bands[{k}]"
        line = _line(item, at)
        if not isinstance(item, dict):
            error_at(line, where)("bad_shape", "a band is a mapping {lower_limit, unit_price, fixed_price?}")
            bands.append(None)
            continue
        _unknown_keys(item, _BAND_KEYS, "a band", error_at(line, where))
        lower = _lower_limit(item.get("lower_limit"), error_at(line, f"{where}.lower_limit"))
        price = c.money(item.get("unit_price"), error_at(line, f"{where}.unit_price"), any_places=True)
        fixed = c.money(item.get("fixed_price"), error_at(line, f"{where}.fixed_price"), default=Decimal(0))
        ok = lower is not None and price is not None and fixed is not None
        bands.append(Band(lower, price, fixed) if ok else None)  # type: ignore[arg-type] # checked just above
    if any(b is None for b in bands):
        return None
    checked = [b for b in bands if b is not None]
    if checked[0].lower_limit != 0:
        error_at(_line(raw[0], at), f"{name}.bands[0].lower_limit")(
            "bad_band", "the first band's lower_limit must be 0, so every quantity has a price"
        )
        return None
    for k in range(1, len(checked)):
        if checked[k].lower_limit <= checked[k - 1].lower_limit:
            error_at(_line(raw[k], at), f"{name}.bands[{k}].lower_limit")(
                "bad_band",
                f"lower_limit {checked[k].lower_limit} must be above the previous band's {checked[k - 1].lower_limit}",
            )
            return None
    return tuple(checked)


def _lower_limit(value: Any, error: Error) -> Decimal | None:
    try:
        lower = decimal_from_text(value)
    except ValueError as exc:
        error("bad_band", f"lower_limit: {exc}")
        return None
    if lower < 0:
        error("bad_band", f"lower_limit {value} must be at least zero")
        return None
    return lower
