"""The batch processor: how many measurements, how many bytes and how long the delivery
worker gathers before a batch goes out. It builds no callable; the pipeline's worker is
configured by it, and one exporter request never exceeds its limits."""

from __future__ import annotations

from pydantic import Field

from ..component import Factory, Settings


class BatchConfig(Settings):
    # m3ter's ingest limits: 1,000 measurements and 512,000 bytes per request.
    max_measurements: int = Field(1000, gt=0, le=1000)
    max_bytes: int = Field(500_000, gt=1000, le=512_000)
    timeout_millis: int = Field(1000, gt=0)


FACTORY = Factory(BatchConfig, lambda _cid, _cfg: None)
