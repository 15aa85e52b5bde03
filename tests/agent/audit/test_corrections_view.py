"""Which corrections a reconciliation shows, and what it says of each: a correction entry
and the deliveries of what it wrote may be journaled in either order; a correction made
in February of January's usage belongs to January's reconciliation (and to February's,
when it was made); a meter or account filter keeps only those delivered there."""

from __future__ import annotations

from typing import Any

from meterkit_agent.audit.corrections import CorrectionsView
from meterkit_agent.audit.journal import compress_uids

JAN = ("2026-01-01T00:00:00.000Z", "2026-02-01T00:00:00.000Z")
FEB = ("2026-02-01T00:00:00.000Z", "2026-03-01T00:00:00.000Z")


def correction(seq: int, made_at: str, uids: list[str], **more: Any) -> dict[str, Any]:
    return {
        "seq": seq,
        "type": "correction",
        "at": made_at,
        "id": f"c{seq}",
        "action": "cancel",
        "reason": "r",
        "by": "alice@host",
        "made_at": made_at,
        "of": compress_uids([f"of-{u}" for u in uids]),
        "uids": compress_uids(uids),
        **more,
    }


def delivery(seq: int, *rows: tuple[str, str, str, list[str]]) -> dict[str, Any]:
    corrections = [{"meter": m, "account": a, "hour": h, "uids": u} for m, a, h, u in rows]
    return {"seq": seq, "type": "delivery", "corrections": corrections}


def view(*entries: dict[str, Any]) -> CorrectionsView:
    v = CorrectionsView()
    for e in entries:
        v.take(e)
    return v


def test_delivered_before_or_after_the_entry_is_matched() -> None:
    v = view(
        delivery(1, ("calls", "acme", "2026-01-10T05:00:00Z", ["r1"])),
        correction(2, "2026-02-03T10:00:00.000Z", ["r1", "r2", "r3"]),
        delivery(3, ("calls", "globex", "2026-01-11T06:00:00Z", ["r2"])),
        {"seq": 4, "type": "delivery", "count": 5},  # no corrections in it
    )
    (c,) = v.matched()
    assert c.delivered == {
        "r1": ("calls", "acme", "2026-01-10T05:00:00Z"),
        "r2": ("calls", "globex", "2026-01-11T06:00:00Z"),
    }
    assert (c.status, c.undelivered) == ("partly delivered", ["r3"])
    assert c.as_dict()["where"] == [
        {"meter": "calls", "account": "acme", "count": 1},
        {"meter": "calls", "account": "globex", "count": 1},
    ]


def test_a_correction_belongs_to_the_period_it_was_made_in_and_the_one_it_corrects() -> None:
    v = view(
        correction(1, "2026-02-03T10:00:00.000Z", ["r1"]),
        delivery(2, ("calls", "acme", "2026-01-10T05:00:00Z", ["r1"])),
        correction(3, "2026-02-04T10:00:00.000Z", ["r9"]),  # never delivered
    )
    assert [c.id for c in v.in_period(*JAN)] == ["c1"]
    assert [c.id for c in v.in_period(*FEB)] == ["c1", "c3"]
    assert [c.id for c in v.in_period("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z")] == []


def test_a_meter_or_account_filter_keeps_those_delivered_there() -> None:
    v = view(
        correction(1, "2026-02-03T10:00:00.000Z", ["r1"]),
        delivery(2, ("calls", "acme", "2026-02-03T10:00:00Z", ["r1"])),
        correction(3, "2026-02-03T11:00:00.000Z", ["r2"]),
        delivery(4, ("storage", "globex", "2026-02-03T11:00:00Z", ["r2"])),
        correction(5, "2026-02-03T12:00:00.000Z", ["r3"]),  # where it would go is unknown
    )
    assert [c.id for c in v.in_period(*FEB, account="acme")] == ["c1", "c5"]
    assert [c.id for c in v.in_period(*FEB, meter="storage")] == ["c3", "c5"]
    assert [c.id for c in v.in_period(*FEB)] == ["c1", "c3", "c5"]


def test_malformed_delivery_rows_are_skipped_and_clear_forgets() -> None:
    v = view(
        correction(1, "2026-02-03T10:00:00.000Z", ["r1"]),
        {"seq": 2, "type": "delivery", "corrections": [{"meter": "calls"}, "not a row"]},
    )
    (c,) = v.matched()
    assert c.status == "not delivered"
    v.clear()
    assert list(v.matched()) == [] and v.in_period(*FEB) == []
