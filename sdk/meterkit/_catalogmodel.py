"""What ``meters.yaml`` may say, field by field: the pydantic models :mod:`._catalog`
validates each meter and each field with, one at a time, so one bad field hides nothing
else. :mod:`._catalog` loads the file, checks across meters and builds the
:class:`~._catalog.Catalog`."""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ._expr import NumberOutOfRange, bounded
from ._model import FIELD_CODE_RE, METER_CODE_RE, NUMERIC_CATEGORIES
from ._units import unit_error

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
    privacy: Literal["pseudonymize", "drop", "keep"] | None = None
    #: why the field is collected, in words a data-protection officer reads (the privacy report)
    description: str | None = None

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
        if self.privacy is not None and isinstance(self, _DerivedModel):
            raise ValueError("privacy applies to data fields; a derived field is computed in the agent from them")
        if self.privacy == "pseudonymize" and self.category.numeric:
            raise ValueError(f"privacy: pseudonymize applies to text fields, not {self.category.name}")
        return self


class _DerivedModel(_FieldModel):
    calculation: str


class _MeterModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str
    name: str
    product: str | None = None
    # each field is validated on its own (_check_meter): one bad field hides nothing else
    data_fields: list[Any] = []
    derived_fields: list[Any] = []
    custom_fields: dict[str, str | int | float] = {}
    #: the PII guard's policy for this meter's text values (``_privacy``; unset: redact)
    pii: Literal["reject", "redact", "pseudonymize", "allow"] | None = None
    #: what the meter is for (the privacy report)
    description: str | None = None

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not METER_CODE_RE.match(v):
            raise ValueError("a meter code is 1-80 letters, digits or _$.:- characters")
        return v

    @field_validator("custom_fields", mode="before")
    @classmethod
    def _custom(cls, v: object) -> object:
        error = _custom_error(v)
        if error:
            raise ValueError(error)
        return v


def _custom_error(values: object) -> str | None:
    """Why ``values`` is not a custom-fields mapping (names to strings, or numbers a backend
    holds exactly), or None."""
    if not isinstance(values, dict):
        return "custom_fields must map names to strings or numbers"
    for name, value in values.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, str | int | float):
            return f"custom field {name!r:.40} must map a name to a string or a number"
        try:
            bounded(value, f"custom field {name!r}")
        except NumberOutOfRange as exc:
            return str(exc)
    return None
