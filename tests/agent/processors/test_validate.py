"""The validate processor's short path never decides anything ``validate_wire`` would
decide differently: a measurement it keeps as it is, ``validate_wire`` returns unchanged;
everything else gets ``validate_wire``'s own answer (normalised, or refused with its
reason). Checked on hand-made edge cases and on generated measurements."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterkit import MeasurementError
from meterkit._model import validate_wire
from meterkit._timefmt import iso_ms
from meterkit_agent.processors.validate import ShortPath, ValidateConfig, ValidateProcessor, all_plain, plain, printable

CATALOG = """\
meters:
  - code: api_calls
    name: API calls
    data_fields:
      - {code: calls, name: Calls, category: measure}
      - {code: region, name: Region, category: where}
      - {code: note, name: Note, category: metadata}
    derived_fields:
      - {code: double, name: Double, category: measure, calculation: "calls * 2"}
"""

NOW = time.time_ns()
TS = iso_ms(NOW - 60 * 10**9)


def good(**changes: Any) -> dict[str, Any]:
    """A good measurement with ``changes``; a change to ``...`` leaves that key out."""
    m: dict[str, Any] = {"uid": "u-1", "meter": "api_calls", "account": "acme", "ts": TS, "measure": {"calls": 3}}
    m.update(changes)
    return {k: v for k, v in m.items() if v is not Ellipsis}


def answer(m: Any, catalog: Any) -> tuple[str, Any]:
    try:
        return "kept", validate_wire(m, catalog, NOW)
    except MeasurementError as exc:
        return "rejected", f"invalid:{exc.reason}"


def processed(processor: ValidateProcessor, m: Any) -> tuple[str, Any]:
    kept, rejected = processor([m])
    if kept:
        return "kept", kept[0]
    return "rejected", rejected[0].reason


@pytest.fixture(params=["no catalog", "catalog"])
def processor(request: pytest.FixtureRequest, tmp_path: Path) -> ValidateProcessor:
    if request.param == "no catalog":
        return ValidateProcessor(ValidateConfig())
    (tmp_path / "meters.yaml").write_text(CATALOG)
    return ValidateProcessor(ValidateConfig(catalog=tmp_path / "meters.yaml"))


EDGES = [
    good(),
    good(where={"region": "eu"}, metadata={"note": "x" * 256}),
    good(metadata={"note": "x" * 257}),  # too long for metadata
    good(where={"region": "x" * 501}),
    good(measure={"calls": 2**63}),  # past 64 bits
    good(measure={"calls": -(2**63)}),
    good(measure={"calls": float("nan")}),
    good(measure={"calls": True}),
    good(measure={"calls": None}),  # left out by validate_wire: not unchanged
    good(measure={"calls": 1.5, "double": 3.0}),  # a derived field, allowed on the wire
    good(measure={}),
    good(who=None),
    good(measure={"nope": 1}),
    good(where={"calls": "1"}),  # a measure field in the wrong category
    good(ts="2026-01-01T00:00:00Z"),  # another spelling: normalised
    good(ts="2026-01-01 00:00:00.000Z"),
    good(ts=iso_ms(NOW + 86_400 * 10**9)),  # in the future (a day: still so however long the suite runs)
    good(ts="1999-12-31T23:59:59.999Z"),
    good(ts=1_700_000_000),
    good(ts=...),
    good(ets=TS),
    good(ets=None),
    good(uid=""),
    good(uid=" u"),
    good(uid="u\x00"),
    good(uid="u\u00a0x"),  # not printable, yet allowed in an identifier
    good(uid=7),
    good(uid=["u"]),
    good(account=""),
    good(account="   "),
    good(account=["acme"]),
    good(account="a\tb"),
    good(meter="unknown_meter"),
    good(meter="bad meter"),
    good(meter={"x": 1}),
    good(extra=1),
    good(what={"k": 1}),
    good(what="not an object"),
    good(**{"who": {f"f{i}": "v" for i in range(16)}}),
    ["not", "a", "measurement"],
    "text",
]


@pytest.mark.parametrize("m", EDGES, ids=range(len(EDGES)))
def test_the_processor_answers_as_validate_wire_does(processor: ValidateProcessor, m: Any) -> None:
    expected = answer(m, processor.catalog)
    assert processed(processor, m) == expected
    if plain(m, processor.short, iso_ms(NOW + 5 * 60 * 10**9)):
        assert expected == ("kept", m)


def test_trusted_records_pass_untouched_and_the_rest_are_checked() -> None:
    processor = ValidateProcessor(ValidateConfig())
    bad = good(uid="")
    kept, rejected = processor([good(), bad, good(uid="u-2")], [True, False, False])
    assert [m["uid"] for m in kept] == ["u-1", "u-2"]
    assert [(r.measurement, r.reason, r.stage) for r in rejected] == [(bad, "invalid:bad_uid", "validate")]
    assert processor([bad], [True]) == ([bad], [])  # its writer validated it under the same rules


values = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
codes = st.sampled_from(["calls", "region", "note", "double", "bad code", "x", "1x"])
records = st.fixed_dictionaries(
    {
        "uid": st.one_of(st.text(max_size=5), st.just("u-1")),
        "meter": st.sampled_from(["api_calls", "other", "", "a b"]),
        "account": st.one_of(st.text(max_size=4), st.just("acme")),
        "ts": st.one_of(st.just(TS), st.text(max_size=3), st.just("2026-01-01T00:00:00.000+00:00")),
    },
    optional={
        "measure": st.dictionaries(codes, values, max_size=3),
        "where": st.dictionaries(codes, values, max_size=3),
        "metadata": st.dictionaries(codes, values, max_size=2),
        "ets": st.just(TS),
    },
)


@settings(max_examples=200, deadline=None)
@given(m=records, with_catalog=st.booleans())
def test_generated_measurements_are_answered_as_validate_wire_answers(
    m: dict[str, Any], with_catalog: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    processor = ValidateProcessor(ValidateConfig())
    if with_catalog:
        folder = tmp_path_factory.mktemp("catalog")
        (folder / "meters.yaml").write_text(CATALOG)
        processor = ValidateProcessor(ValidateConfig(catalog=folder / "meters.yaml"))
    expected = answer(m, processor.catalog)
    assert processed(processor, m) == expected
    if plain(m, ShortPath(processor.catalog), iso_ms(NOW + 5 * 60 * 10**9)):
        assert expected == ("kept", m)


def _catalog_processor(folder: Path, with_catalog: bool) -> ValidateProcessor:
    if not with_catalog:
        return ValidateProcessor(ValidateConfig())
    (folder / "meters.yaml").write_text(CATALOG)
    return ValidateProcessor(ValidateConfig(catalog=folder / "meters.yaml"))


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(st.one_of(records, st.sampled_from(EDGES)), max_size=6), with_catalog=st.booleans())
def test_a_batch_is_vouched_for_only_when_every_record_is_plain(
    batch: list[Any], with_catalog: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    processor = _catalog_processor(tmp_path_factory.mktemp("catalog"), with_catalog)
    latest = iso_ms(NOW + 5 * 60 * 10**9)
    if all_plain(batch, ShortPath(processor.catalog), latest):
        assert all(plain(m, ShortPath(processor.catalog), latest) for m in batch)
    answers = [answer(m, processor.catalog) for m in batch]
    kept, rejected = processor(batch)
    assert kept == [m for verdict, m in answers if verdict == "kept"]
    assert [r.reason for r in rejected] == [reason for verdict, reason in answers if verdict == "rejected"]


@pytest.mark.parametrize("with_catalog", [False, True])
def test_a_batch_of_plain_records_is_vouched_for_whole(tmp_path: Path, with_catalog: bool) -> None:
    processor = _catalog_processor(tmp_path, with_catalog)
    batch = [
        good(uid=f"u-{i}", account=f"acct{i % 3}", measure={"calls": i, "double": i * 0.5}, where={"region": "eu"})
        for i in range(600)
    ]
    batch[7]["metadata"] = {"note": "x" * 256}
    latest = iso_ms(NOW + 5 * 60 * 10**9)
    assert all_plain(batch, ShortPath(processor.catalog), latest)
    assert processor(batch) == (batch, [])


def test_one_bad_record_in_a_large_batch_is_refused_alone() -> None:
    processor = ValidateProcessor(ValidateConfig())
    batch = [good(uid=f"u-{i}") for i in range(600)]
    batch[300] = good(uid="u-300", measure={"calls": 2**63})
    kept, rejected = processor(batch)
    assert [m["uid"] for m in kept] == [f"u-{i}" for i in range(600) if i != 300]
    assert [(r.measurement["uid"], r.reason) for r in rejected] == [("u-300", "invalid:number_out_of_range")]


@given(texts=st.lists(st.text(max_size=6)))
def test_printable_is_str_isprintable_of_each(texts: list[str]) -> None:
    assert printable(texts) == all(t.isprintable() for t in texts)


def test_printable_agrees_on_every_ascii_character() -> None:
    assert [printable([chr(c)]) for c in range(128)] == [chr(c).isprintable() for c in range(128)]
