"""m3ter's ingest API: ``POST {base}/organizations/{orgId}/measurements`` with a bearer
token, given or obtained by client-credentials exchange at ``{base}/oauth/token`` and
refreshed before it expires (and on a 401)."""

from __future__ import annotations

import base64
import threading
import time

import requests
from pydantic import SecretStr, model_validator

from ..component import Factory, RetryLater, Settings
from .exporterhelper import IngestExporter, RetryConfig, classify, parse_retry_after


class M3terExporterConfig(Settings):
    base_url: str = "https://api.m3ter.com"
    org_id: str
    token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _auth(self) -> M3terExporterConfig:
        if self.token is None and (self.client_id is None or self.client_secret is None):
            raise ValueError("give token, or client_id and client_secret (client-credentials)")
        return self


class M3terExporter(IngestExporter):
    def __init__(self, name: str, cfg: M3terExporterConfig) -> None:
        super().__init__(name, f"{cfg.base_url.rstrip('/')}/organizations/{cfg.org_id}/measurements", cfg.retry)
        self.cfg = cfg
        self._token = cfg.token.get_secret_value() if cfg.token else None
        self._expires_at = float("inf") if cfg.token else 0.0
        self._lock = threading.Lock()

    def _exchange(self) -> None:
        assert self.cfg.client_id is not None and self.cfg.client_secret is not None
        basic = base64.b64encode(f"{self.cfg.client_id}:{self.cfg.client_secret.get_secret_value()}".encode()).decode()
        try:
            response = self.session.post(
                f"{self.cfg.base_url.rstrip('/')}/oauth/token",
                json={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
                timeout=self.timeout,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryLater(f"token exchange: {type(exc).__name__}") from None
        if classify(response.status_code) != "ok":
            # Never echo the answer: it may contain credentials material.
            raise RetryLater(
                f"token exchange answered HTTP {response.status_code}",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        body = response.json()
        self._token = str(body["access_token"])
        # Refresh five minutes early, as m3ter's own client does.
        self._expires_at = time.monotonic() + float(body.get("expires_in", 3600)) - 300

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._exchange()
            return {"Authorization": f"Bearer {self._token}"}

    def on_unauthorized(self) -> bool:
        if self.cfg.client_id is None:
            return False
        with self._lock:
            self._token, self._expires_at = None, 0.0
        return True


FACTORY = Factory(M3terExporterConfig, M3terExporter)
