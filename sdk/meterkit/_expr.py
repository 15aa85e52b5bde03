"""The derived-field language: m3ter's Calculation Engine syntax, parsed with lark.

An expression is parsed once into a tree of small Python closures; evaluating it touches
nothing but the values it is given (no ``eval``, no attribute access, no imports), so a
catalog can never run code. Supported, as m3ter documents them:

- operators ``+ - * / ^ %``, unary ``+ -``, parentheses, comparisons ``== != < > <= >=``,
  the ternary ``c ? a : b``, ``AND``, ``OR``, and ``x IN (a, b, ...)``;
- constants ``null``, ``true``, ``false``, ``Math.PI``, ``DateTime.TS_FMT``;
- ``Math.max``/``Math.min`` (2 or more arguments), ``Math.floor``/``Math.ceil``/``Math.round``
  (optional scale: positive for decimals, negative for powers of ten; round half up),
  ``Math.pow``, ``Math.abs``, ``isnull(a, b)``.

Null propagates as in SQL: arithmetic on ``null`` gives ``null``; a comparison with
``null`` is false unless it is ``== null`` / ``!= null``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedInput, VisitError

from ._errors import MeterkitError

_GRAMMAR = r"""
?start: expr
?expr: or_expr "?" expr ":" expr   -> cond
     | or_expr
?or_expr: or_expr _OR and_expr     -> or_
        | and_expr
?and_expr: and_expr _AND comparison -> and_
         | comparison
?comparison: sum COMP_OP sum       -> compare
           | sum _IN "(" args ")"  -> in_
           | sum
?sum: sum "+" product              -> add
    | sum "-" product              -> sub
    | product
?product: product "*" unary        -> mul
        | product "/" unary        -> div
        | product "%" unary        -> mod
        | unary
?unary: "-" unary                  -> neg
      | "+" unary                  -> pos
      | power
?power: atom "^" unary             -> pow
      | atom
?atom: NUMBER                      -> number
     | STRING                      -> string
     | _NULL                       -> null
     | _TRUE                       -> true
     | _FALSE                      -> false
     | NAME "(" [args] ")"         -> call
     | NAME                        -> var
     | "(" expr ")"
args: expr ("," expr)*

_OR.2: "OR"
_AND.2: "AND"
_IN.2: "IN"
_NULL.2: "null"
_TRUE.2: "true"
_FALSE.2: "false"
COMP_OP: "==" | "!=" | "<=" | ">=" | "<" | ">"
NAME: /[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)?/
NUMBER: /\d+(\.\d+)?([eE][+-]?\d+)?/ | /\.\d+([eE][+-]?\d+)?/
STRING: /"(\\.|[^"\\])*"/ | /'(\\.|[^'\\])*'/
%ignore /\s+/
"""

#: m3ter's DateTime.TS_FMT: the Java pattern of its timestamp format.
TS_FMT = "yyyy-MM-dd'T'HH:mm:ss.SSSX"
CONSTANTS: dict[str, Any] = {"Math.PI": math.pi, "DateTime.TS_FMT": TS_FMT}

Env = Mapping[str, Any]
Node = Callable[[Env], Any]


class ExpressionError(MeterkitError):
    """An expression that does not parse, or that cannot be evaluated on given values."""


def _scaled(mode: str) -> Callable[..., Any]:
    def fn(value: Any, scale: Any = 0) -> Any:
        if value is None or scale is None:
            return None
        if not isinstance(scale, int | float) or scale != int(scale):
            raise ExpressionError(f"scale must be a whole number, got {scale!r}")
        quantum = Decimal(1).scaleb(-int(scale))
        result = Decimal(str(value)).quantize(quantum, rounding=mode)
        return int(result) if scale <= 0 else float(result)

    return fn


def _minmax(pick: Callable[..., Any]) -> Callable[..., Any]:
    def fn(*values: Any) -> Any:
        if len(values) < 2:
            raise ExpressionError("Math.max and Math.min take two or more arguments")
        if any(v is None for v in values):
            return None
        return pick(values)

    return fn


def _null_safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*values: Any) -> Any:
        return None if any(v is None for v in values) else fn(*values)

    return wrapper


# name -> (function, min args, max args or None)
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "Math.max": (_minmax(max), 2, None),
    "Math.min": (_minmax(min), 2, None),
    "Math.floor": (_scaled(ROUND_FLOOR), 1, 2),
    "Math.ceil": (_scaled(ROUND_CEILING), 1, 2),
    "Math.round": (_scaled(ROUND_HALF_UP), 1, 2),
    "Math.pow": (_null_safe(lambda a, b: a**b), 2, 2),
    "Math.abs": (_null_safe(abs), 1, 1),
    "isnull": (lambda a, b: b if a is None else a, 2, 2),
}


def _arith(op: Callable[[Any, Any], Any], name: str) -> Callable[[Any, Node, Node], Node]:
    """A transformer method compiling one binary arithmetic operator."""

    def make(_self: Any, left: Node, right: Node) -> Node:
        def node(env: Env) -> Any:
            a, b = left(env), right(env)
            if a is None or b is None:
                return None
            try:
                return op(a, b)
            except ZeroDivisionError:
                raise ExpressionError(f"division by zero in {name}") from None
            except TypeError:
                raise ExpressionError(f"cannot apply {name} to {a!r} and {b!r}") from None

        return node

    return make


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


def _java_mod(a: Any, b: Any) -> Any:
    """m3ter's engine is Java: the remainder takes the sign of the dividend."""
    if b == 0:
        raise ZeroDivisionError
    result = math.fmod(a, b)
    return int(result) if isinstance(a, int) and isinstance(b, int) else result


