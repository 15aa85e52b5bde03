"""Evaluates each meter's derived fields (:func:`meterkit._derive.derive`, the function
``meterkit correct`` computes a replacement's with) and stores the result in the derived
field's category.

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

from meterkit._corrections import is_reversal
from meterkit._derive import NumberOutOfRange, Plan, derive, plan
from meterkit._guard import log_once

from ..component import Factory, Measurement, Processor, Rejected, Settings, catalog_at


class DeriveConfig(Settings):
    catalog: Path | None = None


def derive_processor(cfg: DeriveConfig) -> Processor:
    catalog = catalog_at(cfg.catalog)
    plans: dict[str, Plan] = {}
    if catalog is not None:
        plans = {meter.code: plan(meter) for meter in catalog.meters.values() if meter.derived_fields}

    def process(batch: list[Measurement]) -> tuple[list[Measurement], list[Rejected]]:
        kept: list[Measurement] = []
        rejected: list[Rejected] = []
        for m in batch:
            fields = plans.get(m.get("meter", ""))
            if not fields or is_reversal(m):
                kept.append(m)
                continue
            assert catalog is not None
            meter = catalog.meters[m["meter"]]
            try:
                derived = derive(meter, fields, m)
            except NumberOutOfRange as exc:
                rejected.append(Rejected(m, "invalid:derived_out_of_range", str(exc), "derive"))
                continue
            for code, why in derived.skipped:
                log_once(
                    ("derive", meter.code, code), 30, "meterkit agent: derived field %s.%s %s", meter.code, code, why
                )
            derived.store_into(m)
            kept.append(m)
        return kept, rejected

    return process


FACTORY = Factory(DeriveConfig, lambda _cid, cfg: derive_processor(cfg))
