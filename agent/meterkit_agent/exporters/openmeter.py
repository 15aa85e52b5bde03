"""OpenMeter: CloudEvents in batch JSON, ``POST {base}/api/v1/events``.

===============  =======================================================
``id``           the measurement's ``uid`` (with ``source``: OpenMeter's idempotency key)
``source``       the exporter's ``source`` setting (default ``meterkit``)
``type``         ``types[meter]``, else the meter code
``subject``      ``account``
``time``         ``ts``
``data``         every field by its code: ``{"bytes": 4096, "user": "u1", ...}``
===============  =======================================================
"""

from __future__ import annotations

from typing import Any

import requests
from pydantic import Field, SecretStr

from meterkit._model import CATEGORIES

from ..component import Factory, Rejected, Settings
from .exporterhelper import Encoded, IngestExporter, RetryConfig, idempotency_key


class OpenMeterExporterConfig(Settings):
    base_url: str = "https://openmeter.cloud"
    token: SecretStr | None = None
    source: str = "meterkit"  # CloudEvents source: with the uid as id, OpenMeter's idempotency key
    types: dict[str, str] = Field(default_factory=dict)  # meter code -> CloudEvents type (default: the meter code)
    retry: RetryConfig = RetryConfig()


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
        super().__init__(name, f"{cfg.base_url.rstrip('/')}/api/v1/events", cfg.retry)
        self.cfg = cfg
        self.session.headers["Content-Type"] = "application/cloudevents-batch+json"
        if cfg.token is not None:
            self.session.headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        events = [cloudevent(m, self.cfg.source, self.cfg.types) for m in records]
        by_id = {e["id"]: m for e, m in zip(events, records, strict=True)}
        rejected = super().export(events)
        return [Rejected(by_id.get(r.measurement["id"], r.measurement), r.reason, r.detail) for r in rejected]

    def _post(self, chunk: list[Encoded]) -> requests.Response:
        body = b"[" + b",".join(data for _, data in chunk) + b"]"
        return self._send(body, {"Idempotency-Key": idempotency_key(e["id"] for e, _ in chunk)})


FACTORY = Factory(OpenMeterExporterConfig, OpenMeterExporter)
