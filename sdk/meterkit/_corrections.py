"""Corrections: usage is never overwritten or deleted; it is reversed, and replaced.

A measurement that was wrong is corrected by two more measurements that travel the normal
path (spool, agent, every destination), each marked on the wire with a ``correction``
object naming the uid it corrects:

- a **reversal** (``{"of": U, "kind": "reversal"}``): U's meter, account, times and
  strings, with every number negated. A backend that sums (m3ter, OpenMeter) nets U out;
  the ledger voids U and the reversal for every aggregation, COUNT and MAX included;
- a **replacement** (``{"of": U, "kind": "replacement"}``), for an amendment: what U
  should have been, at U's time.

Their uids derive from U's (uuid5 in a namespace fixed forever), so running a correction
twice writes the same two measurements again: the backends keep the first and nothing
changes. A second, different amendment of U corrects U's replacement in turn, so every
version of a measurement stays on record, each reversed exactly once.

A backfilled measurement may carry ``"batch"``, the backfill's id, so that a whole
backfill can be reverted the same way. This module checks both keys for
:func:`meterkit._model.validate_wire`; it imports only ``_limits``, so the model can
import it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import MeasurementError, safe_repr
from ._limits import BAD_IDENTIFIER_RE, MAX_ACCOUNT_LENGTH, MAX_UID_LENGTH, identifier_ok, problem

#: Namespace of correction uids (uuid5): fixed forever, or a re-run would mint new uids.
CORRECTIONS_NAMESPACE = uuid.UUID("3d4c8a5e-9f61-5b2e-8a07-c1e2f3a4b5d6")
REVERSAL = "reversal"
REPLACEMENT = "replacement"
KINDS = (REVERSAL, REPLACEMENT)
#: The keys a measurement may carry on the wire besides m3ter's.
EXTENSION_KEYS = frozenset({"correction", "batch"})
#: A backfill batch id is named like an account: 1 to 80 characters, no control character.
MAX_BATCH_LENGTH = MAX_ACCOUNT_LENGTH
#: ``meterkit._model.NUMERIC_CATEGORIES``, which this module cannot import: ``_model``
#: imports this one (tests/sdk/test_corrections.py checks that the two are equal).
_NUMERIC = ("measure", "income", "cost")
#: What a correction control record says was done: ``meterkit correct --cancel`` /
#: ``--set``, ``meterkit backfill revert``.
ACTIONS = ("cancel", "amend", "revert")
#: Uids in each list of one control record; more are split over several records.
MAX_UIDS_PER_CONTROL = 5000
#: The most characters of a control record's ``reason`` (one frame's worth, and a person's).
MAX_REASON_LENGTH = 2000


def reversal_uid(of: str) -> str:
    """The uid of the reversal of the measurement whose uid is ``of``."""
    return str(uuid.uuid5(CORRECTIONS_NAMESPACE, f"{REVERSAL}\x1f{of}"))


def replacement_uid(of: str) -> str:
    """The uid of the replacement of the measurement whose uid is ``of``."""
    return str(uuid.uuid5(CORRECTIONS_NAMESPACE, f"{REPLACEMENT}\x1f{of}"))


def correction_of(measurement: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(of, kind)`` of a correction, or None for any other measurement (or a malformed mark)."""
    found = measurement.get("correction")
    if type(found) is not dict:
        return None
    of, kind = found.get("of"), found.get("kind")
    return (of, kind) if type(of) is str and kind in KINDS else None


def is_reversal(measurement: Mapping[str, Any]) -> bool:
    """Whether ``measurement`` is a reversal (it never counts, and is never corrected)."""
    found = correction_of(measurement)
    return found is not None and found[1] == REVERSAL


def reversal_mismatch(given: Mapping[str, Any], original: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """How ``given`` (a reversal of ``original``) differs from ``reversal(original)``: each
    differing field as (name, given value, expected value), ``category.code`` inside a
    category; a value that is absent is ``None``. Empty when it is exactly the reversal."""
    expected = reversal(original)
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(given) | set(expected)):
        mine, theirs = given.get(key), expected.get(key)
        if type(mine) is dict and type(theirs) is dict and key != "correction":
            for code in sorted(set(mine) | set(theirs)):
                if not _same(mine.get(code), theirs.get(code)):
                    out.append((f"{key}.{code}", mine.get(code), theirs.get(code)))
        elif not _same(mine, theirs):
            out.append((key, mine, theirs))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same type: ``1`` and ``1.0`` hash differently in a content digest."""
    return type(a) is type(b) and a == b


def reversal(original: Mapping[str, Any]) -> dict[str, Any]:
    """The measurement that reverses ``original`` (a validated wire measurement): the same
    meter, account, times and strings, every number negated (``0`` and ``0.0`` stay as
    they are: a ``-0.0`` sums the same, but reads as a change to a person and to some backends)."""
    out = {k: v for k, v in original.items() if k not in EXTENSION_KEYS}
    for category in _NUMERIC:
        values = original.get(category)
        if values:
            out[category] = {code: -value if value else value for code, value in values.items()}
    out["uid"] = reversal_uid(original["uid"])
    out["correction"] = {"of": original["uid"], "kind": REVERSAL}
    return out


def replacement(original: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """What ``original`` should have been: its content with ``changes`` applied, each keyed
    ``category.code`` (``measure.calls``); a value of ``None`` removes the field. The
    result is not validated here: the caller validates it against the catalog."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in original.items() if k not in EXTENSION_KEYS}
    for name, value in changes.items():
        category, _, code = name.partition(".")
        if not code:
            raise problem("bad_change", f"{name!r}: expected category.code, e.g. measure.calls", None, name)
        fields = out.setdefault(category, {})
        if not isinstance(fields, dict):
            raise problem("bad_change", f"{name!r}: {category} is not a category of fields", None, name)
        if value is None:
            fields.pop(code, None)
        else:
            fields[code] = value
        if not fields:
            del out[category]
    out["uid"] = replacement_uid(original["uid"])
    out["correction"] = {"of": original["uid"], "kind": REPLACEMENT}
    return out


