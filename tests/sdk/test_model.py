"""Bad input: strict mode raises a clear error naming meter, field and reason. Production
mode refuses in the SDK what it checks there (logged once, counted, written to the
rejected-measurements file); the rest is spooled, and the agent's validation names it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

import meterkit
from meterkit import MeasurementError, load_catalog
from meterkit._model import STRING_CATEGORIES, UidSource, build
from tests.conftest import CATALOG
from tests.sdk.helpers import agent_verdict, losses, refused_by_sdk, spooled

NOW = datetime.now(timezone.utc)

# (kwargs to record, reason, field)
BAD: list[tuple[dict[str, Any], str, str | None]] = [
    ({"meter": "no_such_meter", "measure": {"calls": 1}}, "unknown_meter", None),
    ({"meter": "api_calls", "measure": {"nope": 1}}, "unknown_field", "measure.nope"),
    ({"meter": "api_calls", "who": {"calls": "x"}}, "wrong_category", "who.calls"),
    ({"meter": "api_calls", "measure": {"calls": "12"}}, "wrong_type", "measure.calls"),
    ({"meter": "api_calls", "measure": {"calls": True}}, "wrong_type", "measure.calls"),
    ({"meter": "api_calls", "other": {"status": 1.5}}, "wrong_type", "other.status"),
    ({"meter": "api_calls", "measure": {"calls": float("nan")}}, "not_finite", "measure.calls"),
    ({"meter": "api_calls", "measure": {"calls": float("inf")}}, "not_finite", "measure.calls"),
    (
        {"meter": "api_calls", "metadata": {"request_id": "x" * 257}},
        "metadata_too_long",
        "metadata.request_id",
    ),
    (
        {"meter": "api_calls", "measure": {"calls": 1}, "ts": datetime(2026, 1, 1)},
        "bad_timestamp",
        "ts",
    ),  # naive
    (
        {"meter": "api_calls", "measure": {"calls": 1}, "ts": "2026-01-01T00:00:00"},
        "bad_timestamp",
        "ts",
    ),  # no offset
    ({"meter": "api_calls", "measure": {"calls": 1}, "ts": "yesterday"}, "bad_timestamp", "ts"),
    (
        {"meter": "api_calls", "measure": {"calls": 1}, "ts": NOW + timedelta(hours=1)},
        "ts_in_future",
        "ts",
    ),
    (
        {
            "meter": "api_calls",
            "measure": {"calls": 1},
            "ts": NOW,
            "ets": NOW - timedelta(seconds=1),
        },
        "bad_timestamp",
        "ets",
    ),
    ({"meter": "api_calls", "account": "", "measure": {"calls": 1}}, "missing_account", "account"),
    (
        {"meter": "api_calls", "account": "   ", "measure": {"calls": 1}},
        "missing_account",
        "account",
    ),
    ({"meter": "api_calls", "uid": "", "measure": {"calls": 1}}, "bad_uid", "uid"),
    ({"meter": "api calls", "measure": {"calls": 1}}, "bad_meter_code", None),
]


def record_kwargs(case: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(case)
    kwargs.setdefault("account", "acme")
    return kwargs


@pytest.mark.parametrize(("case", "reason", "field"), BAD)
def test_strict_mode_raises_at_the_call_site(case: dict[str, Any], reason: str, field: str | None, spool: Path) -> None:
    meterkit.configure(catalog=CATALOG, spool_dir=spool, mode="strict")
    kwargs = record_kwargs(case)
    with pytest.raises(MeasurementError) as info:
        meterkit.record(kwargs.pop("meter"), **kwargs)
    assert info.value.reason == reason
    assert info.value.field == field
    if reason != "bad_meter_code":
        assert info.value.meter == case["meter"]
        assert repr(case["meter"]) in str(info.value)


SDK_REFUSES = [(c, r, f) for c, r, f in BAD if refused_by_sdk(c, r, f)]
#: an undeclared string field is dropped in the SDK (only what the catalog declares leaves
#: the application): neither refused there nor left for the agent
SDK_DROPS = [
    (c, r, f)
    for c, r, f in BAD
    if r in ("unknown_field", "wrong_category") and f is not None and f.partition(".")[0] in STRING_CATEGORIES
]
AGENT_REFUSES = [(c, r, f) for c, r, f in BAD if not refused_by_sdk(c, r, f) and (c, r, f) not in SDK_DROPS]


@pytest.mark.parametrize(("case", "reason", "field"), SDK_REFUSES)
def test_production_mode_counts_and_keeps_rejects(
    case: dict[str, Any],
    reason: str,
    field: str | None,
    spool: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    kwargs = record_kwargs(case)
    meter = kwargs.pop("meter")
    for _ in range(3):
        meterkit.record(meter, **kwargs)  # never raises
    meterkit.record("api_calls", account="acme", measure={"calls": 1})
    assert meterkit.flush(5)
    assert len(spooled(spool)) == 1  # the good one is kept
    assert losses(spool) == {f"rejected:{reason}": 3}
    assert meterkit.stats()["lost"] == {f"rejected:{reason}": 3}
    rejected = [
        orjson.loads(line) for f in (spool / "rejected").glob("*.jsonl") for line in f.read_bytes().splitlines()
    ]
    assert [r["reason"] for r in rejected] == [reason] * 3
    assert rejected[0]["field"] == field
    assert rejected[0]["record"]["meter"] == meter
    # logged once per (meter, reason), not three times
    assert sum(1 for r in caplog.records if "rejected" in r.getMessage()) == 1
    assert oct((spool / "rejected").stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in (spool / "rejected").iterdir())


@pytest.mark.parametrize(("case", "reason", "field"), AGENT_REFUSES)
def test_production_mode_spools_what_the_agent_validates_and_the_agent_names_it(
    case: dict[str, Any], reason: str, field: str | None, spool: Path
) -> None:
    """Catalog validation is the agent's in production mode: the SDK spools the
    measurement (nothing lost) and the agent's validation refuses it alone, naming the
    same reason and field as strict mode does at the call site."""
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    kwargs = record_kwargs(case)
    meter = kwargs.pop("meter")
    meterkit.record(meter, **kwargs)
    meterkit.record("api_calls", account="acme", measure={"calls": 1})
    assert meterkit.flush(5)
    bad, good = spooled(spool)
    assert meterkit.stats()["lost"] == {} and losses(spool) == {}
    assert agent_verdict(bad, load_catalog(CATALOG)) == (reason, field)
    assert agent_verdict(good, load_catalog(CATALOG)) is None


@pytest.mark.parametrize(("case", "reason", "field"), SDK_DROPS)
def test_production_mode_drops_an_undeclared_string_field_and_counts_it(
    case: dict[str, Any], reason: str, field: str, spool: Path
) -> None:
    meterkit.configure(catalog=CATALOG, spool_dir=spool)
    kwargs = record_kwargs(case)
    meter = kwargs.pop("meter")
    meterkit.record(meter, **kwargs)
    assert meterkit.flush(5)
    (written,) = spooled(spool)
    category, _, code = field.partition(".")
    assert code not in written.get(category, {})
    assert meterkit.stats()["privacy"] == {"dropped:undeclared_field": 1}
    assert agent_verdict(written, load_catalog(CATALOG)) is None  # what remains is valid


def test_without_a_catalog_any_meter_is_accepted_but_types_are_checked() -> None:
    ok = build(
        "anything",
        "acme",
        0,
        "u1",
        [{"user": 42}, None, None, None, None, {"n": Decimal("1.5")}, None, None],
    )
    assert ok["who"] == {"user": "42"}  # an int id is written as text
    assert ok["measure"] == {"n": 1.5}
    with pytest.raises(MeasurementError, match="field code"):
        build("anything", "acme", 0, "u1", [None, None, None, None, None, {"bad-code": 1}, None, None])


def test_too_many_fields_without_a_catalog() -> None:
    many = {f"f{i}": i for i in range(16)}
    with pytest.raises(MeasurementError) as info:
        build("m", "acme", 0, "u1", [None, None, None, None, None, many, None, None])
    assert info.value.reason == "too_many_fields"


def test_wire_shape_and_timestamps() -> None:
    ts = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    out = build(
        "m",
        "acme",
        0,
        "u1",
        [None] * 5 + [{"n": 1}, None, None],
        user_ts=ts,
        ets="2026-03-01T10:31:00Z",
    )
    assert out == {
        "uid": "u1",
        "meter": "m",
        "account": "acme",
        "ts": "2026-03-01T10:30:15.123Z",
        "ets": "2026-03-01T10:31:00.000Z",
        "measure": {"n": 1},
    }


def test_none_values_and_empty_categories_are_left_out() -> None:
    out = build("m", "acme", 0, "u1", [{"a": None}, {}, None, None, None, {"n": 2}, None, None])
    assert set(out) == {"uid", "meter", "account", "ts", "measure"}


def test_uids_are_uuid_shaped_unique_and_new_after_reseed() -> None:
    import uuid

    source = UidSource()
    first = [source.format(source.next()) for _ in range(1000)]
    assert len(set(first)) == 1000
    parsed = uuid.UUID(first[0])
    assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
    prefix = source.prefix
    source.reseed()
    assert source.prefix != prefix


def test_derived_fields_travel_on_the_wire_but_are_not_recorded_by_applications(catalog: meterkit.Catalog) -> None:
    from meterkit._model import validate_wire

    wire = {
        "uid": "u",
        "meter": "data_downloaded",
        "account": "a",
        "ts": "2026-01-01T00:00:00Z",
        "measure": {"bytes": 1, "mib": 0.5},
    }
    assert validate_wire(wire, catalog)["measure"] == {"bytes": 1, "mib": 0.5}
    with pytest.raises(MeasurementError) as info:
        build("data_downloaded", "a", 0, "u", [None] * 5 + [{"mib": 1}, None, None], catalog=catalog)
    assert info.value.reason == "unknown_field"


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T10:00:00.123Z",
        "2026-01-01T10:00:00Z",
        "2026-01-01T10:00:00.123+02:00",
        "2026-01-01T10:00:00.123456Z",
    ],
)
def test_the_wire_timestamp_fast_path_agrees_with_the_full_parser(text: str) -> None:
    from meterkit._timefmt import parse_ts, wire_ts_ns

    assert wire_ts_ns(text) == parse_ts(text)


@pytest.mark.parametrize("text", ["2026-13-01T10:00:00.123Z", "2026-01-01T10:00:00.abcZ", "yesterday"])
def test_the_wire_timestamp_fast_path_names_bad_input(text: str) -> None:
    from meterkit._timefmt import wire_ts_ns

    with pytest.raises(ValueError, match="not an ISO 8601 timestamp"):
        wire_ts_ns(text)


def test_tally_sums_past_64_bits_stay_exact_as_digits() -> None:
    from meterkit._model import tally

    big = 2**62
    rows = [{"meter": "m", "account": "a", "ts": "2026-01-01T10:00:00.000Z", "measure": {"n": big}}] * 4
    [entry] = tally(rows)
    assert entry["sums"] == {"measure.n": str(4 * big)} and entry["count"] == 4
    assert orjson.dumps(entry)  # a journal entry can always be written
