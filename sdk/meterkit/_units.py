"""UCUM unit codes on numeric fields (``KiBy``, ``GiBy.s``, ``MiBy/h``, ``{API_calls}``).

The grammar is ucumvert's, generated from the UCUM specification's own tables. We load
its grammar file directly instead of importing ``ucumvert``, whose package import pulls
in pint (about 100 ms) for conversions meterkit does not need.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from lark import Lark
from lark.exceptions import UnexpectedInput


@lru_cache(maxsize=1)
def _parser() -> Lark:
    spec = importlib.util.find_spec("ucumvert")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ucumvert package is missing; reinstall meterkit")
    grammar = Path(next(iter(spec.submodule_search_locations))) / "ucum_grammar.lark"
    return Lark(grammar.read_text(encoding="utf-8"), start="main_term", parser="earley")


@lru_cache(maxsize=512)
def unit_error(code: str) -> str | None:
    """Return why ``code`` is not a valid UCUM unit, or ``None`` if it is."""
    if not code or code != code.strip():
        return "a unit must be a non-empty UCUM code without surrounding spaces"
    try:
        _parser().parse(code)
    except UnexpectedInput as exc:
        pos = exc.pos_in_stream if exc.pos_in_stream is not None else len(code)
        char = repr(code[pos]) if pos < len(code) else "the end"
        return f"{code!r} is not a UCUM unit: unexpected {char} at column {exc.column}"
    return None
