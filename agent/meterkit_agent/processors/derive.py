"""Evaluates each meter's derived fields with the SDK's expression engine and stores the
result in the derived field's category."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from meterkit._expr import ExpressionError, parse
from meterkit._guard import log_once
from meterkit._model import CATEGORIES, NUMERIC_CATEGORIES

from ..component import Factory, Measurement, Processor, Rejected, Settings, catalog_at


class DeriveConfig(Settings):
    catalog: Path | None = None


def derive_processor(cfg: DeriveConfig) -> Processor:
    """A calculation that cannot be evaluated (division by zero, a type mismatch) leaves
    that field out and is logged once per meter and field."""
    catalog = catalog_at(cfg.catalog)
    plans: dict[str, list[tuple[str, str, Any]]] = {}
    if catalog is not None:
        for meter in catalog.meters.values():
            plans[meter.code] = [(d.code, d.category.value, parse(d.calculation)) for d in meter.derived_fields]

    def process(batch: list[Measurement]) -> tuple[list[Measurement], list[Rejected]]:
        for m in batch:
            plan = plans.get(m.get("meter", ""))
            if not plan:
                continue
            assert catalog is not None
            env: dict[str, Any] = dict(catalog.meters[m["meter"]].custom_fields)
            for values in (m.get(c) for c in CATEGORIES):
                if values:
                    env.update(values)
            env["ts"], env["ets"] = m.get("ts"), m.get("ets")
            for code, category, expr in plan:
                try:
                    value = expr.evaluate(env)
                except ExpressionError as exc:
                    log_once(
                        ("derive", m["meter"], code),
                        30,
                        "meterkit agent: derived field %s.%s not computed: %s",
                        m["meter"],
                        code,
                        exc,
                    )
                    continue
                if value is None:
                    continue
                if category in NUMERIC_CATEGORIES:
                    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                        log_once(
                            ("derive-type", m["meter"], code),
                            30,
                            "meterkit agent: derived field %s.%s gave %r, not a number",
                            m["meter"],
                            code,
                            value,
                        )
                        continue
                else:
                    value = str(value)
                m.setdefault(category, {})[code] = value
        return batch, []

    return process


FACTORY = Factory(DeriveConfig, lambda _cid, cfg: derive_processor(cfg))
