"""Derived fields: a meter's calculations (m3ter's Calculation Engine syntax, evaluated by
:mod:`._expr`) run on a measurement's data fields.

One function, :func:`derive`, for everyone who computes them: the agent's ``derive``
processor, and ``meterkit correct``, which writes a replacement with the derived values
the agent would compute from its amended data fields (a replacement delivered through an
agent that does not run ``derive`` must not lose them). A value no backend can hold
exactly (an integer past 64 bits, an infinite float) raises :class:`NumberOutOfRange`
naming the meter and field; a calculation that cannot be evaluated otherwise (division by
zero, a type mismatch, a null) leaves the field out and says why in ``skipped``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._catalog import Meter
from ._expr import Expression, ExpressionError, NumberOutOfRange, parse
from ._model import CATEGORIES, NUMERIC_CATEGORIES

#: A meter's derived fields, parsed once: (code, category, expression) each.
Plan = tuple[tuple[str, str, Expression], ...]


def plan(meter: Meter) -> Plan:
    """``meter``'s derived fields ready to evaluate (the catalog parsed them when it loaded)."""
    return tuple((d.code, d.category.value, parse(d.calculation)) for d in meter.derived_fields)


@dataclass
class Derived:
    """What :func:`derive` computed: ``values`` (category, code, value) to store, and
    ``skipped`` (code, why) for the fields it left out."""

    values: list[tuple[str, str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def store_into(self, measurement: dict[str, Any]) -> None:
        """Put every computed value into its category of ``measurement`` (in place)."""
        for category, code, value in self.values:
            measurement.setdefault(category, {})[code] = value


def derive(meter: Meter, fields: Plan, measurement: Mapping[str, Any]) -> Derived:
    """Evaluate ``fields`` (:func:`plan` of ``meter``) on ``measurement``: every value is
    computed before any is stored, so a caller that refuses the measurement for one of them
    still has it as it arrived. Raises :class:`NumberOutOfRange` naming the field."""
    env: dict[str, Any] = dict(meter.custom_fields)
    for values in (measurement.get(c) for c in CATEGORIES):
        if values:
            env.update(values)
    env["ts"], env["ets"] = measurement.get("ts"), measurement.get("ets")
    out = Derived()
    for code, category, expr in fields:
        try:
            value = expr.evaluate(env)
        except NumberOutOfRange as exc:
            raise NumberOutOfRange(f"derived field {meter.code}.{code}: {exc}") from None
        except ExpressionError as exc:
            out.skipped.append((code, f"not computed: {exc}"))
            continue
        if value is None:
            continue
        if category in NUMERIC_CATEGORIES:
            if isinstance(value, bool) or not isinstance(value, int | float):
                out.skipped.append((code, f"gave {value!r:.60}, not a number"))
                continue
        else:
            value = str(value)
        out.values.append((category, code, value))
    return out


__all__ = ["Derived", "NumberOutOfRange", "Plan", "derive", "plan"]
