"""Straight into a ledger database: the embedded default, no HTTP in between.

The ledger's answer goes into ``last_answer`` (the audit journal records it per batch):
how many were stored, already stored, and re-sent with different content. A conflicting
re-send is acknowledged (the first content stored for a uid stands) and logged as a
warning, since the measurement the application sent is not the one that will be billed.
The audit journal's head (``journal_head``, set by the pipeline) is recorded as the
journal's anchor after each ingest, as the ledger's API does for the header an HTTP
exporter carries (:mod:`..ledger.digests`). When the pipeline's last processor is the
validate processor (``validated_token`` set), the records it passes on have been checked
against the wire rules and the catalog already and are not checked again here.

Corrections. The ledger knows ``correction`` and ``batch`` (it voids a reversed
measurement and lists a backfill by batch), so measurements reach it with both keys as
they are; the wire rules checked here accept them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy.exc
from pydantic import Field

from meterkit import MeasurementError
from meterkit._model import validate_wire

from ..component import Factory, Rejected, RetryLater, Settings
from ..ledger.digests import Digests
from ..ledger.store import Ledger
from ..paths import default_ledger_url
from .exporterhelper import short

logger = logging.getLogger(__name__)


class LedgerExporterConfig(Settings):
    db: str = Field(default_factory=default_ledger_url)
    org_id: str = "default"


class LedgerExporter:
    def __init__(self, name: str, cfg: LedgerExporterConfig) -> None:
        self.name = name
        self.org = cfg.org_id
        self.ledger = Ledger(cfg.db)
        self.last_answer = ""
        #: set by the pipeline: (journal id, "<seq>:<hash>") to anchor the journal with
        self.journal_head: Callable[[], tuple[str, str] | None] | None = None
        #: set by the pipeline when its last processor validates every record it passes on
        #: (that processor's token): what it checked includes the wire rules checked here
        self.validated_token: str | None = None
        self._digests: Digests | None = None

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        good, rejected = (records, []) if self.validated_token is not None else _checked(records)
        try:
            ingested = self.ledger.ingest(self.org, good)
        except sqlalchemy.exc.OperationalError as exc:
            raise RetryLater(f"ledger database: {short(exc.orig or exc)}") from None
        self.last_answer = ingested.summary()
        # a measurement the ledger refused alone (a reversal that does not match what it
        # reverses) is dead-lettered with the ledger's reason; the rest are stored
        rejected += [Rejected(good[r.index], f"rejected_by_backend:{r.reason}", r.message) for r in ingested.refused]
        if ingested.conflicts:
            logger.warning("meterkit agent: %s: %s", self.name, self.last_answer)
        head = self.journal_head() if self.journal_head is not None else None
        if head is not None:
            try:
                self._digests = self._digests or Digests(self.ledger)
                self._digests.record_anchor(self.org, *head)
            except sqlalchemy.exc.SQLAlchemyError as exc:  # stored all the same; the next batch anchors
                logger.warning("meterkit agent: %s: could not record the journal anchor: %s", self.name, short(exc))
        return rejected

    def shutdown(self) -> None:
        self.ledger.close()


def _checked(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """The wire rules, as the ledger's API applies them to a request it cannot trust."""
    good, rejected = [], []
    for record in records:
        try:
            good.append(validate_wire(record))
        except MeasurementError as exc:
            rejected.append(Rejected(record, f"rejected_by_backend:{exc.reason}", str(exc)))
    return good, rejected


FACTORY = Factory(LedgerExporterConfig, LedgerExporter)
