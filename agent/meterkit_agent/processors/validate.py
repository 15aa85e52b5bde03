"""Processors: plain callables from a batch of measurements to (kept, rejected)."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meterkit import Catalog, MeasurementError, load_catalog
from meterkit._expr import ExpressionError, parse
from meterkit._guard import log_once
from meterkit._model import CATEGORIES, NUMERIC_CATEGORIES, validate_wire, validation_token

from .config import DeriveConfig, EnrichConfig, ValidateConfig
from .delivery import Rejected

Measurement = dict[str, Any]
Processor = Callable[[list[Measurement]], tuple[list[Measurement], list[Rejected]]]


@functools.lru_cache(maxsize=8)
def catalog_at(path: Path | None) -> Catalog | None:
    """The catalog at ``path``, loaded once for every component that names it."""
    return load_catalog(path) if path else None


class ValidateProcessor:
    """Checks every measurement against the catalog (and the wire rules). Bad ones are
    rejected with the reason, for the dead-letter store; none are dropped.

    A measurement its writer already validated under the same rules and the same catalog
    (the segment header's ``validated`` equals :attr:`token`) is passed through: checking
    it again could only give the same answer.
    """

    def __init__(self, cfg: ValidateConfig) -> None:
        self.catalog = catalog_at(cfg.catalog)
        self.token = validation_token(self.catalog)

    def __call__(
        self, batch: list[Measurement], trusted: list[bool] | None = None
    ) -> tuple[list[Measurement], list[Rejected]]:
        kept, rejected = [], []
        now = time.time_ns()
        for i, m in enumerate(batch):
            if trusted is not None and trusted[i]:
                kept.append(m)
                continue
            try:
                kept.append(validate_wire(m, self.catalog, now))
            except MeasurementError as exc:
                rejected.append(Rejected(m, f"invalid:{exc.reason}", str(exc)))
        return kept, rejected


def validate_processor(cfg: ValidateConfig) -> ValidateProcessor:
    return ValidateProcessor(cfg)


def derive_processor(cfg: DeriveConfig) -> Processor:
    """Evaluates each meter's derived fields with the SDK's expression engine and stores the
    result in the derived field's category. A calculation that cannot be evaluated (division
    by zero, a type mismatch) leaves that field out and is logged once per meter and field."""
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


def enrich_processor(cfg: EnrichConfig) -> Processor:
    """Adds static values (a deployment, a region) where the measurement has none."""

    def process(batch: list[Measurement]) -> tuple[list[Measurement], list[Rejected]]:
        for m in batch:
            for category, values in cfg.set.items():
                target = m.setdefault(category, {})
                for code, value in values.items():
                    target.setdefault(code, value)
        return batch, []

    return process


def build_processor(cid: str, cfg: Any) -> Processor | None:
    kind = cid.split("/", 1)[0]
    if kind == "validate":
        return validate_processor(cfg)
    if kind == "derive":
        return derive_processor(cfg)
    if kind == "enrich":
        return enrich_processor(cfg)
    return None  # batch configures the delivery worker itself
