"""Event ids: derived from what the event is about, so the same on every retry and in
every process; different for anything that makes it a different notification."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal

import orjson
import pytest

from meterkit_agent.signals import Event, event_id
from meterkit_agent.signals.events import decimal_text

PERIOD = (1767225600000, 1769904000000)  # January 2026


def make(**changes: object) -> Event:
    fields: dict[str, object] = {
        "org": "org1",
        "account": "acme",
        "meter": "api_calls",
        "measure": "",
        "kind": "cap_threshold",
        "threshold": "80",
        "period": PERIOD,
        "occurred_ms": 1768000000000,
        "data": {"usage": "812"},
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def test_the_id_is_the_documented_digest() -> None:
    identity = json.dumps(["org1", "acme", "api_calls", "", "cap_threshold", "80", *PERIOD], separators=(",", ":"))
    assert make().id == "evt_" + hashlib.sha256(identity.encode()).hexdigest()[:32]


def test_when_it_was_noticed_and_what_it_says_do_not_change_the_id() -> None:
    assert make(occurred_ms=1769000000000, data={"usage": "999"}).id == make().id


@pytest.mark.parametrize(
    "change",
    [
        {"org": "org2"},
        {"account": "globex"},
        {"meter": "downloads"},
        {"measure": "bytes"},
        {"kind": "band_entered"},
        {"threshold": "100"},
        {"period": (PERIOD[1], 1772323200000)},
        {"period": (PERIOD[0], PERIOD[1] + 1)},
    ],
)
def test_anything_that_makes_it_another_notification_changes_the_id(change: dict[str, object]) -> None:
    assert make(**change).id != make().id


def test_no_two_identities_share_a_spelling() -> None:
    assert event_id("a", "b,c", "m", "", "k", "1", (0, 1)) != event_id("a,b", "c", "m", "", "k", "1", (0, 1))


@pytest.mark.parametrize(("value", "text"), [(80, "80"), ("80.0", "80"), ("8E+1", "80"), ("0.050", "0.05"), (0, "0")])
def test_one_spelling_of_a_threshold(value: object, text: str) -> None:
    assert decimal_text(Decimal(str(value))) == text


def test_the_body_is_the_same_bytes_for_the_same_event() -> None:
    body = make().body()
    assert body == make().body()
    parsed = orjson.loads(body)
    assert parsed["id"] == make().id and parsed["type"] == "cap_threshold"
    assert parsed["period"] == {"start": "2026-01-01T00:00:00.000Z", "end": "2026-02-01T00:00:00.000Z"}
    assert list(parsed) == sorted(parsed)
