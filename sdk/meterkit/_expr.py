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

**No calculation can hang or exhaust a process.** Its length, nesting and size are bounded
before anything recursive runs (:func:`_bounded_tree`); a chain of one precedence
(``a + b - c``) is one node, evaluated in a loop; constant parts are computed at parse time
(so ``9^9^9`` and ``1/0`` are refused there); every arithmetic step is :func:`bounded`, a
power before it is computed; arithmetic takes numbers (``"x" * 10^9`` is refused, not
allocated) and ``+`` joins strings of at most :data:`MAX_STRING_CHARS`. So evaluation time
is bounded: with no loops over data, no recursion and no user functions, each of at most
:data:`MAX_CALCULATION_NODES` nodes is visited once and works on values of bounded size
(only the values given can be larger, and they are read, never grown).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from functools import lru_cache
from itertools import accumulate
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import LarkError, UnexpectedInput, VisitError

from ._errors import CalculationTooBig as CalculationTooBig
from ._errors import ExpressionError as ExpressionError
from ._errors import NumberOutOfRange as NumberOutOfRange

_GRAMMAR = r"""
?start: expr
?expr: or_expr "?" expr ":" expr   -> cond
     | or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: comparison (_AND comparison)*
?comparison: sum COMP_OP sum       -> compare
           | sum _IN "(" args ")"  -> in_
           | sum
?sum: product (ADD_OP product)*
?product: unary (MUL_OP unary)*
?unary: ADD_OP unary               -> sign
      | power
?power: atom "^" unary             -> pow
      | atom
?atom: NUMBER                      -> number
     | STRING                      -> string
     | KEYWORD                     -> keyword
     | NAME "(" [args] ")"         -> call
     | NAME                        -> var
     | "(" expr ")"
args: expr ("," expr)*

_OR.2: /OR\b/
_AND.2: /AND\b/
_IN.2: /IN\b/
KEYWORD.2: /(null|true|false)\b/
COMP_OP: "==" | "!=" | "<=" | ">=" | "<" | ">"
ADD_OP: "+" | "-"
MUL_OP: "*" | "/" | "%"
NAME: /[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)?/
NUMBER: /\d+(\.\d+)?([eE][+-]?\d+)?/ | /\.\d+([eE][+-]?\d+)?/
STRING: /"(\\.|[^"\\])*"/ | /'(\\.|[^'\\])*'/
%ignore /\s+/
"""

#: m3ter's DateTime.TS_FMT: the Java pattern of its timestamp format.
TS_FMT = "yyyy-MM-dd'T'HH:mm:ss.SSSX"
CONSTANTS: dict[str, Any] = {"Math.PI": math.pi, "DateTime.TS_FMT": TS_FMT}

# The bounds: a real calculation is a line or two, a handful of terms, a few levels deep.
#: Characters of a calculation's text.
MAX_CALCULATION_CHARS = 4096
#: Nested parentheses, and levels of the parse tree: compiling and evaluating take about
#: two Python frames a level, far inside Python's default limit of 1,000 frames.
MAX_CALCULATION_DEPTH = 64
#: Parse-tree nodes (an operand, a chain of operators, a call): what an evaluation visits.
MAX_CALCULATION_NODES = 1000
#: Characters of a string built by ``+`` (m3ter's Metadata holds 256): a full chain of
#: ``+`` copies at most about 64 M characters.
MAX_STRING_CHARS = 65536

Env = Mapping[str, Any]
Node = Callable[[Env], Any]


#: m3ter's engine is Java: whole numbers are 64-bit longs, and JSON codecs stop there too.
MAX_INT = 2**63 - 1


def bounded(value: Any, what: str) -> Any:
    """``value`` if a backend can hold it exactly; else :class:`NumberOutOfRange`."""
    if type(value) is int:
        if -MAX_INT - 1 <= value <= MAX_INT:
            return value
        raise NumberOutOfRange(f"{what} is past the 64-bit integer range")
    if type(value) is float and not math.isfinite(value):
        raise NumberOutOfRange(f"{what} is {value} (not a finite number)")
    return value


def _power(a: Any, b: Any) -> Any:
    """``a ^ b``, refused before it is computed when the result would be too large: an
    integer power like ``9^9^9`` would otherwise take the process's memory and time."""
    if type(a) is int and type(b) is int and b > 0 and abs(a) > 1 and b * math.log2(abs(a)) > 64:
        raise NumberOutOfRange(f"{a} ^ {b} is past the 64-bit integer range")
    try:
        result = a**b
    except OverflowError:
        raise NumberOutOfRange(f"{a} ^ {b} overflows") from None
    if isinstance(result, complex):  # (-8) ^ 0.5: Python answers with a complex number
        raise ExpressionError(f"{a} ^ {b} is not a real number")
    return result


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
    "Math.pow": (_null_safe(_power), 2, 2),
    "Math.abs": (_null_safe(abs), 1, 1),
    "isnull": (lambda a, b: b if a is None else a, 2, 2),
}


