"""Corrections in the SDK: deterministic uids, exact negation, replacements and their chain,
the control record, and the client writing them all in one write."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import meterkit
from meterkit._client import write_with_control
from meterkit._corrections import (
    CORRECTIONS_NAMESPACE,
    MAX_UIDS_PER_CONTROL,
    content,
    control_record,
    replacement,
    replacement_uid,
    reversal,
    reversal_uid,
)
from meterkit._model import validate_wire
from meterkit._spool import KIND_CONTROL, KIND_MEASUREMENT, iter_records, segments
from tests.conftest import CATALOG
from tests.sdk.helpers import controls, spooled

ORIGINAL: dict[str, Any] = {
    "uid": "u-1",
    "meter": "api_calls",
    "account": "acme",
    "ts": "2026-01-05T10:00:00.000Z",
    "ets": "2026-01-05T10:00:01.500Z",
    "what": {"endpoint": "/search"},
    "other": {"status": "ok"},
    "metadata": {"request_id": "r-9"},
    "measure": {"calls": 3, "seconds": 0.1},
}


def test_uids_derive_from_the_original_in_a_namespace_fixed_forever() -> None:
    assert reversal_uid("u-1") == str(uuid.uuid5(uuid.UUID("3d4c8a5e-9f61-5b2e-8a07-c1e2f3a4b5d6"), "reversal\x1fu-1"))
    assert replacement_uid("u-1") == str(uuid.uuid5(CORRECTIONS_NAMESPACE, "replacement\x1fu-1"))
    assert reversal_uid("u-1") == reversal_uid("u-1") != reversal_uid("u-2")
    assert reversal_uid("u-1") != replacement_uid("u-1")


def test_a_reversal_negates_every_number_and_keeps_everything_else() -> None:
    original = {**ORIGINAL, "income": {"fee": 12.5}, "cost": {"cpu": -2, "free": 0, "zero": 0.0}, "batch": "bf-1"}
    r = reversal(original)
    assert r["uid"] == reversal_uid("u-1") and r["correction"] == {"of": "u-1", "kind": "reversal"}
    assert "batch" not in r  # a correction never belongs to a backfill batch
    assert r["measure"] == {"calls": -3, "seconds": -0.1}
    assert r["income"] == {"fee": -12.5}
    assert r["cost"] == {"cpu": 2, "free": 0, "zero": 0.0}
    assert str(r["cost"]["zero"]) == "0.0"  # not -0.0
    for key in ("meter", "account", "ts", "ets", "what", "other", "metadata"):
        assert r[key] == original[key]
    # A float negates exactly: the original and its reversal sum to zero, as decimals too.
    for category in ("measure", "income", "cost"):
        for code, value in original[category].items():
            assert Decimal(repr(value)) + Decimal(repr(r[category][code])) == 0


def test_a_reversal_is_the_same_each_time_and_validates_against_the_catalog() -> None:
    catalog = meterkit.load_catalog(CATALOG)
    first, second = reversal(ORIGINAL), reversal(dict(ORIGINAL))
    assert first == second
    assert validate_wire(first, catalog) == first


def test_a_replacement_applies_changes_and_removals() -> None:
    p = replacement(ORIGINAL, {"measure.calls": 4, "measure.seconds": None, "who.user": "u7", "other.status": None})
    assert p["uid"] == replacement_uid("u-1") and p["correction"] == {"of": "u-1", "kind": "replacement"}
    assert p["measure"] == {"calls": 4}
    assert "other" not in p  # its last field removed: the category goes too
    assert p["who"] == {"user": "u7"}
    assert p["ts"] == ORIGINAL["ts"] and p["account"] == "acme"
    assert ORIGINAL["measure"] == {"calls": 3, "seconds": 0.1}  # the original is not touched


def test_a_bad_change_is_named() -> None:
    with pytest.raises(meterkit.MeasurementError) as caught:
        replacement(ORIGINAL, {"calls": 4})
    assert caught.value.problem.reason == "bad_change" and caught.value.problem.field == "calls"


def test_amending_twice_corrects_the_live_replacement() -> None:
    p = replacement(ORIGINAL, {"measure.calls": 4})
    q = replacement(p, {"measure.calls": 5})
    r = reversal(p)
    assert q["uid"] == replacement_uid(p["uid"]) and q["correction"]["of"] == p["uid"]
    assert r["uid"] == reversal_uid(p["uid"]) and r["measure"]["calls"] == -4
    assert len({ORIGINAL["uid"], p["uid"], q["uid"], r["uid"], reversal_uid("u-1")}) == 5
    assert content(q) == {**content(ORIGINAL), "measure": {"calls": 5, "seconds": 0.1}}


def test_validation_refuses_a_correction_whose_uid_is_not_derived() -> None:
    forged = {**reversal(ORIGINAL), "uid": "anything"}
    with pytest.raises(meterkit.MeasurementError) as caught:
        validate_wire(forged)
    assert caught.value.problem.reason == "bad_correction" and caught.value.problem.field == "uid"


def test_the_control_record_id_derives_from_the_uids_written() -> None:
    a = control_record("amend", "double counted", "ann@host", "2026-01-06T00:00:00.000Z", ["u-1"], ["x", "y"])
    b = control_record("amend", "another reason", "bob@host", "2026-02-01T00:00:00.000Z", ["u-1"], ["y", "x"])
    assert a["id"] == b["id"] and a["type"] == "correction" and "batch" not in a
    assert a == {
        "type": "correction",
        "id": a["id"],
        "action": "amend",
        "reason": "double counted",
        "by": "ann@host",
        "at": "2026-01-06T00:00:00.000Z",
        "of": ["u-1"],
        "uids": ["x", "y"],
    }
    c = control_record("revert", "bad import", "ann@host", "t", ["u-1"], ["x"], batch="bf-1")
    assert c["batch"] == "bf-1" and c["id"] != a["id"]


@pytest.mark.parametrize(
    ("action", "reason", "uids", "message"),
    [
        ("delete", "r", ["x"], "action"),
        ("cancel", "  ", ["x"], "reason"),
        ("revert", "r", [str(i) for i in range(MAX_UIDS_PER_CONTROL + 1)], "split"),
    ],
)
def test_a_control_record_refuses_what_it_cannot_say(action: str, reason: str, uids: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        control_record(action, reason, "a@b", "t", ["u"], uids)


def test_the_client_writes_corrections_their_tally_and_the_control_record_in_one_write(spool: Path) -> None:
    client = meterkit.Client(CATALOG, spool)
    client.record("api_calls", account="acme", measure={"calls": 1})  # queued before: written first
    records = [reversal(ORIGINAL), replacement(ORIGINAL, {"measure.calls": 2})]
    control = control_record("amend", "r", "a@b", "t", ["u-1"], [r["uid"] for r in records])
    write_with_control(client, records, control)
    client.shutdown(5)
    [segment] = segments(spool)
    frames = [(f.kind, f.json()) for _, f in iter_records(spool) if f.kind in (KIND_MEASUREMENT, KIND_CONTROL)]
    corrections = [i for i, (kind, body) in enumerate(frames) if kind == KIND_MEASUREMENT and "correction" in body]
    assert [frames[i][1] for i in corrections] == records
    after = [body for _, body in frames[corrections[-1] + 1 :]]
    assert after[-1] == control  # the control record follows what it names, in the same segment
    tally = after[0]
    assert tally["type"] == "tally" and tally["entries"] == [
        {
            "meter": "api_calls",
            "account": "acme",
            "hour": "2026-01-05T10:00:00Z",
            "count": 2,
            "sums": {"measure.calls": -1, "measure.seconds": 0.0},  # -3 + 2 calls; -0.1 + 0.1 s
        }
    ]
    assert [c["type"] for c in controls(spool, "correction")] == ["correction"]
    assert len(spooled(spool)) == 3 and segment.exists()


def test_submit_batch_stamps_the_batch_id(spool: Path) -> None:
    client = meterkit.Client(CATALOG, spool)
    rows = [
        {"meter": "api_calls", "account": "acme", "ts": "2025-01-01T00:00:00Z", "measure": {"calls": n}} for n in (1, 2)
    ]
    result = client.submit_batch(rows, batch="bf-0123456789abcdef")
    client.shutdown(5)
    assert result.accepted == 2
    got = spooled(spool)
    assert [m["batch"] for m in got] == ["bf-0123456789abcdef"] * 2
    assert [validate_wire(m, meterkit.load_catalog(CATALOG)) for m in got] == got


def test_submit_batch_refuses_a_bad_batch_id_before_any_row(spool: Path) -> None:
    client = meterkit.Client(CATALOG, spool)
    rows = [{"meter": "api_calls", "account": "acme", "ts": "2025-01-01T00:00:00Z", "measure": {"calls": 1}}]
    with pytest.raises(meterkit.MeasurementError) as caught:
        client.submit_batch(rows, batch=" padded ")
    client.shutdown(5)
    assert caught.value.problem.reason == "bad_batch"
    assert spooled(spool) == []


def test_one_helper_says_what_a_correction_is() -> None:
    from meterkit._corrections import correction_of, is_reversal

    assert correction_of(reversal(ORIGINAL)) == ("u-1", "reversal") and is_reversal(reversal(ORIGINAL))
    assert correction_of(replacement(ORIGINAL, {})) == ("u-1", "replacement")
    assert not is_reversal(replacement(ORIGINAL, {}))
    for junk in ("junk", {"of": 3, "kind": "reversal"}, {"of": "u", "kind": "undo"}, None):
        assert correction_of({**ORIGINAL, "correction": junk}) is None


def test_a_reversal_mismatch_names_each_difference() -> None:
    from meterkit._corrections import _NUMERIC, reversal_mismatch
    from meterkit._model import NUMERIC_CATEGORIES

    assert _NUMERIC == NUMERIC_CATEGORIES  # a copy only because _model imports _corrections
    assert reversal_mismatch(reversal(ORIGINAL), ORIGINAL) == []
    assert reversal_mismatch(reversal({**ORIGINAL, "batch": "bf-1"}), {**ORIGINAL, "batch": "bf-1"}) == []
    bad = {**reversal(ORIGINAL), "measure": {"calls": -1, "seconds": -0.1}, "ts": "2026-01-05T11:00:00.000Z"}
    assert reversal_mismatch(bad, ORIGINAL) == [
        ("measure.calls", -1, -3),
        ("ts", "2026-01-05T11:00:00.000Z", ORIGINAL["ts"]),
    ]
    assert reversal_mismatch({**reversal(ORIGINAL), "measure": {"calls": -3.0, "seconds": -0.1}}, ORIGINAL) == [
        ("measure.calls", -3.0, -3)  # equal as numbers, not as content
    ]


@pytest.mark.parametrize(
    ("reason", "named"),
    [("", "must say something"), ("a\nb", r"U\+000A at position 1"), ("\x9b", r"U\+009B"), ("x" * 2001, "2001")],
)
def test_a_control_record_refuses_a_reason_a_journal_cannot_show(reason: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        control_record("cancel", reason, "a@h", "2026-01-06T00:00:00.000Z", ["u-1"], [reversal_uid("u-1")])
    with pytest.raises(ValueError, match="by holds the control character"):
        control_record("cancel", "ok", "a\x1b@h", "2026-01-06T00:00:00.000Z", ["u-1"], [reversal_uid("u-1")])


def test_derived_fields_are_computed_by_one_function() -> None:
    from meterkit._derive import derive, plan

    catalog = meterkit.load_catalog(CATALOG)
    meter = catalog.meters["data_downloaded"]
    m = {
        "uid": "d",
        "meter": meter.code,
        "account": "a",
        "ts": "2026-01-05T10:00:00.000Z",
        "measure": {"bytes": 3 * 2**20},
    }
    derived = derive(meter, plan(meter), m)
    assert derived.values == [("measure", "mib", 3)] and derived.skipped == []
    derived.store_into(m)
    assert m["measure"] == {"bytes": 3 * 2**20, "mib": 3}
    skipped = derive(meter, plan(meter), {**m, "measure": {"bytes": "lots"}}).skipped
    assert [code for code, _ in skipped] == ["mib"]  # cannot be computed: left out, and said why
