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

Corrections. Stripe's way to correct a meter event is to cancel the event itself, by
identifier, with a meter event adjustment (``POST {base}/v1/billing/meter_event_adjustments``,
Stripe's API reference), and only "within 24 hours of Stripe receiving" it. So a reversal
of U becomes that request, not a negated meter event:

================================  ==========================================
``event_name``                    as for U's meter (above)
``type``                          ``cancel``
``cancel[identifier]``            ``correction.of`` (U's uid, U's identifier)
``Idempotency-Key`` header        the reversal's ``uid``
================================  ==========================================

When Stripe refuses it because the window has closed (:func:`cancel_window_closed`), the
reversal is dead-lettered with reason ``stripe_cancel_window_closed``, naming both uids:
Stripe still counts U, and the dead letter is where someone sees that a credit is owed.
U's replacement P is then dead-lettered with the same reason, not sent: Stripe would
count U and P. A replacement is held until its reversal's answer when both are in one
batch (``meterkit correct`` writes them in one spool write, in one segment, one after
the other, so they normally are), and the exporter remembers the last
:data:`MAX_REMEMBERED` closed windows for a replacement that comes in a later batch (the
agent cuts batches by frame count, so a cut can fall between the two). What it cannot
know is a window that closed before the agent last started: that replacement is sent,
and the reversal's dead letter names it, so whoever settles the credit sees both.
The exporter cannot tell the window from U's ``ts`` (it runs from when Stripe
received U, and U may have been delivered late), so Stripe's answer decides. Stripe
processes adjustments asynchronously (an accepted one is ``pending``), so a refusal found
after the answer can only come asynchronously (Stripe reports invalid asynchronous usage
events as ``v1.billing.meter.error_report_triggered``), which this exporter does not see.
Any other answer follows the rules of a meter event. A replacement is an ordinary meter
event (identifier = its uid). ``batch`` is not sent: a meter event has only
``event_name``, ``identifier``, ``timestamp`` and ``payload``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Any

import orjson
import requests
from pydantic import Field, SecretStr

from meterkit._corrections import REPLACEMENT, correction_of, is_reversal, replacement_uid
from meterkit._model import NUMERIC_CATEGORIES
from meterkit._timefmt import wire_ts_ns

from ..component import Factory, Misconfigured, Rejected, RetryLater, Settings
from .exporterhelper import RetryConfig, answer, classify, parse_retry_after, short
from .transport import TlsConfig, session

STRIPE_MAX_AGE_SECONDS = 35 * 86_400
#: The dead letter's reason for a reversal Stripe can no longer cancel.
CANCEL_WINDOW_CLOSED = "stripe_cancel_window_closed"
#: Originals whose cancel window was found closed, remembered for their replacements.
MAX_REMEMBERED = 10_000


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
    tls: TlsConfig = TlsConfig()


