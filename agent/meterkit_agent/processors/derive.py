"""Evaluates each meter's derived fields with the SDK's expression engine and stores the
result in the derived field's category.

A result no backend can hold exactly (an integer past 64 bits, an infinite float: the
engine's :class:`NumberOutOfRange`) makes that measurement an error, rejected alone with
``invalid:derived_out_of_range`` for the dead-letter store; its batch goes on. A
calculation that cannot be evaluated for other reasons (division by zero, a type
mismatch, a null) leaves that field out and is logged once per meter and field.

A correction's reversal is not derived again: it carries the original's derived values
negated (:func:`meterkit._corrections.reversal`), which cancel them exactly, where a
calculation run on negated inputs need not (rounding a negative number, a MAX of them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meterkit._corrections import REVERSAL
from meterkit._expr import ExpressionError, NumberOutOfRange, parse
from meterkit._guard import log_once
from meterkit._model import CATEGORIES, NUMERIC_CATEGORIES

from ..component import Factory, Measurement, Processor, Rejected, Settings, catalog_at


class DeriveConfig(Settings):
    catalog: Path | None = None


def derive_processor(cfg: DeriveConfig) -> Processor:
    catalog = catalog_at(cfg.catalog)
    plans: dict[str, list[tuple[str, str, Any]]] = {}
    if catalog is not None:
        for meter in catalog.meters.values():
            plans[meter.code] = [(d.code, d.category.value, parse(d.calculation)) for d in meter.derived_fields]

    def process(batch: list[Measurement]) -> tuple[list[Measurement], list[Rejected]]:
        kept: list[Measurement] = []
        rejected: list[Rejected] = []
        for m in batch:
            plan = plans.get(m.get("meter", ""))
            if not plan or _is_reversal(m):
                kept.append(m)
                continue
            try:
                derive(m, plan)
            except NumberOutOfRange as exc:
                rejected.append(Rejected(m, "invalid:derived_out_of_range", str(exc), "derive"))
            else:
                kept.append(m)
        return kept, rejected

    def derive(m: Measurement, plan: list[tuple[str, str, Any]]) -> None:
        """Compute every derived field, then store them all: a measurement rejected for
        one of them is dead-lettered as it arrived."""
        assert catalog is not None
        env: dict[str, Any] = dict(catalog.meters[m["meter"]].custom_fields)
        for values in (m.get(c) for c in CATEGORIES):
            if values:
                env.update(values)
        env["ts"], env["ets"] = m.get("ts"), m.get("ets")
        results: list[tuple[str, str, Any]] = []
        for code, category, expr in plan:
            try:
                value = expr.evaluate(env)
            except NumberOutOfRange as exc:
                raise NumberOutOfRange(f"derived field {m['meter']}.{code}: {exc}") from None
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
                if isinstance(value, bool) or not isinstance(value, int | float):
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
            results.append((category, code, value))
        for category, code, value in results:
            m.setdefault(category, {})[code] = value

    return process


FACTORY = Factory(DeriveConfig, lambda _cid, cfg: derive_processor(cfg))


def _is_reversal(m: Measurement) -> bool:
    correction = m.get("correction")
    return type(correction) is dict and correction.get("kind") == REVERSAL
