from __future__ import annotations

from pathlib import Path

import pytest

import meterkit
from meterkit import CatalogError, Category, load_catalog
from meterkit._units import unit_error
from tests.conftest import CATALOG


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meters.yaml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[meterkit.Problem]:
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, text))
    return info.value.problems


def test_example_catalog_loads() -> None:
    catalog = load_catalog(CATALOG)
    downloads = catalog.meters["data_downloaded"]
    assert downloads.product == "storage"
    assert not downloads.is_global
    assert catalog.meters["api_calls"].is_global
    assert downloads.field_categories == {"bytes": "measure", "user": "who", "region": "where"}
    assert downloads.derived_fields[0].calculation == "Math.round(bytes / 1048576, 3)"
    assert downloads.derived_fields[0].unit == "MiBy"


def test_meter_custom_fields_override_organisation_defaults() -> None:
    catalog = load_catalog(CATALOG)
    assert catalog.custom_fields == {"free_mib_per_call": 0}
    assert catalog.meters["data_downloaded"].custom_fields == {"free_mib_per_call": 1}
    assert catalog.meters["logins"].custom_fields == {"free_mib_per_call": 0}


@pytest.mark.parametrize("spelling", ["WHO", "who", "Who", " wHo "])
def test_categories_accept_any_case(tmp_path: Path, spelling: str) -> None:
    path = write(
        tmp_path,
        f"meters:\n  - {{code: m, name: M, data_fields: [{{code: u, name: U, category: '{spelling}'}}]}}\n",
    )
    assert load_catalog(path).meters["m"].data_fields[0].category is Category.WHO


