"""Bounded inputs at every edge: lengths, characters, numbers and times (``_limits``).

Each limit is refused with a named reason and field in strict mode (at the call site), in
production mode (a counted rejection, the rest written), by ``validate_wire`` (what the
agent's receivers, its validate processor and the ledger run), and through a real HTTP edge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import meterkit
from meterkit import MeasurementError
from meterkit._limits import (
    MAX_ACCOUNT_LENGTH,
    MAX_CODE_LENGTH,
    MAX_INT,
    MAX_METADATA_LENGTH,
    MAX_ORG_LENGTH,
    MAX_STRING_LENGTH,
    MAX_UID_LENGTH,
    MIN_INT,
)
from meterkit._model import CATEGORIES, check_org, validate_wire
from meterkit._timefmt import iso_ms
from tests.sdk.helpers import agent_verdict, losses, refused_by_sdk, spooled

NOW = datetime.now(timezone.utc)
WIRE_NOW = iso_ms(int(NOW.timestamp()) * 1_000_000_000)


def case(**fields: Any) -> dict[str, Any]:
    """A measurement as ``record`` keyword arguments (plus ``meter``), good unless changed."""
    return {"meter": "api_calls", "account": "acme", "measure": {"calls": 1}, **fields}


# (measurement, reason, field): one row per limit
BAD: list[tuple[dict[str, Any], str, str | None]] = [
    # identifiers: uid, meter, account
    (case(uid="u" * (MAX_UID_LENGTH + 1)), "too_long", "uid"),
    (case(uid="u-\x00-1"), "control_character", "uid"),
    (case(uid=" u-1"), "surrounding_whitespace", "uid"),
    (case(meter="m" * (MAX_CODE_LENGTH + 1)), "too_long", "meter"),
    (case(meter="api\x00calls"), "control_character", "meter"),
    (case(account="a" * 400_000), "too_long", "account"),  # the 400,000-character account
    (case(account="a" * (MAX_ACCOUNT_LENGTH + 1)), "too_long", "account"),
    (case(account="acme\x00"), "control_character", "account"),
    (case(account="acme\tcorp"), "control_character", "account"),
    (case(account="ac\x7fme"), "control_character", "account"),
    (case(account="ac\x85me"), "control_character", "account"),  # C1 (NEL)
    (case(account="acme "), "surrounding_whitespace", "account"),
    # free text: Who, What, Where, Other, Metadata
    (case(who={"user": "u" * (MAX_STRING_LENGTH + 1)}), "too_long", "who.user"),
    (case(what={"endpoint": "/x\x00/y"}), "control_character", "what.endpoint"),
    (case(where={"region": "eu\x1bwest"}), "control_character", "where.region"),
    (case(other={"status": "ok\x7f"}), "control_character", "other.status"),
    (case(metadata={"request_id": "r" * (MAX_METADATA_LENGTH + 1)}), "metadata_too_long", "metadata.request_id"),
    (case(metadata={"request_id": "r\x00"}), "control_character", "metadata.request_id"),
    # numbers: Measure, Income, Cost
    (case(measure={"calls": MAX_INT + 1}), "number_out_of_range", "measure.calls"),
    (case(income={"amount": Decimal("1e400")}), "number_out_of_range", "income.amount"),
    (case(cost={"amount": float("nan")}), "not_finite", "cost.amount"),
    (case(cost={"amount": Decimal("sNaN")}), "not_finite", "cost.amount"),
    (case(measure={"calls": True}), "wrong_type", "measure.calls"),
    # timestamps: ISO 8601 strings (or aware datetimes), years 2000-9999, at most 5 min ahead
    (case(ts=int(NOW.timestamp())), "bad_timestamp", "ts"),  # Unix seconds: once read as ns, 1970
    (case(ts=NOW.timestamp()), "bad_timestamp", "ts"),
    (case(ts=WIRE_NOW + " " * 100), "bad_timestamp", "ts"),
    (case(ts="0001-01-01T00:00:00Z"), "ts_out_of_range", "ts"),  # once stored as "1-01-01T..."
    (case(ts="0001-01-01T00:00:00+01:00"), "ts_out_of_range", "ts"),  # once an OverflowError
    (case(ts="1999-12-31T23:59:59.999Z"), "ts_out_of_range", "ts"),
    (case(ts=WIRE_NOW, ets=int(NOW.timestamp())), "bad_timestamp", "ets"),
    (case(ts=NOW + timedelta(hours=2)), "ts_in_future", "ts"),  # NOW is taken at collection: leave room
]

#: Values no JSON encoder here can write: a lone surrogate (not UTF-8) and integers past
#: 64 bits. Refused like the rest, but not in the production-mode table: the
#: rejected-measurements file cannot hold them either (its writer, ``SpoolSink.reject``,
#: raises on them), which is the flusher's to fix.
UNWRITABLE: list[tuple[dict[str, Any], str, str | None]] = [
    (case(account="acme\ud800"), "invalid_unicode", "account"),
    (case(who={"user": "\udfff"}), "invalid_unicode", "who.user"),
    (case(uid="u\ud800"), "invalid_unicode", "uid"),
    (case(who={"user": 2**64}), "number_out_of_range", "who.user"),  # an int id past 64 bits
    (case(measure={"calls": MIN_INT - 1}), "number_out_of_range", "measure.calls"),
]

# at each limit, and what free text may hold
GOOD: list[dict[str, Any]] = [
    case(uid="u" * MAX_UID_LENGTH),
    case(meter="m" * MAX_CODE_LENGTH),
    case(account="a" * MAX_ACCOUNT_LENGTH),
    case(account="Acme Corp\u00a0GmbH"),  # spaces inside are fine
    case(who={"user": "u" * MAX_STRING_LENGTH}),
    case(other={"status": "line one\nline two\r\n\tindented"}),  # tab, LF and CR are text
    case(what={"endpoint": "Zürich ☃ 東京 👩‍💻"}),
    case(metadata={"request_id": "r" * MAX_METADATA_LENGTH}),
    case(who={"user": MAX_INT}),
    case(measure={"calls": MAX_INT}),
    case(measure={"calls": MIN_INT}),
    case(measure={"calls": 1.7976931348623157e308}),
    case(cost={"amount": 5e-324}),
    case(income={"amount": Decimal("12.5")}),
    case(ts="2000-01-01T00:00:00Z"),
    case(ts=NOW - timedelta(days=400)),  # old is fine here: backfills need it
]


def record(m: dict[str, Any]) -> None:
    kwargs = dict(m)
    meterkit.record(kwargs.pop("meter"), **kwargs)


def wire(m: dict[str, Any]) -> dict[str, Any]:
    """The same measurement in wire shape, as a receiver or the ledger gets it."""
    out = {"uid": "u-1", "ts": WIRE_NOW, **m}
    for key in ("ts", "ets"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat()
    return out


def ids(rows: list[tuple[dict[str, Any], str, str | None]]) -> list[str]:
    return [f"{reason}:{field}" for _, reason, field in rows]


@pytest.mark.parametrize(("m", "reason", "field"), BAD + UNWRITABLE, ids=ids(BAD + UNWRITABLE))
def test_strict_mode_refuses_at_the_call_site(m: dict[str, Any], reason: str, field: str, spool: Path) -> None:
    meterkit.configure(spool_dir=spool, mode="strict")
    with pytest.raises(MeasurementError) as info:
        record(m)
    assert (info.value.reason, info.value.field) == (reason, field)
    assert len(str(info.value)) < 400  # a 400,000-character value is never echoed whole


@pytest.mark.parametrize(("m", "reason", "field"), BAD, ids=ids(BAD))
def test_production_mode_refuses_alone_in_the_sdk_or_the_agent(
    m: dict[str, Any], reason: str, field: str, spool: Path
) -> None:
    meterkit.configure(spool_dir=spool)
    record(m)  # never raises
    record(m)
    meterkit.record("api_calls", account="acme", measure={"calls": 1})
    assert meterkit.flush(5)
    written = spooled(spool)
    if refused_by_sdk(m, reason, field):  # counted, and the rest kept
        assert len(written) == 1
        assert losses(spool) == {f"rejected:{reason}": 2}
    else:  # spooled; the agent's validation refuses each alone, with the same reason
        assert losses(spool) == {}
        assert [agent_verdict(w) for w in written] == [(reason, field), (reason, field), None]


@pytest.mark.parametrize(("m", "reason", "field"), BAD + UNWRITABLE, ids=ids(BAD + UNWRITABLE))
def test_validate_wire_refuses_with_the_same_reason(m: dict[str, Any], reason: str, field: str) -> None:
    with pytest.raises(MeasurementError) as info:
        validate_wire(wire(m))
    assert (info.value.reason, info.value.field) == (reason, field)


@pytest.mark.parametrize("m", GOOD)
def test_values_at_the_limits_are_accepted_everywhere(m: dict[str, Any], spool: Path) -> None:
    meterkit.configure(spool_dir=spool, mode="strict", durability="sync")
    record(m)
    [written] = spooled(spool)
    checked = validate_wire(wire(m))
    for category in CATEGORIES:
        assert written.get(category) == checked.get(category)


def test_an_integer_timestamp_is_refused_with_what_to_send_instead() -> None:
    with pytest.raises(MeasurementError) as info:
        validate_wire(wire(case(ts=1_767_225_600)))
    assert info.value.reason == "bad_timestamp"
    assert "ISO 8601" in info.value.problem.message


def test_every_accepted_time_is_stored_in_the_fixed_width_format() -> None:
    for ts in ("2000-01-01T00:00:00Z", "2000-01-01T01:00:00+01:00", WIRE_NOW):
        stored = validate_wire(wire(case(ts=ts)))["ts"]
        assert len(stored) == 24 and stored[4] == "-" and stored.endswith("Z")
    assert validate_wire(wire(case(ts="2000-01-01T01:00:00+01:00")))["ts"] == "2000-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("org", "reason"),
    [
        ("o", None),
        ("o" * MAX_ORG_LENGTH, None),
        ("3f2b8a4e-6c1d-4e5f-9a7b-2c8d0e1f4a6b", None),
        ("Acme Org", None),
        ("o" * (MAX_ORG_LENGTH + 1), "too_long"),
        ("", "bad_org"),
        ("   ", "bad_org"),
        (None, "bad_org"),
        ("org\x00", "control_character"),
        (" org", "surrounding_whitespace"),
        ("org\ud800", "invalid_unicode"),
    ],
)
def test_check_org(org: Any, reason: str | None) -> None:
    if reason is None:
        assert check_org(org) == org
        return
    with pytest.raises(MeasurementError) as info:
        check_org(org)
    assert (info.value.reason, info.value.field) == (reason, "org")


# -- through a real edge: the agent's HTTP receiver and the ledger's ingest API ---------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Any]:
    testclient = pytest.importorskip("fastapi.testclient")
    from meterkit._sinks import SpoolSink
    from meterkit_agent.receivers.http import HttpReceiverConfig, create_receiver_app

    sink = SpoolSink(
        tmp_path / "received",
        "limits",
        max_segment_bytes=1 << 22,
        max_segment_age_seconds=60,
        max_spool_bytes=1 << 30,
        fsync=False,
    )
    yield testclient.TestClient(create_receiver_app(HttpReceiverConfig(), sink, None))
    sink.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    testclient = pytest.importorskip("fastapi.testclient")
    from meterkit_agent.ledger.api import create_app
    from meterkit_agent.ledger.store import Ledger

    return testclient.TestClient(create_app(Ledger(f"sqlite:///{tmp_path / 'limits.db'}")))


EDGE_CASES = [
    (case(account="a" * 400_000), "too_long", "account"),
    (case(who={"user": "u\x00"}), "control_character", "who.user"),
    (case(ts=1_767_225_600), "bad_timestamp", "ts"),
    (case(ts="0001-01-01T00:00:00Z"), "ts_out_of_range", "ts"),
    (case(measure={"calls": 2**63}), "number_out_of_range", "measure.calls"),
]


@pytest.mark.parametrize("edge", ["receiver", "ledger"])
def test_the_http_edges_refuse_with_a_400_naming_each_field(edge: str, request: pytest.FixtureRequest) -> None:
    client = request.getfixturevalue(edge)
    path = "/v1/measurements" if edge == "receiver" else "/organizations/o/measurements"
    for m, reason, field in EDGE_CASES:
        good = wire(case(uid="good-1"))
        body = json.dumps({"measurements": [good, {**wire(m), "uid": "bad-1"}]})
        answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (reason, answer.text[:200])
        [error] = answer.json()["errors"]
        assert (error["index"], error["uid"], error["reason"], error["field"]) == (1, "bad-1", reason, field)
        assert len(answer.content) < 2_000  # the refusal does not echo the 400,000 characters
