"""The meter catalog (``meters.yaml``): m3ter's Meter model, loaded and checked once.

::

    custom_fields:                 # organisation defaults
      price_per_gb: 0.05
    meters:
      - code: data_downloaded
        name: Data downloaded
        product: storage           # absent: a Global meter
        data_fields:
          - {code: user, name: User, category: WHO}
          - {code: bytes, name: Bytes, category: MEASURE, unit: By}
        derived_fields:
          - {code: mib, name: MiB, category: MEASURE, unit: MiBy, calculation: "bytes / 1048576"}
        custom_fields:
          price_per_gb: 0.04       # overrides the organisation's value for this meter

Loading collects every problem (file, line, meter, field, reason) before raising one
:class:`CatalogError`, so a catalog is fixed in one pass rather than one error at a time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ._errors import CatalogError, Problem
from ._expr import ExpressionError, parse
from ._model import (
    FIELD_CODE_RE,
    MAX_DATA_FIELDS,
    MAX_DERIVED_FIELDS,
    METER_CODE_RE,
    NUMERIC_CATEGORIES,
)
from ._units import unit_error

#: Variables a calculation may read besides fields and custom fields.
TIMESTAMP_FIELDS = frozenset({"ts", "ets"})

# "GB" is valid UCUM, but it means gigabel: nobody bills in bels, everybody means bytes.
_BEL_NOT_BYTE = re.compile(r"(?:[kKMGTPE]i?)?B(?:[./].*)?\Z")


class Category(str, Enum):
    WHO = "who"
    WHAT = "what"
    WHERE = "where"
    OTHER = "other"
    METADATA = "metadata"
    MEASURE = "measure"
    INCOME = "income"
    COST = "cost"

    @property
    def numeric(self) -> bool:
        return self.value in NUMERIC_CATEGORIES


class _FieldModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    category: Category
    unit: str | None = None

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not FIELD_CODE_RE.match(v):
            raise ValueError("a code is 1-80 letters, digits, _ or $, not starting with a digit")
        return v

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, v: object) -> object:
        if isinstance(v, str):
            lowered = v.strip().lower()
            if lowered not in {c.value for c in Category}:
                known = ", ".join(c.name for c in Category)
                raise ValueError(f"unknown category {v!r}; one of {known}")
            return lowered
        return v

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if _BEL_NOT_BYTE.match(v):
            raise ValueError(f"{v!r} is UCUM for bels; bytes are 'By' (KiBy, MBy, GiBy, ...)")
        error = unit_error(v)
        if error:
            raise ValueError(error)
        return v

    @model_validator(mode="after")
    def _unit_needs_number(self) -> _FieldModel:
        if self.unit is not None and not self.category.numeric:
            raise ValueError(f"a unit only applies to MEASURE, INCOME or COST fields, not {self.category.name}")
        return self


class _DerivedModel(_FieldModel):
    calculation: str


class _MeterModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    product: str | None = None
    data_fields: list[_FieldModel] = []
    derived_fields: list[_DerivedModel] = []
    custom_fields: dict[str, str | int | float] = {}

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not METER_CODE_RE.match(v):
            raise ValueError("a meter code is 1-80 letters, digits or _$.:- characters")
        return v


@dataclass(frozen=True)
class DataField:
    code: str
    name: str
    category: Category
    unit: str | None = None


@dataclass(frozen=True)
class DerivedField(DataField):
    calculation: str = ""


@dataclass(frozen=True)
class Meter:
    """One meter. ``custom_fields`` already has the organisation's defaults merged in."""

    code: str
    name: str
    product: str | None
    data_fields: tuple[DataField, ...]
    derived_fields: tuple[DerivedField, ...]
    custom_fields: Mapping[str, str | int | float]
    #: data-field code -> category name ("measure"), for validating measurements quickly
    field_categories: Mapping[str, str] = field(repr=False, default_factory=dict)
    #: the same, plus derived fields: what a measurement may carry after derivation
    wire_categories: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def is_global(self) -> bool:
        return self.product is None


@dataclass(frozen=True)
class Catalog:
    meters: Mapping[str, Meter]
    custom_fields: Mapping[str, str | int | float]
    source: str = "<memory>"
    #: sha256 of the catalog's meaning (meters and custom fields, not comments or layout):
    #: equal digests validate measurements identically.
    digest: str = ""

    def __contains__(self, code: object) -> bool:
        return code in self.meters


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings remember the line they start on (``__line__``)."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _line(value: Any, default: int | None = None) -> int | None:
    return value.get("__line__", default) if isinstance(value, dict) else default


