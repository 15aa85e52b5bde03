"""``docs/exporters.md`` lists every configuration key of every exporter, with the type and
default its pydantic model gives it. A key added to a model (or a default changed) without
the doc fails here. ``reference_rows`` is also what wrote the doc's key, type and default
columns, so the two cannot drift by transcription."""

from __future__ import annotations

import importlib
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from meterkit_agent.exporters import EXPORTERS

DOC = Path(__file__).resolve().parents[3] / "docs" / "exporters.md"
_CONSTRAINTS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def config_model(kind: str) -> type[BaseModel]:
    return typing.cast(type[BaseModel], importlib.import_module(EXPORTERS[kind]).FACTORY.config)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def type_text(annotation: Any) -> str:
    """An annotation as a reader of YAML knows it: ``string``, ``integer``, ``secret``..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        named = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, SecretStr):
        return "secret string"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        factory = info.default_factory
        if factory in (dict, list):
            return "`{}`" if factory is dict else "`[]`"
        return f"`{getattr(factory, '__name__', factory)}()`"
    if info.default is PydanticUndefined:
        return "required"
    if isinstance(info.default, BaseModel):
        return "see below"
    return f"`{'null' if info.default is None else str(info.default).lower() if isinstance(info.default, bool) else info.default}`"


def constraint_text(info: FieldInfo) -> str:
    found = [f"{sign} {getattr(m, name)}" for m in info.metadata for name, sign in _CONSTRAINTS if hasattr(m, name)]
    return f" ({', '.join(found)})" if found else ""


def reference_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, type, default)`` for every key a YAML block of ``model`` may hold; a nested
    model's keys as ``retry.max_interval_millis``, a mapping of models' as ``meters.<meter>.x``."""
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        key = prefix + name
        nested = _model_in(info.annotation)
        args = typing.get_args(info.annotation)
        mapped = _model_in(args[1]) if typing.get_origin(info.annotation) is dict and len(args) == 2 else None
        if nested is not None:
            rows.extend(reference_rows(nested, key + "."))
        elif mapped is not None:
            rows.append((key, f"mapping of {name.rstrip('s')} code to block", default_text(info)))
            rows.extend(reference_rows(mapped, f"{key}.<{name.rstrip('s')}>."))
        else:
            rows.append((key, type_text(info.annotation) + constraint_text(info), default_text(info)))
    return rows


def documented(kind: str) -> dict[str, tuple[str, str]]:
    """The doc's table for exporter ``kind``: key -> (type, default)."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## `{re.escape(kind)}`\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, f"docs/exporters.md has no section '## `{kind}`'"
    table: dict[str, tuple[str, str]] = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 4:
            table[cells[0].strip("`")] = (cells[1], cells[2])
    return table


def differences(kind: str, model: type[BaseModel]) -> list[str]:
    """What the doc's table for ``kind`` gets wrong about ``model``, one line each."""
    table = documented(kind)
    rows = reference_rows(model)
    out = [f"{kind}: key {key!r} is not listed" for key, _, _ in rows if key not in table]
    out += [
        f"{kind}.{key}: the doc says {table[key]}, the model {(text, default)}"
        for key, text, default in rows
        if key in table and table[key] != (text, default)
    ]
    out += [f"{kind}: key {key!r} is listed but not in the model" for key in set(table) - {r[0] for r in rows}]
    return out


@pytest.mark.parametrize("kind", sorted(EXPORTERS))
def test_the_reference_lists_every_key_with_its_type_and_default(kind: str) -> None:
    assert differences(kind, config_model(kind)) == []


def test_every_key_says_what_it_does() -> None:
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            assert line.rstrip().rstrip("|").rsplit("|", 1)[1].strip(), f"no description: {line}"


def test_a_key_the_model_gains_is_caught() -> None:
    from pydantic import create_model

    grown = create_model("Grown", __base__=config_model("file"), rotate_bytes=(int, 0))
    assert differences("file", grown) == ["file: key 'rotate_bytes' is not listed"]