_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt, "<=": operator.le}
_COMPARE[">="] = operator.ge


def _java_mod(a: Any, b: Any) -> Any:
    """m3ter's engine is Java: the remainder takes the sign of the dividend."""
    if b == 0:
        raise ZeroDivisionError
    result = math.fmod(a, b)
    return int(result) if isinstance(a, int) and isinstance(b, int) else result


def _truthy(value: Any) -> bool:
    return value is not None and value is not False and value != 0 and value != ""


_NUMBER = (int, float, Decimal)
_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_OPERATORS.update({"%": _java_mod, "^": _power})


def _apply(name: str, a: Any, b: Any) -> Any:
    """One arithmetic step: null-propagating, on numbers only (Python would repeat a string
    ``"x" * 10^9`` times), ``+`` also joining strings, and bounded."""
    if a is None or b is None:
        return None
    if name == "+" and isinstance(a, str) and isinstance(b, str):
        if len(a) + len(b) > MAX_STRING_CHARS:
            raise ExpressionError(f"a string built by + is longer than {MAX_STRING_CHARS:,} characters")
        return a + b
    if not (isinstance(a, _NUMBER) and isinstance(b, _NUMBER)):
        raise ExpressionError(f"cannot apply {name} to {a!r:.40} and {b!r:.40}")
    try:
        return bounded(_OPERATORS[name](a, b), f"the result of {name}")
    except ZeroDivisionError:
        raise ExpressionError(f"division by zero in {name}") from None
    except OverflowError:
        raise NumberOutOfRange(f"{name} overflows") from None


#: A backslash escape in a string literal: ``\uXXXX``, ``\UXXXXXXXX``, ``\xXX``, or one character.
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "0": "\0"}


def _unescaped(match: re.Match[str]) -> str:
    """One escape's character. The text around it is kept as written (non-ASCII too), and
    an escape with no meaning is an error that names it, not a backslash kept by luck."""
    escape = match.group(1)
    if escape in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[escape]
    if len(escape) > 1:
        code = int(escape[1:], 16)
        if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return chr(code)
        raise ExpressionError(f"\\{escape} in a string is not a Unicode character")
    raise ExpressionError(f"unknown escape \\{escape} in a string (write \\\\ for a backslash)")


@v_args(inline=True)
class _Compiler(Transformer[Token, Node]):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        #: nodes whose value is known now: parts made only of them are computed at parse time
        self.constants: dict[Node, Any] = {}

    def _constant(self, value: Any) -> Node:
        node: Node = lambda env: value  # noqa: E731 - a node is a callable, whatever defines it
        self.constants[node] = value
        return node

    def _folded(self, node: Node, *operands: Node) -> Node:
        """``node``, or its value if every operand is a constant: so ``9^9^9`` fails at parse time."""
        if not all(o in self.constants for o in operands):
            return node
        return self._constant(_run(node, {}, "a constant part"))

    def number(self, tok: Token) -> Node:
        text = str(tok)
        if any(c in text for c in ".eE"):
            value: float | int = float(text)  # 1e400 is inf: refused by bounded() below
        elif len(text.lstrip("0")) > len(str(MAX_INT)):  # no int() of a thousand digits
            raise NumberOutOfRange(f"the number {text:.30} is past the 64-bit integer range")
        else:
            value = int(text)
        return self._constant(bounded(value, f"the number {text:.30}"))

    def string(self, tok: Token) -> Node:
        raw = str(tok)[1:-1]
        return self._constant(_ESCAPE.sub(_unescaped, raw) if "\\" in raw else raw)

    def keyword(self, tok: Token) -> Node:
        return self._constant({"null": None, "true": True, "false": False}[str(tok)])

    def var(self, tok: Token) -> Node:
        name = str(tok)
        if name in CONSTANTS:
            return self._constant(CONSTANTS[name])
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
        what = f"the result of {name}()"
        return self._folded(lambda env: bounded(fn(*(n(env) for n in nodes)), what), *nodes)

    def _chain(self, first: Node, *rest: Any) -> Node:
        """``a op b op c ...``, left to right in a loop: a long chain is one node, not a deep tree."""
        steps = [(str(op), right) for op, right in zip(rest[::2], rest[1::2], strict=True)]

        def node(env: Env) -> Any:
            acc = first(env)
            for name, right in steps:
                acc = _apply(name, acc, right(env))
            return acc

        return self._folded(node, first, *(right for _, right in steps))

    sum = product = _chain

    def pow(self, left: Node, right: Node) -> Node:
        return self._folded(lambda env: _apply("^", left(env), right(env)), left, right)

    def sign(self, op: Token, operand: Node) -> Node:
        if op == "+":
            return operand
        return self._folded(lambda env: _apply("*", -1, operand(env)), operand)  # exact: -1 * x is -x

    def compare(self, left: Node, op: Token, right: Node) -> Node:
        test, symbol = _COMPARE[str(op)], str(op)

        def node(env: Env) -> bool:
            a, b = left(env), right(env)
            if a is None or b is None:
                return symbol in ("==", "!=") and bool(test(a, b))
            try:
                return bool(test(a, b))
            except TypeError:
                raise ExpressionError(f"cannot compare {a!r:.40} {symbol} {b!r:.40}") from None

        return node

    def in_(self, subject: Node, options: list[Node]) -> Node:
        return lambda env: subject(env) in [o(env) for o in options]

    def and_expr(self, *operands: Node) -> Node:
        return lambda env: all(_truthy(o(env)) for o in operands)

    def or_expr(self, *operands: Node) -> Node:
        return lambda env: any(_truthy(o(env)) for o in operands)

    def cond(self, test: Node, then: Node, other: Node) -> Node:
        return lambda env: then(env) if _truthy(test(env)) else other(env)


