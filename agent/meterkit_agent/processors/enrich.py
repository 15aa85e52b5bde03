"""Adds static values (a deployment, a region) where the measurement has none.

Only fields the catalog declares leave the application (``docs/privacy.md``), and enrich
is no way around that: given the catalog (``catalog:``, the validate processor's), a
field no meter declares in that category, or one the catalog pseudonymizes or drops, is
a configuration error that names it; and a value is added only to measurements of the
meters that declare it there. Without a catalog nothing says what is declared (as for
the validate processor without one): the values are added to every measurement, and the
agent says so once when it starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from meterkit import Catalog
from meterkit._guard import log_once

from ..component import Factory, Measurement, Processor, Rejected, Settings, catalog_at

TextCategory = Literal["who", "what", "where", "other", "metadata"]


class EnrichConfig(Settings):
    set: dict[TextCategory, dict[str, str]] = Field(default_factory=dict)
    catalog: Path | None = None

    @model_validator(mode="after")
    def _declared(self) -> EnrichConfig:
        catalog = catalog_at(self.catalog) if self.catalog else None
        if catalog is not None:
            problems = undeclared(self.set, catalog)
            if problems:
                raise ValueError("enrich cannot add what the catalog does not let leave: " + "; ".join(problems))
        return self


def undeclared(values: dict[TextCategory, dict[str, str]], catalog: Catalog) -> list[str]:
    """Why each field of ``values`` may not be added: declared by no meter in that category,
    or pseudonymized or dropped by the catalog (a static value would leave as it is)."""
    problems = []
    for category, fields in values.items():
        for code in fields:
            declaring = [
                f for m in catalog.meters.values() for f in m.data_fields if f.code == code and f.category == category
            ]
            if not declaring:
                problems.append(f"{category}.{code} is declared by no meter of {catalog.source}")
            elif any(f.privacy in ("pseudonymize", "drop") for f in declaring):
                problems.append(f"{category}.{code} is privacy: pseudonymize or drop in {catalog.source}")
    return problems


def enrich_processor(cfg: EnrichConfig) -> Processor:
    catalog = catalog_at(cfg.catalog) if cfg.catalog else None
    # meter -> the values it declares, by category (with a catalog); None: every meter
    plans: dict[str, dict[str, dict[str, str]]] | None = None
    if catalog is not None:
        plans = {}
        for code, meter in catalog.meters.items():
            declared = meter.field_categories
            plans[code] = {
                category: kept
                for category, values in cfg.set.items()
                if (kept := {k: v for k, v in values.items() if declared.get(k) == category})
            }
    elif cfg.set:
        log_once(
            ("enrich", "no catalog"),
            logging.WARNING,
            "enrich has no catalog: it cannot check that the fields it adds are declared; give it catalog:",
        )
    everything: dict[str, dict[str, str]] = {str(k): v for k, v in cfg.set.items()}

    def process(batch: list[Measurement]) -> tuple[list[Measurement], list[Rejected]]:
        for m in batch:
            adds = everything if plans is None else plans.get(m.get("meter"), {})  # type: ignore[arg-type]
            for category, values in adds.items():
                target = m.setdefault(category, {})
                for code, value in values.items():
                    target.setdefault(code, value)
        return batch, []

    return process


FACTORY = Factory(EnrichConfig, lambda _cid, cfg: enrich_processor(cfg))