def check_extensions(raw: Mapping[str, Any], out: dict[str, Any], meter: str | None) -> None:
    """Check ``raw``'s ``correction`` and ``batch`` (when present) and copy them into
    ``out``, the normalised measurement; raise :class:`MeasurementError` naming the field."""
    if "correction" in raw:
        out["correction"] = _correction(raw["correction"], raw.get("uid"), meter)
    if "batch" in raw:
        batch = raw["batch"]
        check_batch(batch, meter)
        if "correction" in raw:
            raise problem("bad_batch", "a correction does not belong to a backfill batch", meter, "batch")
        out["batch"] = batch


def check_batch(batch: object, meter: str | None = None) -> None:
    """Raise :class:`MeasurementError` (reason ``bad_batch``) unless ``batch`` is a good
    backfill batch id: named like an account."""
    if type(batch) is not str or not batch or not identifier_ok(batch, MAX_BATCH_LENGTH):
        raise problem(
            "bad_batch",
            f"batch must be 1 to {MAX_BATCH_LENGTH} printable characters with no space at either end,"
            f" got {safe_repr(batch):.60}",
            meter,
            "batch",
        )


def said_problem(value: object, name: str, limit: int = MAX_REASON_LENGTH) -> str | None:
    """Why ``value`` cannot be a control record's ``reason`` or ``by`` (named ``name``), or
    None: it must say something, in at most ``limit`` characters, with no control character
    (a line feed or an escape sequence in the audit journal would forge or hide a line where
    a person reads it)."""
    if type(value) is not str or not value.strip():
        return f"{name} must say something (not empty, not only spaces)"
    if len(value) > limit:
        return f"{name} is {len(value)} characters; at most {limit}"
    found = BAD_IDENTIFIER_RE.search(value)
    if found is not None:
        return f"{name} holds the control character U+{ord(found.group()):04X} at position {found.start()}"
    return None


def content(measurement: Mapping[str, Any]) -> dict[str, Any]:
    """What a measurement says, without what names it (``uid``) or marks it (``correction``,
    ``batch``): two versions of a measurement with equal content need no correction."""
    return {k: v for k, v in measurement.items() if k != "uid" and k not in EXTENSION_KEYS}


def control_record(
    action: str,
    reason: str,
    by: str,
    at: str,
    of: Sequence[str],
    uids: Sequence[str],
    batch: str | None = None,
) -> dict[str, Any]:
    """The spool control record that says who corrected what, when and why (the agent
    journals it): ``of`` the uids corrected, ``uids`` the corrections written, at most
    :data:`MAX_UIDS_PER_CONTROL` each, so the record fits a frame. Its ``id`` derives from
    the sorted ``uids``, so writing the same corrections again repeats the same id."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    for value, name in ((reason, "reason"), (by, "by")):
        why = said_problem(value, name)
        if why is not None:
            raise ValueError(why)
    if len(of) > MAX_UIDS_PER_CONTROL or len(uids) > MAX_UIDS_PER_CONTROL:
        raise ValueError(f"at most {MAX_UIDS_PER_CONTROL} uids per control record; split the write")
    material = "\x1f".join(["control", *sorted(uids)])
    record: dict[str, Any] = {
        "type": "correction",
        "id": str(uuid.uuid5(CORRECTIONS_NAMESPACE, material)),
        "action": action,
        "reason": reason,
        "by": by,
        "at": at,
        "of": list(of),
        "uids": list(uids),
    }
    if batch is not None:
        record["batch"] = batch
    return record


def _correction(given: object, uid: object, meter: str | None) -> dict[str, str]:
    if type(given) is not dict or set(given) != {"of", "kind"}:
        raise problem(
            "bad_correction",
            f'correction must be {{"of": uid, "kind": "reversal" | "replacement"}}, got {safe_repr(given):.80}',
            meter,
            "correction",
        )
    of, kind = given["of"], given["kind"]
    if type(of) is not str or not of or not identifier_ok(of, MAX_UID_LENGTH):
        raise problem("bad_correction", f"correction.of is not a uid: {safe_repr(of):.60}", meter, "correction.of")
    if kind not in KINDS:
        raise problem(
            "bad_correction",
            f"correction.kind must be reversal or replacement, got {safe_repr(kind):.40}",
            meter,
            "correction.kind",
        )
    expected = reversal_uid(of) if kind == REVERSAL else replacement_uid(of)
    if uid != expected:
        raise problem(
            "bad_correction",
            f"the uid of a {kind} of {of} must be {expected} (derived from it), got {safe_repr(uid):.60}",
            meter,
            "uid",
        )
    return {"of": of, "kind": kind}


__all__ = [
    "ACTIONS",
    "CORRECTIONS_NAMESPACE",
    "EXTENSION_KEYS",
    "MAX_REASON_LENGTH",
    "MAX_UIDS_PER_CONTROL",
    "MeasurementError",
    "check_batch",
    "check_extensions",
    "content",
    "control_record",
    "correction_of",
    "is_reversal",
    "replacement",
    "replacement_uid",
    "reversal",
    "reversal_mismatch",
    "reversal_uid",
    "said_problem",
]
