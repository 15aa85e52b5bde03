"""Adds static values (a deployment, a region) where the measurement has none."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..component import Factory, Measurement, Processor, Rejected, Settings


class EnrichConfig(Settings):
    set: dict[Literal["who", "what", "where", "other", "metadata"], dict[str, str]] = Field(default_factory=dict)


def enrich_processor(cfg: EnrichConfig) -> Processor:
    def process(batch: list[Measurement]) -> tuple[list[Measurement], list[Rejected]]:
        for m in batch:
            for category, values in cfg.set.items():
                target = m.setdefault(category, {})
                for code, value in values.items():
                    target.setdefault(code, value)
        return batch, []

    return process


FACTORY = Factory(EnrichConfig, lambda _cid, cfg: enrich_processor(cfg))
