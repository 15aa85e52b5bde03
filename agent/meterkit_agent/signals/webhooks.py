"""Webhook delivery: one signed POST per attempt, and the schedule of the next attempt.

An attempt POSTs the event's stored body (the same bytes every time) as JSON with
``Meterkit-Signature`` (:mod:`.signing`) and ``Meterkit-Event-Id``. A 2xx is the
acknowledgement. Anything else is retried, without limit, on the schedule below: a 5xx, a
408 or 429, a connection refused or reset, a timeout, and also a 3xx (redirects are not
followed: a signed body is for the URL configured) and any other 4xx (as Stripe does: the
receiver may be fixed; the event is kept until it is). An event is never dropped.

The schedule is exponential backoff with jitter: after the n-th failed attempt the next
is ``min(initial * 2**(n-1), max) + uniform(0, jitter)`` later, and never sooner than the
receiver's ``Retry-After`` (up to ``max_retry_after_millis``). The waits are not slept
in a retry loop (tenacity's, as the exporters use) but written into the outbox as the
delivery's next due time, so a ledger that restarts, or another ledger process, picks up
the schedule where it stood.

What is logged or stored about a failure is the endpoint's name and a status or an
exception's type name: never the URL (it may carry credentials), a header or the secret.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from .settings import RetrySchedule, WebhookConfig
from .signing import HEADER, sign

USER_AGENT = "meterkit-signals/0.1"
EVENT_ID_HEADER = "Meterkit-Event-Id"


@dataclass(frozen=True)
class Outcome:
    """One attempt: acknowledged or not, what to record about it, and the receiver's
    ``Retry-After`` in ms if it gave one."""

    ok: bool
    error: str = ""
    retry_after_ms: int | None = None


def classify(status: int) -> bool:
    """The retry predicate: whether a status acknowledges the event (2xx). Everything
    else is retried."""
    return 200 <= status < 300


def retry_after_ms(value: str | None, now: float) -> int | None:
    """A ``Retry-After`` header (delta-seconds or an HTTP-date, RFC 9110 §10.2.3) in ms."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return int(value) * 1000
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(int((when.timestamp() - now) * 1000), 0)


def next_delay_ms(
    failures: int, schedule: RetrySchedule, retry_after: int | None = None, uniform: Callable[[], float] = random.random
) -> int:
    """How long after the ``failures``-th failed attempt (1 or more) the next is due."""
    exponent = min(max(failures, 1) - 1, 62)
    delay: int = min(schedule.initial_interval_millis * 2**exponent, schedule.max_interval_millis)
    delay += int(uniform() * schedule.jitter_millis)
    if retry_after is not None:
        delay = max(delay, min(retry_after, schedule.max_retry_after_millis))
    return delay


def attempt(session: requests.Session, endpoint: WebhookConfig, secret: str, event_id: str, body: bytes) -> Outcome:
    """POST ``body`` to ``endpoint``, signed now with ``secret``."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: event_id,
        HEADER: sign(body, secret),
    }
    try:
        response = session.post(
            endpoint.url, data=body, headers=headers, timeout=endpoint.timeout_millis / 1000, allow_redirects=False
        )
    except Exception as exc:  # any failure to send is a failed attempt: kept, retried, named by its type only
        return Outcome(False, type(exc).__name__)
    with response:
        if classify(response.status_code):
            return Outcome(True)
        return Outcome(
            False,
            f"HTTP {response.status_code}",
            retry_after_ms(response.headers.get("Retry-After"), time.time()),
        )
