"""No catalog can hang or exhaust a process: every bound (DESIGN.md §1) has a named
problem, nothing ever surfaces as a traceback, and random catalogs and calculations only
ever load, or fail with CatalogError / ExpressionError, within a wall-clock bound."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterkit import CatalogError, ExpressionError, load_catalog, parse_expression
from meterkit._catalog import MAX_CATALOG_BYTES
from meterkit._expr import (
    MAX_CALCULATION_CHARS,
    MAX_CALCULATION_DEPTH,
    MAX_CALCULATION_NODES,
    MAX_STRING_CHARS,
    CalculationTooBig,
    Expression,
    NumberOutOfRange,
)
from meterkit._yaml import LOADERS, load_yaml

#: A bound on each example and each pathological input, not a benchmark: real runs take
#: milliseconds, and a hang or a memory blow-up takes far longer than this.
SECONDS = 2.0

METER = "meters:\n  - code: m\n    name: M\n    data_fields:\n      - {code: n, name: N, category: MEASURE}\n"


@contextmanager
def within(seconds: float = SECONDS) -> Iterator[None]:
    start = time.monotonic()
    yield
    assert time.monotonic() - start < seconds


def problems(tmp_path: Path, text: str) -> list[Any]:
    path = tmp_path / "meters.yaml"
    path.write_text(text)
    with within(), pytest.raises(CatalogError) as info:
        load_catalog(path)
    return info.value.problems


def with_calculation(calculation: str) -> str:
    return (
        METER + f"    derived_fields:\n      - {{code: d, name: D, category: MEASURE, calculation: '{calculation}'}}\n"
    )


# --- YAML ------------------------------------------------------------------------------

BILLION_LAUGHS = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ["meters: [*a9]", ""]
)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda cls: cls.__name__)
def test_an_alias_bomb_is_refused_line_by_line_without_expanding(loader: type) -> None:
    with within():
        doc, found = load_yaml(BILLION_LAUGHS, "bomb.yaml", loader)
    assert {(p.reason, p.line) for p in found} == {("yaml_alias", line) for line in range(1, 12)}
    assert all(p.message == "anchors and aliases are not allowed in a catalog" for p in found)
    assert doc["a1"] == [None] * 9 and doc["meters"] == [None]  # an alias reads as null


def test_an_alias_bomb_fails_the_catalog_with_file_and_line(tmp_path: Path) -> None:
    found = problems(tmp_path, BILLION_LAUGHS)
    assert ("yaml_alias", 1) in {(p.reason, p.line) for p in found}
    assert all(p.file and p.file.endswith("meters.yaml") for p in found)


def test_an_anchor_alone_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, METER.replace("name: M", "name: &label M"))
    assert [(p.reason, p.line) for p in found] == [("yaml_alias", 3)]


@pytest.mark.parametrize("loader", LOADERS, ids=lambda cls: cls.__name__)
def test_duplicate_keys_are_refused_with_the_key_and_both_lines(loader: type) -> None:
    text = "meters:\n  - code: m\n    name: M\n    name: N\n    data_fields: [{code: n, code: o}]\nmeters: []\n"
    _, found = load_yaml(text, "m.yaml", loader)
    assert [(p.reason, p.line) for p in found] == [("duplicate_key", 4), ("duplicate_key", 5), ("duplicate_key", 6)]
    assert "'name' is repeated (first on line 3)" in found[0].message
    assert "'meters' is repeated (first on line 1)" in found[2].message


def test_yaml_problems_come_with_every_other_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, with_calculation("n * nope").replace("name: M", "name: M\n    name: &x N"))
    assert {p.reason for p in found} == {"duplicate_key", "yaml_alias", "unknown_reference"}


@pytest.mark.parametrize("loader", LOADERS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(
    "text", ["[" * 20_000 + "]" * 20_000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 500))]
)
def test_deep_yaml_is_refused_not_a_recursion_error(loader: type, text: str) -> None:
    with within(), pytest.raises(CatalogError) as info:
        load_yaml(text, "deep.yaml", loader)
    assert info.value.problems[0].reason == "bad_yaml"  # libyaml stops at 1,000 levels; we stop first where we can
    assert "nest" in info.value.problems[0].message


def test_an_integer_of_thousands_of_digits_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "meters: []\ncustom_fields: {x: " + "9" * 5000 + "}\n")
    assert [(p.reason, p.line) for p in found] == [("bad_yaml", 2)]


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "99999999999999999999", "true"])
def test_custom_fields_hold_what_a_backend_holds(tmp_path: Path, value: str) -> None:
    assert "bad_custom_field" in {p.reason for p in problems(tmp_path, f"custom_fields: {{x: {value}}}\n{METER}")}
    meter_level = METER + f"    custom_fields: {{x: {value}}}\n"
    assert {(p.reason, p.meter) for p in problems(tmp_path, meter_level)} == {("invalid", "m")}


def test_a_catalog_past_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    found = problems(tmp_path, "meters: []\n" + "#" * MAX_CATALOG_BYTES)
    assert [p.reason for p in found] == ["catalog_too_large"]


def test_a_catalog_that_is_not_utf8_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "meters.yaml"
    path.write_bytes(b"meters: []\n# caf\xe9\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert info.value.problems[0].reason == "unreadable" and "UTF-8" in info.value.problems[0].message


# --- calculations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("n + " * 2000 + "n", "calculation_too_long"),
        ("(" * 20_000 + "n" + ")" * 20_000, "calculation_too_long"),
        ("(" * (MAX_CALCULATION_DEPTH + 1) + "n" + ")" * (MAX_CALCULATION_DEPTH + 1), "calculation_too_deep"),
        ("Math.abs(" * 40 + "n" + ")" * 40, "calculation_too_deep"),  # each call is two levels
        ("-" * 2000 + "n", "calculation_too_deep"),
        ("2 ^ " * 100 + "2", "calculation_too_deep"),
        ("n ? 1 : " * 100 + "0", "calculation_too_deep"),
        ("+".join(["n"] * MAX_CALCULATION_NODES), "calculation_too_large"),
        ("Math.max(" + ", ".join(["n"] * 1200) + ")", "calculation_too_large"),
    ],
)
def test_each_bound_is_a_named_error(tmp_path: Path, text: str, reason: str) -> None:
    with within(), pytest.raises(CalculationTooBig) as info:
        parse_expression(text)
    assert info.value.reason == reason
    found = problems(tmp_path, with_calculation(text))
    assert [(p.reason, p.meter, p.field, p.line) for p in found] == [(reason, "m", "d", 7)]


def test_parentheses_in_strings_are_not_nesting() -> None:
    assert parse_expression("n == '" + "(" * 100 + "' ? 1 : 0").evaluate({"n": 1}) == 0


def test_long_chains_are_one_level_not_a_deep_tree() -> None:
    terms = MAX_CALCULATION_NODES - 1
    assert parse_expression(" + ".join(["n"] * terms)).evaluate({"n": 2}) == 2 * terms
    assert parse_expression(" - ".join(["n"] * 300)).evaluate({"n": 1}) == 1 - 299  # still left to right
    assert parse_expression(" AND ".join(["n > 0"] * 150)).evaluate({"n": 1}) is True
    assert parse_expression(" OR ".join(["n > 0"] * 150)).evaluate({"n": 0}) is False


@pytest.mark.parametrize(
    "text",
    [
        "1e400",
        "-1e400",
        "9" * 400,
        "9223372036854775808",
        "9^9^9",
        "Math.pow(9, Math.pow(9, 9))",
        "n + 9^9^9",
        "-(-9223372036854775807 - 1)",
        "2 ^ 64",
        "1e308 * 10",
    ],
)
def test_constants_out_of_range_are_refused_at_parse_time(text: str) -> None:
    with within(), pytest.raises(NumberOutOfRange):
        parse_expression(text)


def test_the_largest_constants_still_parse() -> None:
    assert parse_expression("9223372036854775807").evaluate({}) == 2**63 - 1
    assert parse_expression("-9223372036854775807 - 1").evaluate({}) == -(2**63)
    assert parse_expression("2 ^ 62").evaluate({}) == 2**62


@pytest.mark.parametrize(
    ("text", "env", "error"),
    [
        ("a ^ b", {"a": 9, "b": 387_420_489}, NumberOutOfRange),
        ("a ^ b ^ b", {"a": 9, "b": 9}, NumberOutOfRange),
        ("a * a", {"a": 2**62}, NumberOutOfRange),
        ("Math.pow(a, 0.5)", {"a": -8}, ExpressionError),
        ("s * n", {"s": "x", "n": 10**9}, ExpressionError),  # never a gigabyte string
        ("s + s", {"s": "x" * (MAX_STRING_CHARS // 2 + 1)}, ExpressionError),
        ("Math.round(a, -300)", {"a": 1e308}, NumberOutOfRange),
        ("Math.round(a, b)", {"a": 1.5, "b": 10**18}, ExpressionError),
    ],
)
def test_magnitudes_are_bounded_at_evaluation(text: str, env: dict[str, Any], error: type[Exception]) -> None:
    expr = parse_expression(text)
    with within(), pytest.raises(error):
        expr.evaluate(env)


def test_a_recursion_error_never_escapes_even_from_a_deep_stack() -> None:
    """Called with little stack left, compiling or evaluating fails by name, never with a
    RecursionError (with none left, any call at all would)."""
    text = " + ".join(["Math.abs(" * 20 + f"n{i}" + ")" * 20 for i in range(3)])
    outcomes: list[object] = []

    def descend(frames: int) -> None:
        if frames > 0:
            descend(frames - 1)
            return
        try:
            outcomes.append(Expression(text).evaluate({"n0": 1, "n1": 1, "n2": 1}))
        except ExpressionError as exc:
            outcomes.append(exc)

    used = len(inspect.stack(0))
    for margin in (30, 60, 90, 120, 500):
        descend(sys.getrecursionlimit() - used - margin)
    assert all(o == 3 or isinstance(o, ExpressionError) for o in outcomes)
    assert any(isinstance(o, ExpressionError) for o in outcomes) and outcomes[-1] == 3


def largest(make: Callable[[int], str]) -> str:
    """The largest ``make(k)`` that parses: the worst a catalog may hold of that shape."""

    def fits(k: int) -> bool:
        try:
            parse_expression(make(k))
        except CalculationTooBig:
            return False
        return True

    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return make(low)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: " + ".join(["a * b / (c + 1) % 7"] * k),
        lambda k: "Math.max(" * k + "a" + ", b)" * k,
        lambda k: " + ".join([f"Math.round(a / {i + 1}, 2) + (a > b ? a ^ 2 : -b)" for i in range(k)]),
        lambda k: " + ".join(["s"] * k),
    ],
)
def test_the_worst_allowed_calculation_evaluates_within_a_bound(make: Callable[[int], str]) -> None:
    text = largest(make)
    assert len(text) <= MAX_CALCULATION_CHARS
    expr = parse_expression(text)
    env = {"a": 3_037_000_499, "b": 2.5, "c": 1, "s": "x" * 60}
    with within(1.0):
        for _ in range(10):
            with suppress(ExpressionError):  # refused is fine; unbounded is not
                expr.evaluate(env)


# --- fuzz -------------------------------------------------------------------------------

TOKENS = [
    *"0123456789",
    "1.5",
    "1e308",
    "9999999999999999999",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "(",
    ")",
    ",",
    "?",
    ":",
    "==",
    "!=",
    "<",
    ">=",
    "AND",
    "OR",
    "IN",
    "null",
    "true",
    "false",
    "a",
    "b",
    "s",
    "Math.PI",
    "Math.max(",
    "Math.min(",
    "Math.round(",
    "Math.floor(",
    "Math.pow(",
    "Math.abs(",
    "isnull(",
    "'x'",
    '"y"',
    "'",
    "\\",
]
ENV = st.fixed_dictionaries(
    {
        "a": st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5)),
        "b": st.one_of(st.none(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False)),
        "s": st.one_of(st.none(), st.text(max_size=20), st.integers(0, 10**12)),
    }
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_and_evaluate(text: str, env: dict[str, Any]) -> None:
    with within():
        try:
            expr = parse_expression(text)
        except ExpressionError:
            return
        with suppress(ExpressionError):
            expr.evaluate(env)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=50).map(" ".join), ENV)
def test_fuzz_token_soup_only_parses_or_fails_by_name(text: str, env: dict[str, Any]) -> None:
    parse_and_evaluate(text, env)


def expressions() -> st.SearchStrategy[str]:
    leaves = st.one_of(
        st.sampled_from(["a", "b", "s", "null", "true", "Math.PI", "'x'", "1e308", "9223372036854775807"]),
        st.integers(-(10**20), 10**20).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr).filter(lambda t: "e" not in t or "-" not in t[:1]),
    )

    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%", "^", "==", "<", "AND", "OR"]), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            st.tuples(st.sampled_from(["Math.max", "Math.pow", "Math.round", "isnull"]), inner, inner).map(
                lambda t: f"{t[0]}({t[1]}, {t[2]})"
            ),
            inner.map(lambda t: f"-{t}"),
            st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        )

    return st.recursive(leaves, grow, max_leaves=80)


@FUZZ
@given(expressions(), ENV)
def test_fuzz_well_formed_calculations_evaluate_or_fail_by_name(text: str, env: dict[str, Any]) -> None:
    parse_and_evaluate(text, env)


YAML_BITS = [
    "meters:",
    "custom_fields:",
    "- ",
    "  ",
    "    ",
    "\n",
    "code: m",
    "name: M",
    "category: MEASURE",
    "calculation: 'n * 2'",
    "data_fields:",
    "derived_fields:",
    "{",
    "}",
    "[",
    "]",
    ", ",
    ": ",
    "&a ",
    "*a",
    "<<: ",
    "? ",
    "!!str ",
    "!!python/object ",
    "'",
    '"',
    "9" * 30,
    ".inf",
    "~",
    "---",
    "#",
]


@FUZZ
@given(st.lists(st.sampled_from(YAML_BITS), max_size=60).map("".join))
def test_fuzz_yaml_soup_loads_or_fails_by_name(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "meters.yaml"
    path.write_text(text)
    with within(), suppress(CatalogError):
        load_catalog(path)


def catalogs() -> st.SearchStrategy[dict[str, Any]]:
    codes = st.sampled_from(["n", "m", "bytes", "9x", "a-b", "", "x" * 90])
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), codes)
    field = st.fixed_dictionaries(
        {"code": codes, "name": st.one_of(st.text(max_size=5), st.integers())},
        optional={
            "category": st.sampled_from(["MEASURE", "who", "COLOR", 3]),
            "unit": st.sampled_from(["By", "GB", "{x}", "s^2"]),
            "calculation": st.one_of(expressions(), st.lists(st.sampled_from(TOKENS), max_size=20).map(" ".join)),
            "extra": scalars,
        },
    )
    meter = st.fixed_dictionaries(
        {"code": codes, "name": scalars},
        optional={
            "product": scalars,
            "data_fields": st.one_of(st.lists(st.one_of(field, scalars), max_size=4), scalars),
            "derived_fields": st.lists(field, max_size=4),
            "custom_fields": st.dictionaries(st.one_of(codes, st.integers()), scalars, max_size=3),
        },
    )
    return st.fixed_dictionaries(
        {"meters": st.one_of(st.lists(st.one_of(meter, scalars), max_size=4), scalars)},
        optional={"custom_fields": st.one_of(st.dictionaries(codes, scalars, max_size=3), scalars), "x": scalars},
    )


@FUZZ
@given(catalogs())
def test_fuzz_catalogs_load_or_fail_by_name(tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "meters.yaml"
    path.write_text(yaml.safe_dump(doc))
    with within():
        try:
            catalog = load_catalog(path)
        except CatalogError as exc:
            problems = exc.problems
        else:
            problems = []
            for meter in catalog.meters.values():
                for derived in meter.derived_fields:
                    parse_and_evaluate(derived.calculation, {})
    assert all(p.reason and p.message for p in problems)
