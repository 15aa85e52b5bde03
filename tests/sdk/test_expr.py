from __future__ import annotations

import contextlib
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterkit import ExpressionError, parse_expression


def ev(text: str, **env: object) -> object:
    return parse_expression(text).evaluate(env)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        # operators and precedence
        ("1 + 2 * 3", {}, 7),
        ("(1 + 2) * 3", {}, 9),
        ("2 ^ 3 ^ 2", {}, 512),  # right-associative
        ("-2 ^ 2", {}, -4),
        ("+5 - -5", {}, 10),
        ("7 % 3", {}, 1),
        ("-7 % 3", {}, -1),  # Java remainder: sign of the dividend
        ("bytes / 1048576", {"bytes": 3145728}, 3.0),
        # comparisons, logic, ternary, IN
        ("a >= 2 AND b != 'x'", {"a": 2, "b": "y"}, True),
        ("a > 2 OR b == 'x'", {"a": 2, "b": "y"}, False),
        ("calls > 1000 ? calls * 0.5 : calls", {"calls": 2000}, 1000.0),
        ('status IN ("completed", "succeeded") ? 1 : 0', {"status": "succeeded"}, 1),
        ('status IN ("completed", "succeeded") ? 1 : 0', {"status": "failed"}, 0),
        # constants
        ("Math.PI", {}, math.pi),
        ("DateTime.TS_FMT", {}, "yyyy-MM-dd'T'HH:mm:ss.SSSX"),
        ("true AND NOT_A_KEYWORD == null", {}, True),
        # functions, as documented by m3ter
        ("Math.max(1, 5, 3)", {}, 5),
        ("Math.min(4, 2)", {}, 2),
        ("Math.round(2.5)", {}, 3),  # half up
        ("Math.round(-2.5)", {}, -3),
        ("Math.round(1234.5678, 2)", {}, 1234.57),
        ("Math.round(1234.5678, -2)", {}, 1200),
        ("Math.floor(1234.5678, 1)", {}, 1234.5),
        ("Math.ceil(1234.5678, -3)", {}, 2000),
        ("Math.floor(2.7)", {}, 2),
        ("Math.ceil(2.1)", {}, 3),
        ("Math.pow(2, 10)", {}, 1024),
        ("Math.abs(-2)", {}, 2),
        ("isnull(missing, 7)", {}, 7),
        ("isnull(present, 7)", {"present": 3}, 3),
        # null propagates
        ("missing * 2", {}, None),
        ("missing > 2", {}, False),
        ("missing == null", {}, True),
        ("Math.max(missing, 2)", {}, None),
    ],
)
def test_documented_semantics(text: str, env: dict[str, object], expected: object) -> None:
    assert ev(text, **env) == expected


def test_names_are_the_variables_read() -> None:
    assert parse_expression("a * Math.PI + isnull(b, c) ? d : 1").names == {"a", "b", "c", "d"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a +", "column"),
        ("foo(1)", "unknown function foo()"),
        ("Math.pow(1)", "takes 2 arguments"),
        ("Math.max(1)", "2 to many"),
        ("a ? b", "column"),
        ("__import__('os').system('true')", "column"),
        ("a; b", "column"),
    ],
)
def test_bad_expressions_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text).evaluate({"a": 1})
    assert fragment in str(info.value)


def test_dotted_names_are_plain_variables_not_attribute_access() -> None:
    expr = parse_expression("a.__class__")
    assert expr.names == {"a.__class__"}  # a catalog check then reports it as unknown
    assert expr.evaluate({"a": 1}) is None


def test_evaluation_errors_are_expression_errors() -> None:
    with pytest.raises(ExpressionError, match="division by zero"):
        ev("a / 0", a=1)
    with pytest.raises(ExpressionError, match="cannot apply"):
        ev("a * b", a="x", b="y")
    with pytest.raises(ExpressionError, match="cannot compare"):
        ev("a < b", a="x", b=1)


@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
def test_arithmetic_matches_python(a: int, b: int) -> None:
    assert ev("a + b * 2 - (a - b)", a=a, b=b) == a + b * 2 - (a - b)


@given(st.text(max_size=40))
def test_parser_never_crashes_on_garbage(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        parse_expression(text)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("nullable + trueUp", {"nullable": 1, "trueUp": 2}, 3),  # keywords are whole words
        ("a - b - c", {"a": 10, "b": 3, "c": 2}, 5),  # a chain is still left to right
        ("a / b * c", {"a": 8, "b": 4, "c": 3}, 6.0),
        ("a + b - c", {"a": "x", "b": None, "c": 1}, None),  # null propagates through a chain
        ("s + t", {"s": "ab", "t": "cd"}, "abcd"),
        ("-a", {"a": None}, None),
    ],
)
def test_chains_and_names(text: str, env: dict[str, object], expected: object) -> None:
    assert ev(text, **env) == expected


@pytest.mark.parametrize(
    ("text", "env"),
    [("s * 3", {"s": "x"}), ("-s", {"s": "x"}), ("s - 1", {"s": "x"}), ("a + s", {"a": 1, "s": "x"})],
)
def test_arithmetic_takes_numbers(text: str, env: dict[str, object]) -> None:
    with pytest.raises(ExpressionError, match="cannot apply"):
        ev(text, **env)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'caf\u00e9'", "café"),
        ("'caf\\u00e9'", "café"),
        ("'é\\n'", "é\n"),  # the text around an escape is kept as written
        ("'a\\\\b'", "a\\b"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("'it\\'s'", "it's"),
        ("'\\x41\\U0001F600'", "A\U0001f600"),
    ],
)
def test_string_escapes(text: str, expected: str) -> None:
    assert ev(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("'a\\ b'", "unknown escape \\ "), ("'\\q'", "unknown escape \\q"), ("'\\uD800'", "not a Unicode character")],
)
def test_an_escape_with_no_meaning_is_an_error_naming_it(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(fragment)):
        parse_expression(text)
