"""What the exporter tests share: fast retry settings and measurements in wire shape."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

from meterkit._timefmt import iso_ms
from meterkit_agent.exporters.exporterhelper import RetryConfig

FAST = RetryConfig(initial_interval_millis=1, max_interval_millis=2, request_timeout_millis=1000)
NOW = iso_ms(time.time_ns())
URL = "http://backend.test/organizations/o1/measurements"


def m(uid: str) -> dict[str, Any]:
    """A minimal measurement with a fixed time, for request shapes."""
    return {"uid": uid, "meter": "m", "account": "a", "ts": "2026-01-01T00:00:00.000Z", "measure": {"n": 1}}


def event(uid: str, **extra: Any) -> dict[str, Any]:
    """A measurement of now, with what OpenMeter and Stripe map."""
    base = {
        "uid": uid,
        "meter": "api_calls",
        "account": "customer-1",
        "ts": NOW,
        "measure": {"calls": 1, "seconds": 0.25},
        "what": {"route": "/hello"},
    }
    return {**base, **extra}


def body_of(call: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(gzip.decompress(call.request.body))
    return body
