"""Batch frames (spool format version 2): what production mode writes, read back as the
agent reads it (``batch_records``), with the tally beside it, and what the SDK still
refuses alone (numbers that are not finite, values JSON cannot carry, oversized rows)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meterkit
from meterkit import _framer, _frames
from meterkit._frames import ROW_SIZE, WIDE, batch_records, encode_batch, tally_rows
from meterkit._model import tally, validate_wire
from meterkit._spool import KIND_BATCH, KIND_CONTROL, read_segment, segments
from meterkit._timefmt import iso_ms
from tests.sdk.helpers import controls, losses, spooled

HOUR = 3_600_000_000_000


def frames_of(spool: Path) -> list[Any]:
    return [f for seg in segments(spool) for f in read_segment(seg).frames]


def by_key(entries: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[int, dict[str, Any]]]:
    out = {}
    for e in entries:
        key = (e["meter"], e["account"], e["hour"])
        assert key not in out
        out[key] = (e["count"], e["sums"])
    return out


def test_a_batch_frame_reads_back_as_the_exact_wire_measurements(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool)
    start = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    before = iso_ms(time.time_ns())
    client.record("api_calls", account="acme", measure={"calls": 1}, who={"user": "u1"})
    client.record("jobs", account="globex", measure={"seconds": 2.5}, cost={"usd": 3})
    client.record("jobs", account="acme", ts=start, ets=start + timedelta(seconds=90), measure={"seconds": 90})
    client.record("jobs", account="acme", uid="order-17", ts="2026-03-01T13:00:00+01:00")
    with meterkit.context(account="initech", where={"region": "eu"}):
        client.record("api_calls", measure={"calls": 2})
    assert client.shutdown(5)
    after = iso_ms(time.time_ns())

    (batch,) = [f for f in frames_of(spool) if f.kind == KIND_BATCH]  # one write, one frame
    header = read_segment(segments(spool)[0]).header
    assert header is not None and header["validated"] is None and header["format"] == 2
    got = batch_records(batch.payload)
    assert len({m["uid"] for m in got}) == 5
    assert got[3]["uid"] == "order-17"
    for m in got:
        assert validate_wire(m) == m  # already in wire shape, exactly
    stripped = [{k: v for k, v in m.items() if k not in ("uid", "ts")} for m in got]
    assert stripped == [
        {"meter": "api_calls", "account": "acme", "who": {"user": "u1"}, "measure": {"calls": 1}},
        {"meter": "jobs", "account": "globex", "measure": {"seconds": 2.5}, "cost": {"usd": 3}},
        {"meter": "jobs", "account": "acme", "ets": "2026-03-01T12:01:30.123Z", "measure": {"seconds": 90}},
        {"meter": "jobs", "account": "acme"},
        {"meter": "api_calls", "account": "initech", "where": {"region": "eu"}, "measure": {"calls": 2}},
    ]
    assert got[2]["ts"] == "2026-03-01T12:00:00.123Z"
    assert got[3]["ts"] == "2026-03-01T12:00:00.000Z"  # an instant, whatever the offset given
    assert all(before <= got[i]["ts"] <= after for i in (0, 1, 4))
    # The tally written in the same write counts exactly what the frame holds.
    (tallied,) = controls(spool, "tally")
    assert by_key(tallied["entries"]) == by_key(tally(got))


def test_uids_are_unique_across_batches_strict_records_and_a_fork_free_restart(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool, max_batch_size=7, flush_interval_millis=10)
    for i in range(100):
        client.record("m", account="a", measure={"n": i})
    assert client.shutdown(5)
    late = meterkit.Client(spool_dir=spool, mode="strict")
    late.record("m", account="a", measure={"n": 100})
    assert late.shutdown(5)
    written = spooled(spool)
    assert sorted(m["measure"]["n"] for m in written) == list(range(101))
    assert len({m["uid"] for m in written}) == 101
    assert len([f for f in frames_of(spool) if f.kind == KIND_BATCH]) >= 100 // 7


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"measure": {"calls": float("nan")}}, "not_finite", "measure.calls"),
        ({"cost": {"usd": float("-inf")}}, "not_finite", "cost.usd"),
        ({"who": {"user": float("inf")}}, "wrong_type", "who.user"),  # never a silent null
    ],
)
def test_a_number_that_is_not_finite_is_refused_not_written_as_null(
    fields: dict[str, Any], reason: str, field: str, spool: Path
) -> None:
    client = meterkit.Client(spool_dir=spool)
    client.record("m", account="a", measure={"calls": 1})
    client.record("m", account="a", **fields)
    client.record("m", account="a", measure={"calls": 3})
    assert client.shutdown(5)
    assert [m["measure"]["calls"] for m in spooled(spool)] == [1, 3]
    assert losses(spool) == {f"rejected:{reason}": 1}
    (line,) = (spool / "rejected").glob("*.jsonl")
    entry = orjson.loads(line.read_bytes())
    assert (entry["reason"], entry["field"]) == (reason, field)


def test_a_none_value_is_left_out_as_validation_leaves_it_out(spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool)
    client.record("m", account="a", measure={"calls": 1, "bytes": None}, who={"user": None})
    assert client.shutdown(5)
    assert [{k: v for k, v in m.items() if k not in ("uid", "ts")} for m in spooled(spool)] == [
        {"meter": "m", "account": "a", "measure": {"calls": 1}}
    ]
    assert losses(spool) == {}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"who": {"user": "u\ud800"}}, "invalid_unicode"),  # a lone surrogate: not UTF-8
        ({"measure": {"calls": 2**64}}, "number_out_of_range"),
        ({"measure": {"calls": Decimal("1e400")}}, "number_out_of_range"),
        ({"who": {"user": datetime(2026, 1, 1, tzinfo=timezone.utc)}}, "wrong_type"),
        ({"who": {3: "x"}}, "bad_field_code"),
    ],
)
def test_a_value_json_cannot_carry_is_refused_alone_in_its_batch(bad: dict[str, Any], reason: str, spool: Path) -> None:
    client = meterkit.Client(spool_dir=spool)
    for i in range(50):
        client.record("m", account="a", measure={"calls": i})
    client.record("m", account="a", **bad)
    client.record("m", account="a", measure={"calls": Decimal("2.5")})  # made a float, as validation does
    for i in range(50, 100):
        client.record("m", account="a", measure={"calls": i})
    assert client.shutdown(5)
    calls = [m["measure"]["calls"] for m in spooled(spool)]
    assert calls == [*range(50), 2.5, *range(50, 100)]
    assert losses(spool) == {f"rejected:{reason}": 1}
    (tallied,) = controls(spool, "tally")
    assert tallied["entries"][0]["count"] == 101


def test_a_batch_past_the_frame_limit_is_split_and_a_row_past_it_refused(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_framer, "MAX_FRAME_BYTES", 2_000)
    client = meterkit.Client(spool_dir=spool)
    for i in range(40):
        client.record("m", account="a", measure={"calls": i})
    client.record("m", account="a", metadata={"note": "x" * 3_000})
    assert client.shutdown(5)
    frames = frames_of(spool)
    assert len([f for f in frames if f.kind == KIND_BATCH]) > 1
    assert all(len(f.payload) < 2_000 for f in frames if f.kind == KIND_BATCH)
    assert sorted(m["measure"]["calls"] for m in spooled(spool)) == list(range(40))
    assert losses(spool) == {"rejected:too_large": 1}
    (tallied,) = controls(spool, "tally")  # one write: the frames and their one tally
    assert tallied["entries"][0]["count"] == 40
    kinds = [f.kind for f in frames]
    assert kinds.index(KIND_CONTROL) > max(i for i, k in enumerate(kinds) if k == KIND_BATCH)


def test_a_million_measurements_are_recorded_without_waiting_and_spooled_with_none_lost(spool: Path) -> None:
    # queue_full_timeout_millis=0: had the queue ever been full, record() would have lost
    # measurements (counted as queue_full) rather than wait. None lost: it never waited.
    client = meterkit.Client(spool_dir=spool, queue_full_timeout_millis=0)
    record = client.record
    measure = {"calls": 1}
    for _ in range(1_000_000):
        record("api_calls", account="acme", measure=measure)
    assert client.shutdown(120)
    stats = client.stats()
    assert stats["lost"] == {} and stats["written"] == 1_000_000
    count = 0
    total = 0
    for f in frames_of(spool):
        if f.kind == KIND_BATCH:
            count += len(batch_records(f.payload))
        elif f.kind == KIND_CONTROL:
            body = f.json()
            if body["type"] == "tally":
                total += sum(e["sums"]["measure.calls"] for e in body["entries"])
    assert count == 1_000_000 and total == 1_000_000


def rows(specs: list[tuple[Any, ...]], now: int) -> list[Any]:
    flat: list[Any] = []
    for offset, meter, account, measure in specs:
        flat.extend((now + offset, meter, account, None, None, None, None, None, measure, None, None))
    return flat


NOW = 1_790_000_000 * 1_000_000_000 // HOUR * HOUR + 10


@pytest.mark.parametrize(
    "specs",
    [
        [(i, "m", "a", {"calls": 1}) for i in range(100)],
        [(i, "m", f"a{i % 7}", {"calls": i, "bytes": 0.1 * i}) for i in range(100)],
        [(i * HOUR // 3, "m", "a", {"calls": 1}) for i in range(10)],  # several hours
        [(0, "m", "a", {"x": 1}), (1, "m", "a", {"y": 2.5}), (2, "m", "a", {"x": 2, "y": 1})],  # codes differ
        [(0, "m", "a", {"x": True}), (1, "m", "a", {"x": "7"}), (2, "m", "a", {"x": 3})],  # not summed
        [(0, "m", "a", {"x": 2**63 - 1}), (1, "m", "a", {"x": 2**63 - 1})],  # a sum past 64 bits
        [(0, "m", "a", None), (1, "n", "b", {"x": 1.5}), (2, "m", "a", {"x": 1e308}), (3, "m", "a", {"x": 1e308})],
        [(0, "m", "a", {"x": 0.1}), (1, "m", "a", {"x": 0.2}), (2, "m", "a", {"x": 0.3})],  # order matters
    ],
)
def test_the_tally_of_a_batch_equals_the_tally_of_its_decoded_records(specs: list[tuple[Any, ...]]) -> None:
    flat = rows(specs, NOW)
    decoded = batch_records(encode_batch("p-", 1, flat))
    assert by_key(tally_rows(flat) or []) == by_key(tally(decoded))
    assert tally_rows(flat) is not None


def test_batch_records_turns_malformed_rows_into_measurements_validation_refuses() -> None:
    good = [NOW, "m", "a", None, None, None, None, None, {"calls": 1}, None, None]
    wide = [NOW, "m", "a", *[None] * 5, {"calls": 1}, None, None, NOW + 5_000_000, "own-uid"]
    payload = orjson.dumps({"uids": "p-", "first": 5, "width": WIDE, "rows": [*good, None, None, *wide, 1, 2]})
    got = batch_records(payload)
    assert [m["uid"] for m in got] == ["p-000000000005", "own-uid", "p-000000000007"]
    assert got[1]["ets"] == iso_ms(NOW + 5_000_000)
    assert validate_wire(got[0]) == got[0]
    with pytest.raises(meterkit.MeasurementError) as info:
        validate_wire(got[2])  # a torn last row
    assert info.value.reason == "unknown_key"
    bad_ts = orjson.dumps({"uids": "p-", "first": 0, "width": ROW_SIZE, "rows": ["soon", *good[1:]]})
    with pytest.raises(meterkit.MeasurementError) as info:
        validate_wire(batch_records(bad_ts)[0])
    assert info.value.reason == "bad_timestamp"


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"uids": "p-", "first": "0", "rows": []}'])
def test_batch_records_says_when_a_payload_is_not_a_batch_frame(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a batch frame"):
        batch_records(payload)


@settings(max_examples=300, deadline=None)
@given(
    first=st.one_of(st.integers(0, 2**48 - 1), st.integers(4090, 4100), st.just(2**48 - 5000)),
    count=st.integers(0, 9000),
)
def test_uids_of_a_plain_batch_are_the_counter_after_the_prefix(first: int, count: int) -> None:
    count = min(count, 2**48 - first)  # a batch whose counter would wrap is not a plain one
    assert _frames._uids("p-", first, count) == [_frames._uid("p-", first + i) for i in range(count)]
