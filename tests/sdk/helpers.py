from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from meterkit import MeasurementError
from meterkit._frames import batch_records
from meterkit._model import NUMERIC_CATEGORIES, validate_wire
from meterkit._spool import KIND_BATCH, KIND_CONTROL, KIND_MEASUREMENT, Frame, iter_records


def measurements_in(frame: Frame) -> list[dict[str, Any]]:
    """A measurement frame's measurement, a batch frame's as the agent reads them
    (``batch_records``), or none."""
    if frame.kind == KIND_MEASUREMENT:
        return [frame.json()]
    if frame.kind == KIND_BATCH:
        return batch_records(frame.payload)
    return []


def spooled(directory: Path) -> list[dict[str, Any]]:
    """Every measurement in a spool directory, in write order per segment."""
    return [m for _, f in iter_records(directory) for m in measurements_in(f)]


def controls(directory: Path, kind: str | None = None) -> list[dict[str, Any]]:
    found = [f.json() for _, f in iter_records(directory) if f.kind == KIND_CONTROL]
    return [c for c in found if kind is None or c["type"] == kind]


def losses(directory: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in controls(directory, "losses"):
        for e in c["entries"]:
            out[e["reason"]] = out.get(e["reason"], 0) + e["count"]
    return out


#: The fields the SDK itself checks in production mode (docs/spool-format.md, "What is
#: validated where"): the meter and account codes and the caller's ts, ets and uid.
SDK_CHECKED_FIELDS = frozenset({None, "meter", "account", "uid", "ts", "ets"})


def refused_by_sdk(kwargs: dict[str, Any], reason: str, field: str | None) -> bool:
    """Whether production mode refuses this in the SDK: a bad meter, account, ts, ets or uid,
    a number that is not finite, or a value JSON cannot carry (a ``Decimal`` past a float,
    an integer past 64 bits, a lone surrogate). Everything else (the catalog, types,
    lengths of field values) reaches the spool, for the agent's validation to refuse."""
    if reason in ("not_finite", "invalid_unicode", "bad_meter_code", "missing_account"):
        return True
    if reason == "unknown_meter":
        return False  # the catalog is the agent's
    if reason in ("unknown_field", "wrong_category") and field is not None:
        # only what the catalog declares leaves the application: an undeclared number is
        # refused (dropping it would change the bill), an undeclared string dropped
        return field.partition(".")[0] in NUMERIC_CATEGORIES
    if field in SDK_CHECKED_FIELDS:
        return True
    category, _, code = (field or "").partition(".")
    value = (kwargs.get(category) or {}).get(code)
    return isinstance(value, Decimal) or (type(value) is int and not -(2**63) <= value < 2**64)


def agent_verdict(measurement: dict[str, Any], catalog: Any = None) -> tuple[str, str | None] | None:
    """(reason, field) if the agent's validation (``validate_wire``) refuses it, else None."""
    try:
        validate_wire(measurement, catalog)
    except MeasurementError as exc:
        return exc.reason, exc.field
    return None
