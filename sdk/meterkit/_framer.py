"""A production-mode batch, made into one batch frame with the least Python per row.

What the flusher still checks in production mode, and how each check avoids a Python
loop over the batch (catalog validation and derivation are the agent's, DESIGN.md §2):

- **Meter and account.** Each distinct (meter, account) pair is checked once, from the
  sets a batch's tally needs anyway; good codes are cached (``_model.key_problem``). A row
  with a bad one is refused with the reason :func:`meterkit._model.build` gives.
- **Caller's ts, ets and uid, inherited fields.** Rare rows (``_rows.Rare``) are finished one by
  one; their times become instants here, and a bad one is refused.
- **What JSON cannot carry.** The batch is written with one ``orjson.dumps``; if it refuses
  (a lone surrogate, an integer past 64 bits, a ``Decimal``, a ``datetime`` field), each row
  is tried alone: one that validation turns into something JSON can carry (a ``Decimal``
  becomes a float, as ``build`` makes it) is kept so, the others are refused with
  validation's reason. The rest of the batch never pays for them.
- **Numbers that are not finite.** orjson writes NaN and the infinities as ``null``, which
  would read back as a missing field. Any ``:null`` in the payload sends the batch
  through a scan: a row holding a non-finite number is refused (``not_finite``, or
  ``wrong_type`` in a text category, as ``build`` names it); a ``None`` value is dropped,
  as ``build`` drops it.
- **Size.** A payload over the frame limit is split in two, and again; a single row over
  it is refused (``too_large``).
- **Privacy** (``_privacy``), with a catalog: fields it does not declare are dropped, its
  pseudonyms made, its PII guard applied, before anything is written; a batch with nothing
  to change costs a few column-wise checks.

Everything else a measurement may get wrong (unknown fields, types, lengths) reaches the
agent in the frame, and the agent refuses that measurement alone, with its reason.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ._errors import MeasurementError
from ._frames import (
    DUMPS_OPTIONS,
    ROW_ACCOUNT,
    ROW_FIELDS,
    ROW_METER,
    ROW_SIZE,
    ROW_TS,
    ROW_UID,
    WIDE,
    batch_records,
    encode_batch,
    tally_rows,
)
from ._limits import check_ts, problem
from ._model import CATEGORIES, UidSource, account_ok, build, key_problem, meter_ok, tally
from ._rows import Rare, account_and_fields, frame_row, to_wire
from ._scope import EMPTY
from ._spool import FRAME_HEADER_SIZE, MAX_FRAME_BYTES

if TYPE_CHECKING:
    from ._catalog import Catalog
    from ._privacy import Privacy

Row = Sequence[Any]  # one measurement's values, ``width`` of them
Reject = Callable[[Row, MeasurementError], None]
_INT = frozenset({int})
_NO_EXTRA = (None, None)  # ets and uid of a plain row in a wide batch
#: A field value written as null: ``None``, or NaN or an infinity (orjson writes them so).
#: Empty categories are nulls too, but never after a colon. A regular expression scans a
#: payload about twice as fast as ``bytes.__contains__`` here.
_null_value = re.compile(rb":null").search


Measurement = dict[str, Any]


@dataclass
class Write:
    """One write: batch frame payloads, wire measurements, their tally. Kept whole while
    the sink refuses it, so a retry writes the same bytes (the same uids)."""

    payloads: list[bytes] = field(default_factory=list)
    records: list[Measurement] = field(default_factory=list)
    tallies: list[Measurement] = field(default_factory=list)
    count: int = 0  # measurements in it
    private: bool = False  # the catalog's privacy rules are applied to ``records`` already


def tally_controls(entries: list[Measurement]) -> list[Measurement]:
    """The tally control record, written in the same ``write`` as what it counts, so the
    two cannot part: per (meter, account, hour), count and sums of numeric fields."""
    return [{"type": "tally", "entries": entries}] if entries else []


def private_item(item: Sequence[Any], privacy: Privacy | None, catalog: Catalog | None) -> Sequence[Any]:
    """A queued row (or a wire measurement's) with the catalog's privacy rules applied to
    its fields, inherited ones included, for ``to_wire``: a ``Rare`` head keeps the caller's
    times and uid but no longer inherits (what it inherited is in the fields already).
    Fields the meter lacks are left for validation to refuse. Raises ``MeasurementError``."""
    if privacy is None:
        return item
    head = item[ROW_TS]
    if isinstance(head, dict):
        return (privacy.wire(head), *item[1:])
    account, values = account_and_fields(item, catalog)
    ts = head if type(head) is int else None
    if isinstance(head, Rare):
        ts = head.now
        if head.ts is not None and privacy.keyring is not None and not privacy.keyring.single:
            with contextlib.suppress(MeasurementError):  # a bad one: validation refuses it
                ts = check_ts(None, "ts", head.ts, head.now)  # the key follows the measurement's time
        head = Rare(head.now, head.ts, head.ets, head.uid, EMPTY, None)
    return (head, item[ROW_METER], account, *privacy.fields(item[ROW_METER], values, ts, undeclared=False))


def wire_write(
    batch: list[Any], catalog: Catalog | None, uids: UidSource, reject: Reject, privacy: Privacy | None = None
) -> Write:
    """A write of validated wire measurements (a sink that keeps them, strict mode)."""
    records = []
    for i in range(0, len(batch), ROW_SIZE):
        row = batch[i : i + ROW_SIZE]
        try:
            records.append(to_wire(private_item(row, privacy, catalog), catalog, uids.format(uids.next())))
        except MeasurementError as exc:
            reject(row, exc)
    return Write([], records, tally_controls(tally(records)), len(records), private=True)


def frames_write(
    batch: list[Any], catalog: Catalog | None, uids: UidSource, reject: Reject, privacy: Privacy | None = None
) -> Write:
    """A write of batch frames (production mode into the spool), with the tally of what
    they hold, computed from the rows (``tally_rows``) unless the shortcut declines."""
    flat, width, records = split(batch, catalog, reject)
    if privacy is not None:
        flat = privacy.rows(flat, width, reject) if flat else flat
        records = _private_records(records, privacy, reject)
    framed = _framed(flat, width, catalog, uids, reject) if flat else []
    payloads = [payload for payload, _ in framed]
    rows = framed[0][1] if len(framed) == 1 else [value for _, part in framed for value in part]
    entries = tally_rows(rows, width) if not records else None
    if entries is None:  # a mixed batch, or rows the shortcut leaves to the exact tally
        entries = tally([*(m for p in payloads for m in batch_records(p)), *records])
    return Write(payloads, records, tally_controls(entries), len(rows) // width + len(records), private=True)


def _private_records(records: list[Measurement], privacy: Privacy, reject: Reject) -> list[Measurement]:
    """Validated wire measurements (backfill, strict mode's) with the privacy rules applied."""
    out = []
    for m in records:
        try:
            out.append(privacy.wire(m))
        except MeasurementError as exc:
            reject((m,), exc)  # a wire head: raw() keeps it whole
    return out


def _framed(
    flat: list[Any], width: int, catalog: Catalog | None, uids: UidSource, reject: Reject
) -> list[tuple[bytes, list[Any]]]:
    """Payloads of batch frames for the rows in ``flat``, each within the frame limit, with
    the rows each holds; uid numbers are taken for the rows written."""
    first = uids.batch_next
    payload, flat = encode(uids.prefix, first, flat, width, catalog, reject)
    if not flat:
        return []
    if fits(payload):
        uids.batch_next = first + len(flat) // width
        return [(payload, flat)]
    if len(flat) == width:
        reject(flat, too_large(flat, len(payload)))
        return []
    half = len(flat) // width // 2 * width
    return _framed(flat[:half], width, catalog, uids, reject) + _framed(flat[half:], width, catalog, uids, reject)


def split(flat: list[Any], catalog: Catalog | None, reject: Reject) -> tuple[list[Any], int, list[dict[str, Any]]]:
    """The flat rows of a batch frame and their width, and the wire measurements (dicts,
    validated already) that go in measurement frames beside it. Rare rows are finished; a
    row with a bad meter or account is refused through ``reject``."""
    heads = flat[ROW_TS::ROW_SIZE]
    if set(map(type, heads)) <= _INT:
        return _good_keys(flat, ROW_SIZE, reject), ROW_SIZE, []
    rows: list[Row] = []
    records: list[dict[str, Any]] = []
    for i, head in enumerate(heads):
        row = flat[i * ROW_SIZE : (i + 1) * ROW_SIZE]
        if type(head) is int:
            rows.append(row)
        elif isinstance(head, dict):
            records.append(head)
        else:
            assert isinstance(head, Rare)
            try:
                made = frame_row(row, catalog)
            except MeasurementError as exc:
                reject(row, exc)
                continue
            rows.append(made if made[ROW_UID - 1] is not None or made[ROW_UID] is not None else made[:ROW_SIZE])
    width = WIDE if any(len(row) == WIDE for row in rows) else ROW_SIZE
    return _good_keys(join(rows, width), width, reject), width, records


def join(rows: list[Row], width: int) -> list[Any]:
    """Flat rows of ``width``; a plain row in a wide batch gets null ets and uid."""
    out: list[Any] = []
    for row in rows:
        out.extend(row)
        if len(row) < width:
            out.extend(_NO_EXTRA)
    return out


def rows_of(flat: list[Any], width: int) -> list[Row]:
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def _good_keys(flat: list[Any], width: int, reject: Reject) -> list[Any]:
    """``flat`` without the rows whose meter or account is bad (refused), each distinct
    meter and account checked once."""
    try:
        if all(map(meter_ok, set(flat[ROW_METER::width]))) and all(map(account_ok, set(flat[ROW_ACCOUNT::width]))):
            return flat
    except TypeError:  # an unhashable meter or account: check row by row
        pass
    kept = [row for row in rows_of(flat, width) if _keep(row, key_problem(row[ROW_METER], row[ROW_ACCOUNT]), reject)]
    return join(kept, width)


def _keep(row: Row, found: MeasurementError | None, reject: Reject) -> bool:
    if found is None:
        return True
    reject(row, found)
    return False


def encode(
    prefix: str, first: int, flat: list[Any], width: int, catalog: Catalog | None, reject: Reject
) -> tuple[bytes, list[Any]]:
    """The batch frame's payload and the flat rows it holds (those refused are not in it)."""
    try:
        payload = encode_batch(prefix, first, flat, width)
    except TypeError:  # orjson.JSONEncodeError: some row holds what JSON cannot carry
        kept = [fixed for row in rows_of(flat, width) if (fixed := _writable(row, catalog, reject)) is not None]
        flat = join(kept, width)
        payload = encode_batch(prefix, first, flat, width)
    if _null_value(payload):
        cleaned = _finite(rows_of(flat, width), reject)
        if cleaned is not None:
            flat = join(cleaned, width)
            payload = encode_batch(prefix, first, flat, width)
    return payload, flat


def fits(payload: bytes) -> bool:
    return len(payload) + FRAME_HEADER_SIZE <= MAX_FRAME_BYTES


def too_large(row: Row, size: int) -> MeasurementError:
    message = f"the measurement is {size} bytes as JSON; a spool frame holds at most {MAX_FRAME_BYTES}"
    return problem("too_large", message, _label(row))


def _check(row: Row, catalog: Catalog | None) -> dict[str, Any]:
    """Validate a row as ``build`` does (its times are instants already)."""
    uid = row[ROW_UID] if len(row) > ROW_UID and row[ROW_UID] is not None else "-"
    return build(row[ROW_METER], row[ROW_ACCOUNT], row[ROW_TS], uid, row[ROW_FIELDS], catalog=catalog)


def _writable(row: Row, catalog: Catalog | None, reject: Reject) -> Row | None:
    """``row`` if JSON can carry it; else as validation makes it, if JSON can carry that;
    else ``None``, refused with validation's reason."""
    try:
        orjson.dumps(row, option=DUMPS_OPTIONS)
        return row
    except TypeError:
        pass
    try:
        wire = _check(row, catalog)
        fixed = [row[ROW_TS], row[ROW_METER], row[ROW_ACCOUNT], *(wire.get(c) for c in CATEGORIES), *row[ROW_SIZE:]]
        orjson.dumps(fixed, option=DUMPS_OPTIONS)
        return fixed
    except MeasurementError as exc:
        reject(row, exc)
    except TypeError as exc:
        reject(row, problem("unwritable", f"the measurement cannot be written as JSON: {exc}", _label(row)))
    return None


def _label(row: Row) -> str | None:
    return row[ROW_METER] if isinstance(row[ROW_METER], str) else None


def _finite(rows: list[Row], reject: Reject) -> list[Row] | None:
    """``rows`` without those holding a non-finite number (refused) and without ``None``
    field values (dropped); ``None`` if there was nothing to do."""
    out: list[Row] = []
    changed = False
    for row in rows:
        fields = row[ROW_FIELDS]
        if not any(type(d) is dict and _odd_values(d) for d in fields):
            out.append(row)
            continue
        changed = True
        if any(type(d) is dict and any(_not_finite(v) for v in d.values()) for d in fields):
            reject(row, _finite_problem(row))
            continue
        kept = [({k: v for k, v in d.items() if v is not None} or None) if type(d) is dict else d for d in fields]
        out.append([row[ROW_TS], row[ROW_METER], row[ROW_ACCOUNT], *kept, *row[ROW_SIZE:]])
    return out if changed else None


def _odd_values(d: dict[str, Any]) -> bool:
    return None in d.values() or any(_not_finite(v) for v in d.values())


def _not_finite(v: object) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def _finite_problem(row: Row) -> MeasurementError:
    try:
        _check(row, None)
    except MeasurementError as exc:
        return exc
    return problem("not_finite", "a field holds a number that is not finite", _label(row))
