"""Any HTTP backend taking ``{"measurements": [...]}`` JSON, with headers of your choice.

Corrections. Measurements go as the spool holds them, ``correction`` and ``batch``
included: the backend behind this exporter is most often a meterkit ledger, which applies
them; a backend that does not know them should ignore them or refuse them with a 4xx,
which dead-letters those measurements alone.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from ..component import Factory, Settings
from .exporterhelper import IngestExporter, RetryConfig
from .transport import TlsConfig


class HttpExporterConfig(Settings):
    url: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    retry: RetryConfig = RetryConfig()
    tls: TlsConfig = TlsConfig()


class HttpExporter(IngestExporter):
    def __init__(self, name: str, cfg: HttpExporterConfig) -> None:
        super().__init__(name, cfg.url, cfg.retry, tls=cfg.tls)
        self._headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}

    def headers(self) -> dict[str, str]:
        return self._headers


FACTORY = Factory(HttpExporterConfig, HttpExporter)
