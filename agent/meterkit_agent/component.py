"""Delivery rules, as small pure functions with table-driven tests.

What is retried and what is final is decided in :func:`classify`; nothing else in the
agent decides it. Retried: 408, 429, every 5xx, connection errors and timeouts. Final:
any other 4xx, which isolates the bad measurements (from the backend's answer if it names
them, else by splitting the batch) so the good ones are delivered and the bad ones are
dead-lettered with the backend's reason.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Outcome = Literal["ok", "retry", "isolate"]


def classify(status: int) -> Outcome:
    """The retry predicate: what to do with an HTTP status."""
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    if 400 <= status < 500:
        return "isolate"
    return "retry"  # 1xx/3xx from an ingest endpoint: a proxy misbehaving; try again


def parse_retry_after(value: str | None, now: float | None = None, cap_seconds: float = 300.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date, RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap_seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), cap_seconds)


def idempotency_key(uids: Iterable[str]) -> str:
    """The ``Idempotency-Key`` of a request: a digest of its uids, independent of order,
    so every retry of the same measurements carries the same key."""
    digest = hashlib.sha256()
    for uid in sorted(uids):
        digest.update(uid.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:48]


class RetryLater(Exception):
    """A transient failure: try the same request again later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class Rejected:
    """A measurement the backend (or a processor) refused for good."""

    measurement: dict[str, Any]
    reason: str
    detail: str = ""


Encoded = tuple[dict[str, Any], bytes]


def chunks(records: list[dict[str, Any]], max_count: int, max_bytes: int) -> Iterator[list[Encoded]]:
    """Split records into requests of at most ``max_count`` items and ``max_bytes`` of JSON.

    Each record is serialised once, here; :func:`request_body` joins the pieces.
    """
    envelope = len(b'{"measurements":[]}')
    current: list[Encoded] = []
    size = envelope
    for record in records:
        data = orjson.dumps(record)
        n = len(data) + 1
        if current and (len(current) >= max_count or size + n > max_bytes):
            yield current
            current, size = [], envelope
        current.append((record, data))
        size += n
    if current:
        yield current


def request_body(chunk: list[Encoded]) -> bytes:
    return b'{"measurements":[' + b",".join(data for _, data in chunk) + b"]}"
