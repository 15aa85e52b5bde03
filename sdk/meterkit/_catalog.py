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
:class:`CatalogError`, so a catalog is fixed in one pass rather than one error at a time:
each meter and each field is validated on its own, and the checks across them (repeated
codes, what a calculation reads) run over whatever parsed, so a bad field hides nothing
else. A catalog cannot hang or exhaust the process that loads it: the file is at most
:data:`MAX_CATALOG_BYTES`, its YAML has no aliases, repeated keys or deep nesting
(``_yaml.py``), and its calculations are bounded in length, depth, size and magnitude
(``_expr.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from ._catalogmodel import Category, _custom_error, _DerivedModel, _FieldModel, _MeterModel
from ._errors import CatalogError, Problem
from ._expr import ExpressionError, parse
from ._model import (
    MAX_DATA_FIELDS,
    MAX_DERIVED_FIELDS,
)
from ._yaml import LINE_KEY, load_yaml

#: Variables a calculation may read besides fields and custom fields.
TIMESTAMP_FIELDS = frozenset({"ts", "ets"})
#: The largest catalog read. A meter with 15 data and 15 derived fields is about 2.5 KB,
#: so this holds about 400 of them, and loading stays around two seconds.
MAX_CATALOG_BYTES = 1024 * 1024

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class DataField:
    code: str
    name: str
    category: Category
    unit: str | None = None
    privacy: str | None = None  # pseudonymize, drop, keep; None: not said (kept)
    description: str | None = None  # why it is collected (the privacy report)


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
    pii: str | None = None  # the PII guard's policy; None: not said (redact)
    description: str | None = None  # what the meter is for (the privacy report)

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


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != LINE_KEY}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _line(value: Any, default: int | None = None) -> int | None:
    return value.get(LINE_KEY, default) if isinstance(value, dict) else default