def load_catalog(path: str | Path) -> Catalog:
    """Load and check a ``meters.yaml``. Raises :class:`CatalogError` listing every problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError([Problem("unreadable", f"cannot read the catalog: {exc.strerror}", file=file)]) from None
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise CatalogError([Problem("bad_yaml", f"not valid YAML: {reason}", file=file, line=line)]) from None
    return catalog_from_dict(doc, source=file)


def catalog_from_dict(doc: Any, source: str = "<memory>") -> Catalog:
    """Build a catalog from already-parsed data (a dict with a ``meters`` list)."""
    problems: list[Problem] = []

    def report(
        reason: str,
        message: str,
        line: int | None,
        meter: str | None = None,
        fld: str | None = None,
    ) -> None:
        problems.append(Problem(reason, message, meter=meter, field=fld, file=source, line=line))

    if not isinstance(doc, dict) or not isinstance(doc.get("meters"), list):
        report("bad_shape", "the catalog needs a top-level 'meters:' list", _line(doc, 1))
        raise CatalogError(problems)
    # span_rules belong to meterkit.otel, which checks them; they may share this file.
    unknown = sorted(k for k in doc if k not in ("meters", "custom_fields", "span_rules", "__line__"))
    for key in unknown:
        report(
            "bad_shape",
            f"unknown top-level key {key!r}; expected 'meters', 'custom_fields' or 'span_rules'",
            _line(doc, 1),
        )

    org_custom = _strip_lines(doc.get("custom_fields") or {})
    if not isinstance(org_custom, dict) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in org_custom.values()
    ):
        report(
            "bad_custom_field",
            "custom_fields must map names to strings or numbers",
            _line(doc.get("custom_fields"), 1),
        )
        org_custom = {}

    meters: dict[str, Meter] = {}
    codes_seen: set[str] = set()
    for index, raw in enumerate(doc["meters"]):
        line = _line(raw)
        label = raw.get("code") if isinstance(raw, dict) and isinstance(raw.get("code"), str) else f"#{index + 1}"
        if not isinstance(raw, dict):
            report("bad_shape", "each meter must be a mapping", line, label)
            continue
        try:
            model = _MeterModel.model_validate(_strip_lines(raw))
        except ValidationError as exc:
            for err in exc.errors():
                fld, fline = _locate(raw, err["loc"])
                where = (str(err["loc"][-1]) if len(err["loc"]) > 2 else "") if fld else ".".join(map(str, err["loc"]))
                msg = str(err["msg"]).removeprefix("Value error, ")
                report("invalid", f"{where}: {msg}" if where else msg, fline or line, label, fld)
            continue
        if model.code in codes_seen:
            report("duplicate_meter", f"meter code {model.code!r} is defined twice", line, model.code)
            continue
        codes_seen.add(model.code)
        meter = _check_meter(model, raw, org_custom, report)
        if meter is not None:
            meters[meter.code] = meter
    if problems:
        raise CatalogError(problems)
    # The validated model, not the YAML: spelling of categories, key order and comments
    # do not change what a catalog means.
    meaning = {"meters": [meters[code] for code in sorted(meters)], "custom_fields": org_custom}
    digest = hashlib.sha256(orjson.dumps(meaning, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    return Catalog(meters=meters, custom_fields=org_custom, source=source, digest=digest)


def _locate(raw: dict[str, Any], loc: tuple[Any, ...]) -> tuple[str | None, int | None]:
    """Map a pydantic error location to (field code, line) in the YAML."""
    if len(loc) >= 2 and loc[0] in ("data_fields", "derived_fields") and isinstance(loc[1], int):
        items = raw.get(loc[0]) or []
        if loc[1] < len(items) and isinstance(items[loc[1]], dict):
            item = items[loc[1]]
            code = item.get("code")
            return (code if isinstance(code, str) else f"{loc[0]}[{loc[1]}]"), _line(item)
    return None, None


def _check_meter(model: _MeterModel, raw: dict[str, Any], org_custom: dict[str, Any], report: Any) -> Meter | None:
    ok = True
    code = model.code
    if len(model.data_fields) > MAX_DATA_FIELDS:
        report(
            "too_many_fields",
            f"{len(model.data_fields)} data fields; m3ter allows at most {MAX_DATA_FIELDS}",
            _line(raw),
            code,
        )
        ok = False
    if len(model.derived_fields) > MAX_DERIVED_FIELDS:
        report(
            "too_many_fields",
            f"{len(model.derived_fields)} derived fields; m3ter allows at most {MAX_DERIVED_FIELDS}",
            _line(raw),
            code,
        )
        ok = False

    seen: set[str] = set()
    raw_items = (raw.get("data_fields") or []) + (raw.get("derived_fields") or [])
    for fld, item in zip([*model.data_fields, *model.derived_fields], raw_items, strict=True):
        if fld.code in seen:
            report(
                "duplicate_field",
                f"field code {fld.code!r} is used twice in this meter",
                _line(item),
                code,
                fld.code,
            )
            ok = False
        seen.add(fld.code)

    custom = {**org_custom, **model.custom_fields}
    data_codes = {f.code for f in model.data_fields}
    derived_codes = {f.code for f in model.derived_fields}
    for fld, item in zip(model.derived_fields, raw.get("derived_fields") or [], strict=True):
        try:
            expr = parse(fld.calculation)
        except ExpressionError as exc:
            report("bad_calculation", str(exc), _line(item), code, fld.code)
            ok = False
            continue
        allowed = data_codes | custom.keys() | TIMESTAMP_FIELDS
        for name in sorted(expr.names - allowed):
            hint = " (derived fields cannot read other derived fields)" if name in derived_codes else ""
            report(
                "unknown_reference",
                f"calculation reads {name!r}, which is not a data field, custom field or timestamp of this meter{hint}",
                _line(item),
                code,
                fld.code,
            )
            ok = False
    if not ok:
        return None
    return Meter(
        code=code,
        name=model.name,
        product=model.product,
        data_fields=tuple(DataField(f.code, f.name, f.category, f.unit) for f in model.data_fields),
        derived_fields=tuple(
            DerivedField(f.code, f.name, f.category, f.unit, f.calculation) for f in model.derived_fields
        ),
        custom_fields=custom,
        field_categories={f.code: f.category.value for f in model.data_fields},
        wire_categories={f.code: f.category.value for f in (*model.data_fields, *model.derived_fields)},
    )
