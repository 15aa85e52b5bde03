"""The notification event, and its id.

An event's id is derived from what it is about, never from when it was noticed: the
organisation, account, meter (and the field or aggregation on it), kind, threshold and
period. So every ledger process that sees the same crossing derives the same id, a retry
carries the id the first attempt carried, and the outbox's unique (org, event id) keeps
exactly one event per threshold per period however many times, or by however many
processes, the crossing is seen.

The body is serialised once, when the event is first recorded, and the same bytes are
sent on every attempt (only the signature's timestamp changes): a receiver that stores
the first copy it acknowledged and ignores later ids it has seen is exactly-once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from ..instants import iso

ID_PREFIX = "evt_"


def decimal_text(value: Decimal | int | str) -> str:
    """The one spelling of a number in ids and bodies: ``80``, ``80.0`` and ``8E+1`` are
    all ``80``; no exponent, no trailing zeros."""
    d = Decimal(value)
    if not d.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    if d == 0:
        return "0"
    text = format(d.normalize(), "f")
    return text


def event_id(
    org: str, account: str, meter: str, measure: str, kind: str, threshold: str, period: tuple[int, int]
) -> str:
    """``evt_`` and 32 hex digits of sha256 over the event's identity (a JSON array, so
    no two identities share a spelling)."""
    identity = orjson.dumps([org, account, meter, measure, kind, threshold, period[0], period[1]])
    return ID_PREFIX + hashlib.sha256(identity).hexdigest()[:32]


@dataclass(frozen=True)
class Event:
    """One notification. ``meter`` is "" for what belongs to no meter (a spend level);
    ``measure`` says which field or aggregation of the meter ("" for the meter as a
    whole); ``threshold`` is the threshold's text (a percent, a band's lower limit, an
    amount, a trend factor); ``period`` is the half-open ``[start, end)`` in UTC ms it
    counts once per; ``data`` is what the receiver needs to act (numbers as text)."""

    org: str
    account: str
    meter: str
    measure: str
    kind: str
    threshold: str
    period: tuple[int, int]
    occurred_ms: int
    data: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def id(self) -> str:
        return event_id(self.org, self.account, self.meter, self.measure, self.kind, self.threshold, self.period)

    def to_json(self) -> dict[str, Any]:
        """The webhook body, in the shape docs/notifications.md describes."""
        return {
            "id": self.id,
            "type": self.kind,
            "created": iso(self.occurred_ms),
            "org": self.org,
            "account": self.account,
            "meter": self.meter,
            "measure": self.measure,
            "threshold": self.threshold,
            "period": {"start": iso(self.period[0]), "end": iso(self.period[1])},
            "data": dict(self.data),
        }

    def body(self) -> bytes:
        """The bytes sent, sorted keys: the same for the same event."""
        return orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)