def _truthy(value: Any) -> bool:
    return value is not None and value is not False and value != 0 and value != ""


@v_args(inline=True)
class _Compiler(Transformer[Token, Node]):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def number(self, tok: Token) -> Node:
        text = str(tok)
        value: float | int = float(text) if any(c in text for c in ".eE") else int(text)
        return lambda env: value

    def string(self, tok: Token) -> Node:
        raw = str(tok)[1:-1]
        value = raw.encode("utf-8").decode("unicode_escape") if "\\" in raw else raw
        return lambda env: value

    def null(self) -> Node:
        return lambda env: None

    def true(self) -> Node:
        return lambda env: True

    def false(self) -> Node:
        return lambda env: False

    def var(self, tok: Token) -> Node:
        name = str(tok)
        if name in CONSTANTS:
            value = CONSTANTS[name]
            return lambda env: value
        self.names.add(name)
        return lambda env: env.get(name)

    def args(self, *nodes: Node) -> list[Node]:
        return list(nodes)

    def call(self, tok: Token, args: list[Node] | None) -> Node:
        name, nodes = str(tok), args or []
        if name not in FUNCTIONS:
            raise ExpressionError(f"unknown function {name}(); known: {', '.join(sorted(FUNCTIONS))}")
        fn, low, high = FUNCTIONS[name]
        if len(nodes) < low or (high is not None and len(nodes) > high):
            want = f"{low}" if low == high else f"{low} to {high or 'many'}"
            raise ExpressionError(f"{name}() takes {want} arguments, got {len(nodes)}")
        return lambda env: fn(*(n(env) for n in nodes))

    add = _arith(lambda a, b: a + b, "+")
    sub = _arith(lambda a, b: a - b, "-")
    mul = _arith(lambda a, b: a * b, "*")
    div = _arith(lambda a, b: a / b, "/")
    mod = _arith(_java_mod, "%")
    pow = _arith(lambda a, b: a**b, "^")

    def neg(self, operand: Node) -> Node:
        return lambda env: None if (v := operand(env)) is None else -v

    def pos(self, operand: Node) -> Node:
        return operand

    def compare(self, left: Node, op: Token, right: Node) -> Node:
        test, symbol = _COMPARE[str(op)], str(op)

        def node(env: Env) -> bool:
            a, b = left(env), right(env)
            if a is None or b is None:
                return symbol in ("==", "!=") and test(a, b)
            try:
                return test(a, b)
            except TypeError:
                raise ExpressionError(f"cannot compare {a!r} {symbol} {b!r}") from None

        return node

    def in_(self, subject: Node, options: list[Node]) -> Node:
        return lambda env: subject(env) in [o(env) for o in options]

    def and_(self, left: Node, right: Node) -> Node:
        return lambda env: _truthy(left(env)) and _truthy(right(env))

    def or_(self, left: Node, right: Node) -> Node:
        return lambda env: _truthy(left(env)) or _truthy(right(env))

    def cond(self, test: Node, then: Node, other: Node) -> Node:
        return lambda env: then(env) if _truthy(test(env)) else other(env)


_parser = Lark(_GRAMMAR, parser="lalr", maybe_placeholders=True)


class Expression:
    """A parsed calculation. ``names`` are the variables it reads; call :meth:`evaluate`."""

    def __init__(self, text: str) -> None:
        self.text = text
        compiler = _Compiler()
        try:
            self._root = compiler.transform(_parser.parse(text))
        except UnexpectedInput as exc:
            raise ExpressionError(f"cannot parse {text!r} at column {exc.column}: unexpected input") from None
        except VisitError as exc:
            if isinstance(exc.orig_exc, ExpressionError):
                raise exc.orig_exc from None
            raise ExpressionError(f"cannot parse {text!r}: {exc.orig_exc}") from None
        except LarkError as exc:
            raise ExpressionError(f"cannot parse {text!r}: {exc}") from None
        self.names: frozenset[str] = frozenset(compiler.names)

    def evaluate(self, env: Env) -> Any:
        """Evaluate with ``env`` mapping variable names to values. Raises :class:`ExpressionError`."""
        try:
            return self._root(env)
        except ExpressionError:
            raise
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise ExpressionError(f"cannot evaluate {self.text!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


@lru_cache(maxsize=1024)
def parse(text: str) -> Expression:
    """Parse (and cache) a calculation. Raises :class:`ExpressionError` with the column."""
    return Expression(text)
