"""Checks every measurement against the catalog and the wire rules."""

from __future__ import annotations

import time
from pathlib import Path

from meterkit import MeasurementError
from meterkit._model import validate_wire, validation_token

from ..component import Factory, Measurement, Rejected, Settings, catalog_at


class ValidateConfig(Settings):
    catalog: Path | None = None


class ValidateProcessor:
    """Bad measurements are rejected with the reason, for the dead-letter store; none are
    dropped.

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
                rejected.append(Rejected(m, f"invalid:{exc.reason}", str(exc), "validate"))
        return kept, rejected


FACTORY = Factory(ValidateConfig, lambda _cid, cfg: ValidateProcessor(cfg))