def test_every_problem_is_reported_with_file_line_meter_and_field(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
meters:
  - code: a
    name: A
    data_fields:
      - {code: n, name: N, category: MEASURE, unit: GB}
      - {code: 9x, name: X, category: COLOR}
      - {code: r, name: R, category: WHERE, unit: s}
  - code: b
    name: B
    data_fields:
      - {code: n, name: N, category: MEASURE}
      - {code: n, name: N2, category: WHO}
    derived_fields:
      - {code: d, name: D, category: MEASURE, calculation: "n * nope"}
      - {code: e, name: E, category: MEASURE, calculation: "n +"}
      - {code: f, name: F, category: MEASURE, calculation: "d * 2"}
  - code: b
    name: B again
""",
    )
    got = {(p.line, p.meter, p.field, p.reason) for p in found}
    assert got == {
        (5, "a", "n", "invalid"),
        (6, "a", "9x", "invalid"),  # bad code
        (7, "a", "r", "invalid"),  # unit on a string field
        (12, "b", "n", "duplicate_field"),
        (14, "b", "d", "unknown_reference"),
        (15, "b", "e", "bad_calculation"),
        (16, "b", "f", "unknown_reference"),
        (17, "b", None, "duplicate_meter"),
    }
    assert sum(1 for p in found if p.field == "9x") == 2  # both the code and the category
    assert all(p.file and p.file.endswith("meters.yaml") for p in found)
    messages = " | ".join(p.message for p in found)
    assert "bels" in messages and "COLOR" in messages and "derived fields cannot read other derived fields" in messages


def test_limits_of_fifteen_fields(tmp_path: Path) -> None:
    fields = "\n".join(f"      - {{code: f{i}, name: F{i}, category: MEASURE}}" for i in range(16))
    derived = "\n".join(
        f"      - {{code: d{i}, name: D{i}, category: MEASURE, calculation: 'f0 * {i}'}}" for i in range(16)
    )
    found = problems(
        tmp_path,
        f"meters:\n  - code: m\n    name: M\n    data_fields:\n{fields}\n    derived_fields:\n{derived}\n",
    )
    assert [p.reason for p in found] == ["too_many_fields", "too_many_fields"]
    assert "16 data fields" in found[0].message and "16 derived fields" in found[1].message


def test_codes_follow_m3ter_rules(tmp_path: Path) -> None:
    ok = write(
        tmp_path,
        "meters:\n  - {code: m, name: M, data_fields: [{code: $cost_2, name: C, category: COST},"
        " {code: _x, name: X, category: OTHER}]}\n",
    )
    load_catalog(ok)
    long = "a" * 81
    found = problems(
        tmp_path,
        f"meters:\n  - {{code: m, name: M, data_fields: [{{code: {long}, name: C, category: COST}},"
        " {code: a-b, name: X, category: OTHER}]}\n",
    )
    assert len(found) == 2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("meters: {}", "bad_shape"),
        ("[1, 2]", "bad_shape"),
        ("meters: [\n  - {code: m, name: M\n", "bad_yaml"),
        ("meters: []\nmeterz: []\n", "bad_shape"),
        ("meters:\n  - just a string\n", "bad_shape"),
        ("meters:\n  - {code: m, name: M, colour: red}\n", "invalid"),
    ],
)
def test_malformed_files_get_a_clear_problem(tmp_path: Path, text: str, reason: str) -> None:
    assert reason in {p.reason for p in problems(tmp_path, text)}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "nope.yaml")
    assert info.value.problems[0].reason == "unreadable"


# The seed's examples and the UCUM specification's own (§4.6 information units, Appendix A
# annotations, products, quotients, exponents and prefixes).
@pytest.mark.parametrize(
    "unit",
    [
        "KiBy",
        "MiBy",
        "GiBy",
        "TiBy",
        "GiBy/s",
        "MiBy/h",
        "GiBy.s",
        "MiBy.h",
        "{API_calls}",
        "{API_calls/s}",
        "By",
        "bit",
        "kbit/s",
        "Mbit/s",
        "s",
        "ms",
        "min",
        "h",
        "d",
        "m2",
        "s-1",
        "kg.m/s2",
        "10*3{cells}",
        "%",
        "mm[Hg]",
        "{count}/min",
        "/s",
        "1",
    ],
)
def test_valid_ucum_units(unit: str) -> None:
    assert unit_error(unit) is None


@pytest.mark.parametrize("unit", ["", " s", "MIBy", "foo", "GiBy//s", "{unclosed", "kg..m", "s^2"])
def test_invalid_ucum_units(unit: str) -> None:
    assert unit_error(unit)


def test_the_digest_follows_meaning_not_layout(tmp_path: Path) -> None:
    one = write(tmp_path, "meters:\n  - {code: m, name: M, data_fields: [{code: n, name: N, category: MEASURE}]}\n")
    first = load_catalog(one).digest
    one.write_text(
        "# a comment\nmeters:\n  - code: m\n    name: M\n    data_fields:\n      - {category: measure, code: n, name: N}\n"
    )
    assert load_catalog(one).digest == first
    one.write_text("meters:\n  - {code: m, name: M, data_fields: [{code: n, name: N, category: COST}]}\n")
    assert load_catalog(one).digest != first


def test_field_level_and_cross_field_problems_come_in_one_pass(tmp_path: Path) -> None:
    """A bad field no longer hides the checks across fields: duplicates and what each
    calculation reads are checked over whatever parsed, in the same run."""
    found = problems(
        tmp_path,
        """\
meters:
  - code: a
    name: 7
    data_fields:
      - {code: n, name: N, category: COLOR}
      - {code: n, name: N2, category: MEASURE, unit: GB}
    derived_fields:
      - {code: d, name: D, category: MEASURE, unit: GB, calculation: "n * nope"}
      - {code: e, name: E, category: MEASURE, calculation: "n +"}
  - code: a
    name: A again
    data_fields: not a list
    derived_fields:
      - {code: f, name: F, category: MEASURE, calculation: "n * 2"}
""",
    )
    got = {(p.line, p.meter, p.field, p.reason) for p in found}
    assert got == {
        (2, "a", None, "invalid"),  # name: 7
        (5, "a", "n", "invalid"),  # COLOR
        (6, "a", "n", "invalid"),  # GB on a data field
        (6, "a", "n", "duplicate_field"),  # although both fields are invalid
        (8, "a", "d", "invalid"),  # GB on the derived field
        (8, "a", "d", "unknown_reference"),  # although the field is invalid
        (9, "a", "e", "bad_calculation"),
        (10, "a", None, "duplicate_meter"),  # although the first 'a' is invalid
        (10, "a", None, "invalid"),  # data_fields: not a list
        (14, "a", "f", "unknown_reference"),  # no data fields in this one
    }


def test_a_field_with_a_bad_category_still_counts_as_a_reference(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "meters:\n  - code: m\n    name: M\n    data_fields: [{code: n, name: N, category: COLOUR}]\n"
        "    derived_fields: [{code: d, name: D, category: MEASURE, calculation: 'n * 2'}]\n",
    )
    assert [(p.field, p.reason) for p in found] == [("n", "invalid")]  # not also unknown_reference
