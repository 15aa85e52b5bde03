"""Thresholds and signals on the ledger: which thresholds a change of usage crosses, drops
and spikes against a trailing median, one notification event per threshold per period in
a durable outbox, and its delivery to signed webhooks (docs/notifications.md).

The ledger calls in; nothing here imports the ledger. Modules, by responsibility:

- :mod:`.crossings`: percent of a cap, a new price band, a spend level;
- :mod:`.trends`: sudden drops and spikes per account and meter;
- :mod:`.events`: the event and its stable id;
- :mod:`.outbox`: the outbox's tables, :func:`record` (exactly once per event id, in the
  caller's transaction) and :func:`list_notifications`;
- :mod:`.deliveries`: claiming a delivery and recording its outcome;
- :mod:`.signing`: ``Meterkit-Signature``, and :func:`verify` for receivers;
- :mod:`.webhooks`: one attempt, the retry predicate and the backoff schedule;
- :mod:`.sender`: the background sender thread;
- :mod:`.settings`: the configuration.
"""

from __future__ import annotations

from .crossings import Cap, SpendLevels, Where, band_events, cap_events, reached_percents, spend_events
from .events import Event, event_id
from .outbox import list_notifications, prepare, record
from .sender import WebhookSender
from .settings import (
    SecretMissing,
    SignalsFileError,
    SignalsSettings,
    TrendSettings,
    WebhookConfig,
    WebhooksSettings,
    load_signals,
)
from .signing import SignatureError, sign, verify
from .trends import dense, detect, trend_events

__all__ = [
    "Cap",
    "Event",
    "SecretMissing",
    "SignalsFileError",
    "SignalsSettings",
    "SignatureError",
    "SpendLevels",
    "TrendSettings",
    "WebhookConfig",
    "WebhookSender",
    "WebhooksSettings",
    "Where",
    "band_events",
    "cap_events",
    "dense",
    "detect",
    "event_id",
    "list_notifications",
    "load_signals",
    "prepare",
    "reached_percents",
    "record",
    "sign",
    "spend_events",
    "trend_events",
    "verify",
]
