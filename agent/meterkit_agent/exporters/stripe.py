"""Stripe meter events: ``POST {base}/v1/billing/meter_events``, form-encoded, one request
a measurement, paced under ``max_requests_per_second``.

================================  ==========================================
``event_name``                    ``meters[meter].event_name``, else the meter code
``payload[stripe_customer_id]``   ``customers[account]``, else ``account``
``payload[value]``                the ``value_field`` of the measurement
``identifier``                    ``uid`` (Stripe de-duplicates it for 24 hours)
``timestamp``                     ``ts`` in Unix seconds (Stripe: at most 35 days old)
``Idempotency-Key`` header        ``uid``
================================  ==========================================
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import requests
from pydantic import Field, SecretStr

from meterkit._timefmt import wire_ts_ns

from ..component import Factory, Misconfigured, Rejected, RetryLater, Settings
from .exporterhelper import RetryConfig, answer, classify, parse_retry_after, session, short

STRIPE_MAX_AGE_SECONDS = 35 * 86_400


class StripeMeterConfig(Settings):
    event_name: str | None = None  # default: the meter code
    value_field: str  # "measure.calls", or a bare code looked up in the numeric categories
    customer_payload_key: str = "stripe_customer_id"
    value_payload_key: str = "value"


class StripeExporterConfig(Settings):
    api_key: SecretStr
    base_url: str = "https://api.stripe.com"
    meters: dict[str, StripeMeterConfig]
    # account -> Stripe customer id (default: the account is the id)
    customers: dict[str, str] = Field(default_factory=dict)
    # Stripe allows 1,000 meter events a second in live mode (less in test mode); stay under it.
    max_requests_per_second: float = Field(100, gt=0, le=1000)
    retry: RetryConfig = RetryConfig()


class StripeMeterEventsExporter:
    def __init__(self, name: str, cfg: StripeExporterConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.url = f"{cfg.base_url.rstrip('/')}/v1/billing/meter_events"
        self.timeout = cfg.retry.request_timeout_millis / 1000.0
        self.session = session(Authorization=f"Bearer {cfg.api_key.get_secret_value()}")
        self._interval = 1.0 / cfg.max_requests_per_second
        self.last_answer = ""
        self._next_at = 0.0
        self._lock = threading.Lock()

    def form(self, m: dict[str, Any]) -> dict[str, str] | Rejected:
        meter = self.cfg.meters.get(m["meter"])
        if meter is None:
            return Rejected(m, "stripe:unmapped_meter", f"no stripe.meters entry for meter {m['meter']!r}")
        category, _, code = meter.value_field.rpartition(".")
        value = (
            (m.get(category) or {}).get(code)
            if category
            else next((m[c][code] for c in ("measure", "income", "cost") if code in (m.get(c) or {})), None)
        )
        if value is None:
            return Rejected(m, "stripe:no_value", f"measurement has no {meter.value_field!r} to send as the value")
        ts = wire_ts_ns(m["ts"]) // 1_000_000_000
        if ts < time.time() - STRIPE_MAX_AGE_SECONDS:
            return Rejected(m, "stripe:too_old", "Stripe takes meter events at most 35 days old")
        return {
            "event_name": meter.event_name or m["meter"],
            f"payload[{meter.customer_payload_key}]": self.cfg.customers.get(m["account"], m["account"]),
            f"payload[{meter.value_payload_key}]": orjson.dumps(value).decode(),
            "identifier": m["uid"],
            "timestamp": str(ts),
        }

    def _pace(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next_at - now
            self._next_at = max(now, self._next_at) + self._interval
        if wait > 0:
            time.sleep(wait)

    def export(self, records: list[dict[str, Any]]) -> list[Rejected]:
        rejected: list[Rejected] = []
        for m in records:
            form = self.form(m)
            if isinstance(form, Rejected):
                rejected.append(form)
                continue
            self._pace()
            try:
                response = self.session.post(
                    self.url, data=form, headers={"Idempotency-Key": m["uid"]}, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                # Earlier events of this batch are in; a retry re-sends them with the same
                # identifier, which Stripe de-duplicates.
                raise RetryLater(f"{type(exc).__name__}: {short(exc)}") from None
            self.last_answer = f"HTTP {response.status_code} {response.text[:200]}".rstrip()
            outcome = classify(response.status_code)
            if outcome == "pause":
                raise Misconfigured(f"{self.name} ({self.url})", response.status_code)
            if outcome == "retry":
                raise RetryLater(f"HTTP {response.status_code}", parse_retry_after(response.headers.get("Retry-After")))
            if outcome == "isolate":
                reason = _stripe_code(response)
                rejected.append(Rejected(m, f"rejected_by_backend:{reason}", answer(response)))
        return rejected

    def shutdown(self) -> None:
        self.session.close()


def _stripe_code(response: requests.Response) -> str:
    try:
        error = response.json().get("error", {})
    except ValueError:
        return f"http_{response.status_code}"
    return str(error.get("code") or error.get("type") or f"http_{response.status_code}")


FACTORY = Factory(StripeExporterConfig, StripeMeterEventsExporter)