class StripeMeterEventsExporter:
    def __init__(self, name: str, cfg: StripeExporterConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.url = f"{cfg.base_url.rstrip('/')}/v1/billing/meter_events"
        self.adjustments_url = f"{cfg.base_url.rstrip('/')}/v1/billing/meter_event_adjustments"
        self.timeout = cfg.retry.request_timeout_millis / 1000.0
        self.session = session(cfg.tls, Authorization=f"Bearer {cfg.api_key.get_secret_value()}")
        self._interval = 1.0 / cfg.max_requests_per_second
        self.last_answer = ""
        self._next_at = 0.0
        self._lock = threading.Lock()
        self._closed: OrderedDict[str, str] = OrderedDict()  # of -> its reversal's uid

    def form(self, m: dict[str, Any]) -> dict[str, str] | Rejected:
        meter = self.cfg.meters.get(m["meter"])
        if meter is None:
            return Rejected(m, "stripe:unmapped_meter", f"no stripe.meters entry for meter {m['meter']!r}")
        category, _, code = meter.value_field.rpartition(".")
        value = (
            (m.get(category) or {}).get(code)
            if category
            else next((m[c][code] for c in NUMERIC_CATEGORIES if code in (m.get(c) or {})), None)
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

    def cancel_form(self, m: dict[str, Any]) -> dict[str, str] | Rejected:
        """The meter event adjustment that cancels what the reversal ``m`` reverses."""
        meter = self.cfg.meters.get(m["meter"])
        if meter is None:
            return Rejected(m, "stripe:unmapped_meter", f"no stripe.meters entry for meter {m['meter']!r}")
        return {
            "event_name": meter.event_name or m["meter"],
            "type": "cancel",
            "cancel[identifier]": m["correction"]["of"],
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
        for m in _reversals_first(records):
            cancel = is_reversal(m)
            held = None if cancel else self._held(m)
            if held is not None:
                rejected.append(held)
                continue
            form = self.cancel_form(m) if cancel else self.form(m)
            if isinstance(form, Rejected):
                rejected.append(form)
                continue
            url = self.adjustments_url if cancel else self.url
            response = self._post(url, form, m["uid"])
            outcome = classify(response.status_code)
            if outcome == "pause":
                raise Misconfigured(f"{self.name} ({url})", response.status_code)
            if outcome == "retry":
                raise RetryLater(f"HTTP {response.status_code}", parse_retry_after(response.headers.get("Retry-After")))
            if outcome == "isolate":
                refused = _refused(m, response, cancel)
                if refused.reason == CANCEL_WINDOW_CLOSED:
                    self._remember(m["correction"]["of"], m["uid"])
                rejected.append(refused)
        return rejected

    def _held(self, m: dict[str, Any]) -> Rejected | None:
        """The dead letter of a replacement whose reversal Stripe could not apply."""
        found = correction_of(m)
        if found is None or found[1] != REPLACEMENT or found[0] not in self._closed:
            return None
        return Rejected(
            m,
            CANCEL_WINDOW_CLOSED,
            f"replacement {m['uid']} of {found[0]} not sent: Stripe could not cancel {found[0]} (reversal"
            f" {self._closed[found[0]]}, its 24-hour window has closed), and would count both",
        )

    def _remember(self, of: str, reversal_uid: str) -> None:
        self._closed[of] = reversal_uid
        self._closed.move_to_end(of)
        while len(self._closed) > MAX_REMEMBERED:
            self._closed.popitem(last=False)

    def _post(self, url: str, form: dict[str, str], key: str) -> requests.Response:
        self._pace()
        try:
            response = self.session.post(url, data=form, headers={"Idempotency-Key": key}, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            # Earlier requests of this batch are in; a retry sends them again with the same
            # identifier and Idempotency-Key, which Stripe de-duplicates.
            raise RetryLater(f"{type(exc).__name__}: {short(exc)}") from None
        self.last_answer = f"HTTP {response.status_code} {response.text[:200]}".rstrip()
        return response

    def shutdown(self) -> None:
        self.session.close()


def _reversals_first(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` in order, but a replacement that comes before its reversal in the batch
    moved to just after it: it is sent only once the reversal's answer is known."""
    later = {f[0] for f in map(correction_of, records) if f is not None and f[1] != REPLACEMENT}
    out: list[dict[str, Any]] = []
    waiting: dict[str, list[dict[str, Any]]] = {}
    for m in records:
        found = correction_of(m)
        if found is not None and found[1] == REPLACEMENT and found[0] in later:
            waiting.setdefault(found[0], []).append(m)
            continue
        out.append(m)
        if found is not None and found[1] != REPLACEMENT:
            later.discard(found[0])
            out.extend(waiting.pop(found[0], []))
    return out + [m for ms in waiting.values() for m in ms]


def _refused(m: dict[str, Any], response: requests.Response, cancel: bool) -> Rejected:
    """The dead letter of a request Stripe refused for good (a final 4xx)."""
    if cancel and cancel_window_closed(response):
        return Rejected(
            m,
            CANCEL_WINDOW_CLOSED,
            f"reversal {m['uid']} of {m['correction']['of']} not applied: Stripe cancels a meter event only"
            f" within 24 hours of receiving it, and that window has closed; Stripe still counts"
            f" {m['correction']['of']} (and its replacement {replacement_uid(m['correction']['of'])} too, should"
            f" it come after the agent restarts). {answer(response)}",
        )
    return Rejected(m, f"rejected_by_backend:{_stripe_code(response)}", answer(response))


#: What a refusal's message says when it is about the cancel window.
_WINDOW_WORDS = re.compile(r"\b24[- ]?hours?\b|\bcancel(?:lation)? window\b", re.IGNORECASE)


def cancel_window_closed(response: requests.Response) -> bool:
    """Whether Stripe refused a cancel because its 24-hour window has closed.

    Stripe documents the window (``cancel.identifier``: "You can only cancel events within
    24 hours of Stripe receiving them") but not the error it answers past it: its API
    reference lists no error code for this endpoint (the v2 one lists only
    ``invalid_cancel_configuration``). So this matches conservatively, on Stripe's
    documented error shape ``{"error": {"type", "code", "message"}}``: an
    ``invalid_request_error`` whose code is ``out_of_window`` (the code one third-party
    client documents; not confirmed by Stripe) or whose message speaks of the 24-hour
    window. Any other refusal stays ``rejected_by_backend:<code>``, so nothing is called
    "window closed" that Stripe did not say was.
    """
    error = _stripe_error(response)
    if error.get("type") != "invalid_request_error":
        return False
    return error.get("code") == "out_of_window" or bool(_WINDOW_WORDS.search(str(error.get("message") or "")))


def _stripe_error(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _stripe_code(response: requests.Response) -> str:
    error = _stripe_error(response)
    return str(error.get("code") or error.get("type") or f"http_{response.status_code}")


FACTORY = Factory(StripeExporterConfig, StripeMeterEventsExporter)