_parser = Lark(_GRAMMAR, parser="lalr", maybe_placeholders=True)


def _run(node: Node, env: Env, what: str) -> Any:
    """Evaluate ``node``; every failure is an :class:`ExpressionError`."""
    try:
        return bounded(node(env), what)
    except ExpressionError:
        raise
    except OverflowError as exc:
        raise NumberOutOfRange(f"cannot evaluate {what}: {exc}") from None
    except (ArithmeticError, TypeError, ValueError) as exc:
        raise ExpressionError(f"cannot evaluate {what}: {exc}") from None
    except RecursionError:  # the bounds keep far from it; never a traceback regardless
        raise CalculationTooBig("calculation_too_deep", f"cannot evaluate {what}: too deep") from None


def _check(reason: str, count: int, what: str, limit: int) -> None:
    if count > limit:
        raise CalculationTooBig(reason, f"the calculation has {count:,} {what}; at most {limit:,}")


def _bounded_tree(text: str) -> Tree[Token]:
    """The parse tree of ``text``, or :class:`CalculationTooBig` naming the bound it passes.
    Nothing here recurses: parentheses are counted (outside strings) before parsing, and
    the tree, which lark's LALR parser builds without recursion, is measured with a list."""
    _check("calculation_too_long", len(text), "characters", MAX_CALCULATION_CHARS)
    bare = re.sub(r"\"(\\.|[^\"\\])*\"|'(\\.|[^'\\])*'", "", text)
    parens = max(accumulate((c == "(") - (c == ")") for c in bare), default=0)
    _check("calculation_too_deep", parens, "nested parentheses", MAX_CALCULATION_DEPTH)
    tree = _parser.parse(text)
    depth = nodes = 0
    stack: list[tuple[Tree[Token], int]] = [(tree, 1)]
    while stack:
        node, level = stack.pop()
        nodes, depth = nodes + 1, max(depth, level)
        stack.extend((child, level + 1) for child in node.children if isinstance(child, Tree))
    _check("calculation_too_deep", depth, "levels of nesting", MAX_CALCULATION_DEPTH)
    _check("calculation_too_large", nodes, "parse-tree nodes", MAX_CALCULATION_NODES)
    return tree


class Expression:
    """A parsed calculation. ``names`` are the variables it reads; call :meth:`evaluate`.

    Raises :class:`ExpressionError` when ``text`` does not parse, :class:`CalculationTooBig`
    past a bound, :class:`NumberOutOfRange` for a constant part out of range."""

    def __init__(self, text: str) -> None:
        self.text = text
        compiler = _Compiler()
        try:
            self._root = compiler.transform(_bounded_tree(text))
        except UnexpectedInput as exc:
            raise ExpressionError(f"cannot parse {text!r:.60} at column {exc.column}: unexpected input") from None
        except VisitError as exc:
            if isinstance(exc.orig_exc, ExpressionError):
                raise exc.orig_exc from None
            raise ExpressionError(f"cannot parse {text!r:.60}: {exc.orig_exc}") from None
        except LarkError as exc:
            raise ExpressionError(f"cannot parse {text!r:.60}: {exc}") from None
        except RecursionError:
            raise CalculationTooBig("calculation_too_deep", "the calculation nests too deep to compile") from None
        self.names: frozenset[str] = frozenset(compiler.names)

    def evaluate(self, env: Env) -> Any:
        """Evaluate with ``env`` mapping variable names to values. Raises :class:`ExpressionError`
        (:class:`NumberOutOfRange` for a result or step past the range a backend holds)."""
        return _run(self._root, env, f"{self.text!r:.60}")

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


@lru_cache(maxsize=1024)
def parse(text: str) -> Expression:
    """Parse (and cache) a calculation. Raises :class:`ExpressionError` with the column, or
    the subclass naming the bound it passes."""
    return Expression(text)
