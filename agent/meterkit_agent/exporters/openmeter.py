"""OpenMeter: CloudEvents in batch JSON, ``POST {base}/api/v1/events``.

===============  =======================================================
``id``           the measurement's ``uid`` (with ``source``: OpenMeter's idempotency key)
``source``       the exporter's ``source`` setting (default ``meterkit``)
``type``         ``types[meter]``, else the meter code
``subject``      ``account``
``time``         ``ts``
``data``         every field by its code: ``{"bytes": 4096, "user": "u1", ...}``
===============  =======================================================

Corrections. OpenMeter has no cancel or amend: events are deduplicated by ``id`` and
``source`` and every event counts, so a correction can only be more events. A reversal of U
goes as an ordinary CloudEvent of U's type and subject, ``id`` the reversal's uid,
``time`` U's ``ts``, its numbers negated; a replacement goes as an ordinary event too.
``correction`` and ``batch`` are not categories, so neither reaches ``data``. What the
reversal does depends on the meter's aggregation (OpenMeter's "Aggregation Types"):

- ``SUM``: U's value and the reversal's sum to zero, in U's window: U is netted out, and a
  replacement counts as itself. This is the one aggregation a reversal corrects.
- ``COUNT``: the reversal is one more event, so the count grows by one instead of
  shrinking; U cannot be uncounted.
- ``UNIQUE_COUNT``: the reversal repeats U's string values, which are counted already;
  nothing changes, and U's value stays counted.
- ``MAX``: a negated value is never the largest (unless all are negative); U's stays.
- ``MIN`` and ``AVG``: the negated value becomes the minimum, or pulls the mean down.
- ``LATEST``: the reversal has U's time, so the latest value at that instant may be U's or
  its negation.

For any of these but ``SUM``, correct the usage in OpenMeter by hand (the reversal is sent
all the same, so every destination receives the same measurements and reconciliation
by uid holds); the ledger applies corrections to every aggregation.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from meterkit._model import CATEGORIES

from ..component import Factory, Rejected, Settings
from .exporterhelper import Encoded, Encoding, IngestExporter, RetryConfig, idempotency_key
from .transport import TlsConfig


class OpenMeterExporterConfig(Settings):
    base_url: str = "https://openmeter.cloud"
    token: SecretStr | None = None
    source: str = "meterkit"  # CloudEvents source: with the uid as id, OpenMeter's idempotency key
    types: dict[str, str] = Field(default_factory=dict)  # meter code -> CloudEvents type (default: the meter code)
    retry: RetryConfig = RetryConfig()
    tls: TlsConfig = TlsConfig()


def cloudevent(m: dict[str, Any], source: str, types: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for category in CATEGORIES:
        data.update(m.get(category) or {})
    return {
        "specversion": "1.0",
        "id": m["uid"],
        "source": source,
        "type": types.get(m["meter"], m["meter"]),
        "subject": m["account"],
        "time": m["ts"],
        "data": data,
    }


class OpenMeterExporter(IngestExporter):
    def __init__(self, name: str, cfg: OpenMeterExporterConfig) -> None:
        super().__init__(name, f"{cfg.base_url.rstrip('/')}/api/v1/events", cfg.retry, tls=cfg.tls)
        self.cfg = cfg
        self.session.headers["Content-Type"] = "application/cloudevents-batch+json"
        if cfg.token is not None:
            self.session.headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        events = [cloudevent(m, self.cfg.source, self.cfg.types) for m in records]
        by_id = {e["id"]: m for e, m in zip(events, records, strict=True)}
        rejected = super().export(events)
        return [Rejected(by_id.get(r.measurement["id"], r.measurement), r.reason, r.detail) for r in rejected]

    def encode(self, chunk: list[Encoded]) -> Encoding:
        body = b"[" + b",".join(data for _, data in chunk) + b"]"
        return body, {"Idempotency-Key": idempotency_key(e["id"] for e, _ in chunk)}


FACTORY = Factory(OpenMeterExporterConfig, OpenMeterExporter)