def load_catalog(path: str | Path) -> Catalog:
    """Load and check a ``meters.yaml``. Raises :class:`CatalogError` listing every problem."""
    file = str(path)

    def refuse(reason: str, message: str) -> CatalogError:
        return CatalogError([Problem(reason, message, file=file)])

    try:
        with open(path, "rb") as stream:  # read no more than the bound, whatever the file is
            data = stream.read(MAX_CATALOG_BYTES + 1)
    except OSError as exc:
        raise refuse("unreadable", f"cannot read the catalog: {exc.strerror}") from None
    if len(data) > MAX_CATALOG_BYTES:
        raise refuse("catalog_too_large", f"the catalog is larger than {MAX_CATALOG_BYTES:,} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse("unreadable", f"the catalog is not UTF-8 text (byte {exc.start:,})") from None
    doc, problems = load_yaml(text, file)
    return _build(doc, file, problems)


def catalog_from_dict(doc: Any, source: str = "<memory>") -> Catalog:
    """Build a catalog from already-parsed data (a dict with a ``meters`` list)."""
    return _build(doc, source, [])


def _build(doc: Any, source: str, problems: list[Problem]) -> Catalog:
    def report(reason: str, message: str, line: int | None, meter: str | None = None, fld: str | None = None) -> None:
        problems.append(Problem(reason, message, meter=meter, field=fld, file=source, line=line))

    if not isinstance(doc, dict) or not isinstance(doc.get("meters"), list):
        report("bad_shape", "the catalog needs a top-level 'meters:' list", _line(doc, 1))
        raise CatalogError(problems)
    # span_rules belong to meterkit.otel, which checks them; they may share this file.
    unknown = [k for k in doc if k not in ("meters", "custom_fields", "span_rules", LINE_KEY)]
    for key in sorted(unknown, key=repr):
        report(
            "bad_shape",
            f"unknown top-level key {key!r:.60}; expected 'meters', 'custom_fields' or 'span_rules'",
            _line(doc, 1),
        )

    org_custom = _strip_lines(doc.get("custom_fields") or {})
    # what calculations may read: every name given, even if its value is refused
    org_names = {k for k in org_custom if isinstance(k, str)} if isinstance(org_custom, dict) else set()
    error = _custom_error(org_custom)
    if error:
        report("bad_custom_field", error, _line(doc.get("custom_fields"), 1))
        org_custom = {}

    meters: dict[str, Meter] = {}
    first_line: dict[str, int | None] = {}
    for index, raw in enumerate(doc["meters"]):
        line = _line(raw)
        if not isinstance(raw, dict):
            report("bad_shape", "each meter must be a mapping", line, f"#{index + 1}")
            continue
        code = raw.get("code")
        label = code if isinstance(code, str) else f"#{index + 1}"
        if isinstance(code, str) and code in first_line:
            report(
                "duplicate_meter",
                f"meter code {code!r} is defined twice (first on line {first_line[code]})",
                line,
                code,
            )
        elif isinstance(code, str):
            first_line[code] = line
        meter = _check_meter(raw, label, org_custom, org_names, report)
        if meter is not None:
            meters.setdefault(meter.code, meter)
    if problems:
        raise CatalogError(problems)
    # The validated model, not the YAML: spelling of categories, key order and comments
    # do not change what a catalog means.
    meaning = {"meters": [meters[code] for code in sorted(meters)], "custom_fields": org_custom}
    digest = hashlib.sha256(orjson.dumps(meaning, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    return Catalog(meters=meters, custom_fields=org_custom, source=source, digest=digest)


def _validated(model: type[_M], raw: Any, meter: str, item: str | None, report: Any, at: int | None) -> _M | None:
    """``raw`` as ``model``, or None after reporting each error: a meter's errors at the
    meter's line, a field's (``item`` names it if its code does not) at the field's."""
    if item and not isinstance(raw, dict):
        report("invalid", f"{item} must be a mapping with a code, a name and a category", at, meter, item)
        return None
    try:
        return model.model_validate(_strip_lines(raw))
    except ValidationError as exc:
        code = raw.get("code") if isinstance(raw, dict) and item else None
        fld = (code if isinstance(code, str) else item) if item else None
        for err in exc.errors():
            where = ".".join(map(str, err["loc"]))
            msg = str(err["msg"]).removeprefix("Value error, ")
            report("invalid", f"{where}: {msg}" if where else msg, _line(raw), meter, fld)
        return None


def _items(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    return value if isinstance(value, list) else []  # anything else: the meter's validation says so


def _check_meter(
    raw: dict[str, Any], label: str, org_custom: dict[str, Any], org_names: set[str], report: Any
) -> Meter | None:
    """Every check of one meter. The checks across fields use each field's code and
    calculation as written, whether or not the rest of the field is valid."""
    at = _line(raw)
    head = _validated(_MeterModel, raw, label, None, report, at)
    data_items, derived_items = _items(raw, "data_fields"), _items(raw, "derived_fields")
    data = [(i, _validated(_FieldModel, i, label, f"data_fields[{n}]", report, at)) for n, i in enumerate(data_items)]
    derived = [
        (i, _validated(_DerivedModel, i, label, f"derived_fields[{n}]", report, at))
        for n, i in enumerate(derived_items)
    ]
    ok = head is not None and all(model is not None for _, model in [*data, *derived])
    for kind, items, most in (("data", data_items, MAX_DATA_FIELDS), ("derived", derived_items, MAX_DERIVED_FIELDS)):
        if len(items) > most:
            report("too_many_fields", f"{len(items)} {kind} fields; m3ter allows at most {most}", _line(raw), label)
            ok = False

    def code_of(item: Any) -> str | None:
        code = item.get("code") if isinstance(item, dict) else None
        return code if isinstance(code, str) else None

    seen: set[str] = set()
    for item, _ in [*data, *derived]:
        code = code_of(item)
        if code in seen:
            report("duplicate_field", f"field code {code!r} is used twice in this meter", _line(item), label, code)
            ok = False
        elif code is not None:
            seen.add(code)

    meter_custom = raw.get("custom_fields")
    custom_names = org_names | (
        {k for k in meter_custom if isinstance(k, str)} if isinstance(meter_custom, dict) else set()
    )
    dropped = {code_of(i) for i, m in data if m is not None and m.privacy == "drop"}
    allowed = {code_of(item) for item, _ in data} - dropped | custom_names | TIMESTAMP_FIELDS
    derived_codes = {code_of(item) for item, _ in derived}
    for item, _ in derived:
        calculation = item.get("calculation") if isinstance(item, dict) else None
        if not isinstance(calculation, str):
            continue  # reported by the field's own validation
        try:
            expr = parse(calculation)
        except ExpressionError as exc:
            report(exc.reason, str(exc), _line(item), label, code_of(item))
            ok = False
            continue
        for name in sorted(expr.names - allowed):
            hint = " (derived fields cannot read other derived fields)" if name in derived_codes else ""
            hint = " (it is privacy: drop, so it never reaches the agent)" if name in dropped else hint
            report(
                "unknown_reference",
                f"calculation reads {name!r}, which is not a data field, custom field or timestamp of this meter{hint}",
                _line(item),
                label,
                code_of(item),
            )
            ok = False
    if not ok or head is None:
        return None
    data_models = [m for _, m in data if m is not None]
    derived_models = [m for _, m in derived if m is not None]
    return Meter(
        code=head.code,
        name=head.name,
        product=head.product,
        data_fields=tuple(DataField(f.code, f.name, f.category, f.unit, f.privacy, f.description) for f in data_models),
        derived_fields=tuple(
            DerivedField(f.code, f.name, f.category, f.unit, description=f.description, calculation=f.calculation)
            for f in derived_models
        ),
        custom_fields={**org_custom, **head.custom_fields},
        field_categories={f.code: f.category.value for f in data_models},
        wire_categories={f.code: f.category.value for f in (*data_models, *derived_models)},
        pii=head.pii,
        description=head.description,
    )
