"""Straight into a ledger database: the embedded default, no HTTP in between."""

from __future__ import annotations

from typing import Any

import sqlalchemy.exc
from pydantic import Field

from meterkit import MeasurementError
from meterkit._model import validate_wire

from ..component import Factory, Rejected, RetryLater, Settings
from ..ledger.store import Ledger
from ..paths import default_ledger_url
from .exporterhelper import short


class LedgerExporterConfig(Settings):
    db: str = Field(default_factory=default_ledger_url)
    org_id: str = "default"


class LedgerExporter:
    def __init__(self, name: str, cfg: LedgerExporterConfig) -> None:
        self.name = name
        self.org = cfg.org_id
        self.ledger = Ledger(cfg.db)
        self.last_answer = ""

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        good, rejected = [], []
        for record in records:
            try:
                good.append(validate_wire(record))
            except MeasurementError as exc:
                rejected.append(Rejected(record, f"rejected_by_backend:{exc.reason}", str(exc)))
        try:
            new, duplicates = self.ledger.ingest(self.org, good)
        except sqlalchemy.exc.OperationalError as exc:
            raise RetryLater(f"ledger database: {short(exc.orig or exc)}") from None
        self.last_answer = f"stored {new}, already stored {duplicates}"
        return rejected

    def shutdown(self) -> None:
        self.ledger.close()


FACTORY = Factory(LedgerExporterConfig, LedgerExporter)
