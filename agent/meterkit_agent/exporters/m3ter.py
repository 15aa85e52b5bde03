"""m3ter's ingest API: ``POST .../organizations/{orgId}/measurements`` with a bearer
token, given or obtained by client-credentials exchange at ``.../oauth/token`` and
refreshed before it expires (and on a 401).

m3ter serves the two on different hosts: measurements on ``https://ingest.m3ter.com``,
tokens (and the rest of its API) on ``https://api.m3ter.com``. A configured ``base_url``
(a ledger, a staging organisation) replaces both, which is the official ``m3ter`` client's
rule for ``usage.submit``. One departure: ``base_url: https://api.m3ter.com``, as older
configurations spelled m3ter out, means m3ter's own hosts too; the official client would
take it literally and post measurements to the API host instead of the ingest host.

Corrections. m3ter corrects usage by more usage: its ingest takes "positive or negative
usage data amounts" with a past ``ts`` "to correct and reconcile earlier billing
anomalies" (m3ter's guide "Submitting Usage Data Adjustments Using Timestamp", and the
official client's ``usage.submit``). So a reversal goes as an ordinary measurement, its
numbers negated and its ``ts`` the original's, which nets the original out of every SUM;
a replacement goes as an ordinary measurement too. For m3ter's other aggregations the
reversal is one more measurement like any (a COUNT grows by one, a MAX keeps the
original's value): ingest offers nothing else, and the ledger is where those are voided.
They go in the order the spool holds them, which is the order the correction wrote them:
the reversal, then the replacement. m3ter's measurement schema (``MeasurementRequest`` in
its API, as the official client types it) has no ``correction`` or ``batch``, and whether
its ingest refuses or ignores a key it does not know is not documented, so both are
stripped from what m3ter's own hosts receive; the spool, the journal and any dead letter
keep them. A ``base_url`` elsewhere (a meterkit ledger speaking m3ter's API) gets them as
they are, since the ledger voids reversals and lists backfills by them, and stores what
the journal hashed (``send_extensions`` says otherwise). Requests, chunks and
``Idempotency-Key`` are as for any batch (the uids are unchanged).
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import SecretStr, field_validator, model_validator

from ..component import Factory, Misconfigured, Rejected, RetryLater, Settings
from .exporterhelper import (
    IngestExporter,
    RetryConfig,
    classify,
    parse_retry_after,
    restored,
    without_extensions,
)
from .transport import TlsConfig

#: m3ter's production hosts, used when no ``base_url`` is configured.
M3TER_API = "https://api.m3ter.com"
M3TER_INGEST = "https://ingest.m3ter.com"


class M3terExporterConfig(Settings):
    #: None (or empty): m3ter's production hosts. Set: one host for measurements and tokens.
    base_url: str | None = None
    org_id: str
    token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    retry: RetryConfig = RetryConfig()
    #: how the server's certificate is checked (a private CA) and the client's is shown (mutual TLS)
    tls: TlsConfig = TlsConfig()
    #: send ``correction`` and ``batch`` as they are. None: only to a ``base_url`` that is not
    #: one of m3ter's hosts (a meterkit ledger, which voids reversals and lists batches by them).
    send_extensions: bool | None = None

    @field_validator("base_url")
    @classmethod
    def _m3ter_itself(cls, v: str | None) -> str | None:
        v = (v or "").strip().rstrip("/")
        return None if v.lower() in ("", M3TER_API) else v

    @model_validator(mode="after")
    def _auth(self) -> M3terExporterConfig:
        if self.token is None and (self.client_id is None or self.client_secret is None):
            raise ValueError("give token, or client_id and client_secret (client-credentials)")
        return self

    @property
    def measurements_url(self) -> str:
        return f"{self.base_url or M3TER_INGEST}/organizations/{self.org_id}/measurements"

    @property
    def token_url(self) -> str:
        return f"{self.base_url or M3TER_API}/oauth/token"


class M3terExporter(IngestExporter):
    def __init__(self, name: str, cfg: M3terExporterConfig) -> None:
        super().__init__(name, cfg.measurements_url, cfg.retry, tls=cfg.tls)
        self.cfg = cfg
        self.token_url = cfg.token_url
        self._token = cfg.token.get_secret_value() if cfg.token else None
        self._expires_at = float("inf") if cfg.token else 0.0
        self._lock = threading.Lock()
        self._refreshed_for_401 = False  # until a request succeeds again

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        """Deliver ``records``; to m3ter itself without the keys it does not know
        (``correction``, ``batch``)."""
        if self._send_extensions:
            return super().export(records)
        plain, copied = without_extensions(records)
        return restored(super().export(plain), copied)

    @property
    def _send_extensions(self) -> bool:
        if self.cfg.send_extensions is not None:
            return self.cfg.send_extensions
        host = (urlsplit(self.cfg.base_url).hostname or "") if self.cfg.base_url else "m3ter.com"
        return not (host == "m3ter.com" or host.endswith(".m3ter.com"))

    def _exchange(self) -> None:
        assert self.cfg.client_id is not None and self.cfg.client_secret is not None
        basic = base64.b64encode(f"{self.cfg.client_id}:{self.cfg.client_secret.get_secret_value()}".encode()).decode()
        try:
            response = self.session.post(
                self.token_url,
                json={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
                timeout=self.timeout,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise RetryLater(f"token exchange: {type(exc).__name__}") from None
        outcome = classify(response.status_code)
        if outcome == "pause":  # a wrong client id or secret, or a wrong token URL
            raise Misconfigured(f"{self.name} token exchange ({self.token_url})", response.status_code)
        if outcome != "ok":
            # Never echo the answer: it may contain credentials material.
            raise RetryLater(
                f"token exchange answered HTTP {response.status_code}",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        body = response.json()
        self._token = str(body["access_token"])
        # Refresh five minutes early, as m3ter's own client does.
        self._expires_at = time.monotonic() + float(body.get("expires_in", 3600)) - 300

    def on_accepted(self) -> None:
        self._refreshed_for_401 = False

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._exchange()
            return {"Authorization": f"Bearer {self._token}"}

    def on_unauthorized(self) -> bool:
        """Refresh the token once; a second 401 in a row, with a token just issued, is a
        credentials problem (a revoked client, missing permissions), which pauses delivery."""
        if self.cfg.client_id is None or self._refreshed_for_401:
            return False
        self._refreshed_for_401 = True
        with self._lock:
            self._token, self._expires_at = None, 0.0
        return True


FACTORY = Factory(M3terExporterConfig, M3terExporter)
